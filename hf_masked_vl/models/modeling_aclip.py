"""A-CLIP: CLIP whose image tower sees only the patches an EMA encoder attends to, plus SimCLR and BYOL losses.

The model is pure: keep indices and BYOL targets (both from the EMA model) are inputs. The trainer in
`hf_masked_vl.training` computes them. With MRE's mask-relation bias (`config.relation_bias`), the segment labels of
each view are inputs too, and the image tower (the EMA's as well) adds the bias.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPTextModel
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput, can_return_tuple

from .configuration_aclip import AClipConfig
from .dual_encoder import DualEncoderPreTrainedModel, nested_to_tuple
from .losses import byol_loss, clip_contrastive_loss, nt_xent_loss
from .modeling_masked_vit import MaskedViTModel, MaskedViTModelOutput
from .registration import register_for_auto_classes
from .relation_bias import MaskRelationBias


@dataclass
class AClipOutput(ModelOutput):
    """
    loss: total pre-training loss, 0.5·Σ_v CLIP(v) + w_simclr·SimCLR + w_byol·BYOL (when `return_loss`).
    logits_per_image: (B_img, B_txt) scaled cosine similarities (first view when several are given).
    logits_per_text: (B_txt, B_img).
    text_embeds: (B_txt, E) normalised. image_embeds: (B_img, E) normalised, first view.
    clip_loss / simclr_loss / byol_loss: the unweighted parts of `loss`.
    vision_model_output: the image tower's output over all V·B views, view-major (`attentions` / `hidden_states`
        when requested). text_model_output: the text tower's, `pooler_output` projected.
    """

    loss: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    clip_loss: torch.Tensor | None = None
    simclr_loss: torch.Tensor | None = None
    byol_loss: torch.Tensor | None = None
    vision_model_output: MaskedViTModelOutput | None = None
    text_model_output: BaseModelOutputWithPooling | None = None

    def to_tuple(self) -> tuple:
        return nested_to_tuple(self)


def mlp_head(in_dim: int, hidden_dim: int, out_dim: int, layers: int, bias: bool = True) -> nn.Sequential:
    """(Linear, BatchNorm1d, ReLU) × (layers - 1), then Linear: the SimCLR / BYOL heads."""
    modules: list[nn.Module] = []
    width = in_dim
    for _ in range(layers - 1):
        modules += [
            nn.Linear(width, hidden_dim, bias=bias),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
        ]
        width = hidden_dim
    modules.append(nn.Linear(width, out_dim, bias=bias))
    return nn.Sequential(*modules)


class AClipPreTrainedModel(DualEncoderPreTrainedModel):
    config_class = AClipConfig
    base_model_prefix = "a_clip"
    clip_initialised_projections = ("text_projection", "visual_projection")


@register_for_auto_classes("AutoModel", "AutoModelForZeroShotImageClassification")
class AClipModel(AClipPreTrainedModel):
    """Dual encoder with A-CLIP's pre-training objective. `forward` returns `logits_per_image`, so the stock
    `zero-shot-image-classification` pipeline runs on it.

    Pre-training inputs: `pixel_values` (B, V, C, H, W) with V online views, `keep_indices` (B, V, K), and
    `byol_targets` (B, C_byol) from the EMA projector on the EMA view; `return_loss=True`.

    The SimCLR head and the BYOL projector and predictor serve the pre-training loss only (`training_only_modules`):
    a saved folder leaves them out unless asked (`hf_masked_vl.hub.save_checkpoint(training_heads=True)`,
    `--export_training_heads`), and a folder without them loads with them freshly initialised, silently.
    """

    training_only_modules = ("simclr_head", "byol_projector", "byol_predictor")
    _keys_to_ignore_on_load_missing = [r"^(simclr_head|byol_projector|byol_predictor)\."]

    def __init__(self, config: AClipConfig):
        super().__init__(config)
        vision_width, text_width = config.vision_config.hidden_size, config.text_config.hidden_size
        self.vision_model = MaskedViTModel._from_config(config.vision_config)
        self.text_model = CLIPTextModel._from_config(config.text_config)
        self.visual_projection = nn.Linear(vision_width, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(text_width, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.simclr_head = None
        if config.simclr_loss_weight > 0:
            self.simclr_head = mlp_head(vision_width, config.simclr_hidden_dim, config.simclr_output_dim, layers=3)
        self.byol_projector = self.byol_predictor = None
        if config.byol_loss_weight > 0:
            hidden, out = config.byol_hidden_dim, config.byol_output_dim
            self.byol_projector = mlp_head(vision_width, hidden, out, layers=2, bias=False)
            self.byol_predictor = mlp_head(out, hidden, out, layers=2, bias=False)
        self.relation_bias = MaskRelationBias.from_config(config)  # no tensors with relation_bias="none"
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        keep_indices: torch.Tensor | None = None,
        byol_targets: torch.Tensor | None = None,
        token_labels: torch.Tensor | None = None,
        return_loss: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> AClipOutput:
        """
        input_ids: (B, L) token ids, padded with the end-of-text token. Without them the output holds the image
            tower's output and `image_embeds` only (the first field, so the `image-feature-extraction` pipeline
            returns it).
        pixel_values: (B, C, H, W), or (B, V, C, H, W) for V augmented views of each image.
        keep_indices: (B, K) or (B, V, K) kept patch indices per view; `None` keeps every patch.
        token_labels: (B, h, w) or (B, V, h, w) segment label of every patch of each view (0 = none): the image
            tower adds its mask-relation bias (`config.relation_bias`; ignored without one).
        byol_targets: (B, C_byol) EMA targets; enables the BYOL loss.
        output_attentions / output_hidden_states: of both towers (`None`: the configs' flags), in
            `vision_model_output` / `text_model_output`.
        return_dict: `False` (or `config.return_dict=False`) returns a tuple of the non-`None` fields.
        """
        if pixel_values is None:
            raise ValueError(
                "AClipModel.forward needs pixel_values (and input_ids for logits_per_image, as transformers' "
                "CLIPModel); for the text tower alone call get_text_features"
            )
        single_view = pixel_values.ndim == 4
        if single_view:
            pixel_values, keep_indices, token_labels = (
                value[:, None] if value is not None else None for value in (pixel_values, keep_indices, token_labels)
            )
        batch, views = pixel_values.shape[:2]
        # view-major: rows [v * B + b] so that each view is a contiguous block
        flat_pixels, flat_keep, flat_labels = (
            value.transpose(0, 1).flatten(0, 1) if value is not None else None
            for value in (pixel_values, keep_indices, token_labels)
        )
        vision_flags = self.tower_output_flags(self.vision_model, output_attentions, output_hidden_states)
        vision_outputs = self.image_tower(flat_pixels, flat_keep, flat_labels, **vision_flags)
        cls_tokens = vision_outputs.pooler_output  # (V·B, D)
        image_embeds = F.normalize(self.visual_projection(cls_tokens), dim=-1).view(views, batch, -1)
        if input_ids is None:  # image features only: `image_embeds` comes first (`image-feature-extraction`)
            return AClipOutput(image_embeds=image_embeds[0], vision_model_output=vision_outputs)
        text_outputs = self.get_text_features(
            input_ids, attention_mask, output_attentions=output_attentions, output_hidden_states=output_hidden_states
        )
        text_embeds = F.normalize(text_outputs.pooler_output, dim=-1)
        logit_scale = self.logit_scale.exp()
        logits_per_text = logit_scale * text_embeds @ image_embeds[0].t()

        loss = clip = simclr = byol = None
        if return_loss:
            clip = sum(clip_contrastive_loss(image_embeds[v], text_embeds, logit_scale) for v in range(views)) / views
            loss = clip
            if self.simclr_head is not None and views >= 2:
                projected = self.simclr_head(cls_tokens).view(views, batch, -1)
                simclr = nt_xent_loss(projected[0], projected[1], self.config.simclr_temperature)
                loss = loss + self.config.simclr_loss_weight * simclr
            if self.byol_projector is not None and byol_targets is not None:
                predictions = self.byol_predictor(self.byol_projector(cls_tokens)).view(views, batch, -1)
                byol = byol_loss(predictions, byol_targets[None])
                loss = loss + self.config.byol_loss_weight * byol

        return AClipOutput(
            loss=loss,
            logits_per_image=logits_per_text.t(),
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds[0],
            clip_loss=clip,
            simclr_loss=simclr,
            byol_loss=byol,
            vision_model_output=vision_outputs,
            text_model_output=text_outputs,
        )


__all__ = ["AClipModel", "AClipOutput", "AClipPreTrainedModel"]
