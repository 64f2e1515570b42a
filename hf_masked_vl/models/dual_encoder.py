"""The base of the dual encoders (A-CLIP, UTA, LiT): a `MaskedViTModel` image tower with a projection and a
transformers CLIP text tower with a projection, in the style of transformers 5's `CLIPModel`."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput

from .modeling_masked_vit import MaskedViTModelOutput, MaskedVLModelMixin, output_flag
from .relation_bias import LayerBiases, MaskRelationBias


def nested_to_tuple(output: ModelOutput) -> tuple:
    """`ModelOutput.to_tuple` with the tower outputs (`vision_model_output`, `text_model_output`) as tuples too, as
    transformers' `CLIPOutput.to_tuple`."""
    return tuple(value.to_tuple() if isinstance(value, ModelOutput) else value for value in output.values())


class DualEncoderPreTrainedModel(MaskedVLModelMixin, PreTrainedModel):
    """Shared attributes, init and feature getters. A concrete model defines `vision_model`, `visual_projection`,
    `text_model`, `text_projection` and `logit_scale`; its config has `logit_scale_init_value`. A model whose config
    has `RelationBiasOptions` also holds `relation_bias` (`MaskRelationBias.from_config`), which the image tower adds
    when it is given token labels (`image_tower`).

    Output flags: `output_attentions` / `output_hidden_states` given to `forward` (or set on the model's config, or
    on a tower's own config) reach both towers; the results are in `vision_model_output` / `text_model_output`.
    The image tower computes attention maps under any attention implementation; the CLIP text tower, as in
    transformers, only under `attn_implementation="eager"` (an empty tuple otherwise).
    """

    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["MaskedViTBlock", "CLIPEncoderLayer", "CLIPTextEmbeddings"]
    _supports_sdpa = True
    _supports_attention_backend = True
    accepts_loss_kwargs = False
    # projections initialised as in CLIP, normal(std = in_features^-0.5); other Linear layers trunc-normal(0.02)
    clip_initialised_projections: tuple[str, ...] = ("text_projection",)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Heads, projections and the logit scale; the towers (sub-models) initialise themselves. Each tensor is set
        from the module that owns it, so a missing key gets the same init whatever else the checkpoint holds."""
        if isinstance(module, nn.Linear):
            if any(module is getattr(self, name, None) for name in self.clip_initialised_projections):
                init.normal_(module.weight, std=module.in_features**-0.5)
            else:
                init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm1d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)
        elif isinstance(module, DualEncoderPreTrainedModel):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)
        elif isinstance(module, MaskRelationBias):
            module.reset_parameters()

    def get_input_embeddings(self) -> nn.Module:
        """The text tower's token embedding (as transformers' `CLIPTextModelWithProjection`)."""
        return self.text_model.embeddings.token_embedding

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.text_model.embeddings.token_embedding = value

    def tower_output_flags(
        self, tower: PreTrainedModel, output_attentions: bool | None, output_hidden_states: bool | None
    ) -> dict[str, bool]:
        """The output flags a tower is called with: the argument when given, else the flag of this model's config
        or of the tower's own config."""
        return {
            "output_attentions": output_flag(output_attentions, "output_attentions", self.config, tower.config),
            "output_hidden_states": output_flag(
                output_hidden_states, "output_hidden_states", self.config, tower.config
            ),
        }

    def relation_biases(
        self,
        pixel_values: torch.Tensor,
        token_labels: torch.Tensor | None,
        keep_indices: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> LayerBiases | None:
        """The image tower's per-layer mask-relation biases for `pixel_values` (B, C, H, W) given the segment label of
        every patch, `token_labels` (B, h, w) or (B, N) (0 = none), at the kept patches `keep_indices` (B, K); None
        without labels or without a bias (then the tower is a plain ViT)."""
        relation_bias = getattr(self, "relation_bias", None)
        if relation_bias is None or token_labels is None or not relation_bias.enabled:
            return None
        grid = self.vision_model.embeddings.grid_of(pixel_values, interpolate_pos_encoding)
        return relation_bias.layer_biases(token_labels, pixel_values, grid, keep_indices)

    def image_tower(
        self,
        pixel_values: torch.Tensor,
        keep_indices: torch.Tensor | None = None,
        token_labels: torch.Tensor | None = None,
        **kwargs,
    ) -> MaskedViTModelOutput:
        """`vision_model` on `[CLS] + kept patches`, with the mask-relation bias of `token_labels` (see
        `relation_biases`); other keyword arguments go to `MaskedViTModel.forward`."""
        bias = self.relation_biases(
            pixel_values, token_labels, keep_indices, kwargs.get("interpolate_pos_encoding", False)
        )
        if bias is not None:
            kwargs["attention_bias"] = bias
        return self.vision_model(pixel_values, keep_indices=keep_indices, return_dict=True, **kwargs)

    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """Text tower; `pooler_output` is the projected (unnormalised) end-of-text embedding (B, E)."""
        flags = self.tower_output_flags(self.text_model, output_attentions, output_hidden_states)
        outputs = self.text_model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **flags)
        outputs.pooler_output = self.text_projection(outputs.pooler_output)
        return outputs

    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        keep_indices: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        token_labels: torch.Tensor | None = None,
        **kwargs,
    ) -> MaskedViTModelOutput:
        """Image tower; `pooler_output` is the projection of the final CLS token (B, E), unnormalised. With
        `token_labels` (B, h, w) a model with a mask-relation bias adds it. Other keyword arguments
        (`attention_bias`, `output_cls_attentions`) go to `MaskedViTModel.forward`."""
        kwargs.pop("return_dict", None)
        flags = self.tower_output_flags(self.vision_model, output_attentions, output_hidden_states)
        outputs = self.image_tower(pixel_values, keep_indices, token_labels, **flags, **kwargs)
        outputs.pooler_output = self.visual_projection(outputs.pooler_output)
        return outputs


__all__ = ["DualEncoderPreTrainedModel", "nested_to_tuple"]
