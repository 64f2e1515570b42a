"""Zero-shot image classification with prompt-template ensembles and truncation to the text context.

Shipped inside every checkpoint (`custom_pipelines` in config.json) and loadable with `trust_remote_code=True`
where `hf_masked_vl` is not installed. Works with any dual encoder that has `get_image_features`,
`get_text_features` (both returning `pooler_output` embeddings), `logit_scale` and `config.text_config`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers import Pipeline
from transformers.image_utils import load_image

from .registration import register_pipeline

ZERO_SHOT_ENSEMBLE_TASK = "zero-shot-image-classification-ensemble"


def tokenize_texts(tokenizer, texts: Sequence[str], context_length: int) -> dict[str, torch.Tensor]:
    """Tokenize, pad to the longest text and cut to `context_length`; a cut text ends with end-of-text, so
    pooling at the first end-of-text token stays valid (as open_clip does). Returns input_ids, attention_mask."""
    encoded = tokenizer(list(texts), padding=True, truncation=True, max_length=context_length, return_tensors="pt")
    input_ids, attention_mask = encoded["input_ids"], encoded["attention_mask"]
    eos = tokenizer.eos_token_id
    cut = attention_mask[:, -1].bool() & (input_ids[:, -1] != eos)
    input_ids[cut, -1] = eos
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@torch.no_grad()
def build_zero_shot_classifier(
    model, tokenizer, class_names: Sequence[str], templates: Sequence[str], batch_size: int = 256
) -> torch.Tensor:
    """Class embeddings (C, E): per class, the mean of its L2-normalised template embeddings, renormalised."""
    context_length = model.config.text_config.max_position_embeddings
    prompts = [template.format(name) for name in class_names for template in templates]
    device = next(model.parameters()).device
    embeddings = []
    for start in range(0, len(prompts), batch_size):
        tokens = tokenize_texts(tokenizer, prompts[start : start + batch_size], context_length)
        tokens = {key: value.to(device) for key, value in tokens.items()}
        embeddings.append(F.normalize(model.get_text_features(**tokens).pooler_output.float(), dim=-1))
    per_template = torch.cat(embeddings).view(len(class_names), len(templates), -1)
    return F.normalize(per_template.mean(dim=1), dim=-1)


@register_pipeline(ZERO_SHOT_ENSEMBLE_TASK, "AutoModelForZeroShotImageClassification", kind="multimodal")
class ZeroShotEnsemblePipeline(Pipeline):
    """`pipe(image, candidate_labels=[...], templates=[...])` → `[{"label", "score"}]`, best first.

    `templates` defaults to `model.config.zero_shot_templates`; `hypothesis_template` (one template, as in the
    stock pipeline) is accepted too. Label embeddings are cached per (labels, templates).
    """

    _load_tokenizer = True
    _load_image_processor = True
    _load_processor = False
    _load_feature_extractor = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._classifier_cache: dict[tuple, torch.Tensor] = {}

    def _sanitize_parameters(self, candidate_labels=None, templates=None, hypothesis_template=None, **kwargs):
        preprocess_params = {}
        if candidate_labels is not None:
            preprocess_params["candidate_labels"] = candidate_labels
        if hypothesis_template is not None:
            templates = [hypothesis_template]
        if templates is not None:
            preprocess_params["templates"] = list(templates)
        return preprocess_params, {}, {}

    def preprocess(self, image, candidate_labels=None, templates=None):
        if not candidate_labels:
            raise ValueError("candidate_labels must be a non-empty list of class names")
        templates = templates or list(getattr(self.model.config, "zero_shot_templates", ["a photo of a {}."]))
        pixel_values = self.image_processor(images=[load_image(image)], return_tensors="pt")["pixel_values"]
        return {
            "pixel_values": pixel_values,
            "candidate_labels": list(candidate_labels),
            "templates": templates,
        }

    def _forward(self, inputs):
        labels, templates = inputs["candidate_labels"], inputs["templates"]
        key = (tuple(labels), tuple(templates))
        if key not in self._classifier_cache:
            self._classifier_cache[key] = build_zero_shot_classifier(self.model, self.tokenizer, labels, templates)
        classifier = self._classifier_cache[key]
        pixel_values = inputs["pixel_values"].to(device=classifier.device, dtype=self.model.dtype)
        image_embeds = F.normalize(self.model.get_image_features(pixel_values).pooler_output.float(), dim=-1)
        logits = self.model.logit_scale.exp().float() * image_embeds @ classifier.t()
        return {"candidate_labels": labels, "logits": logits}

    def postprocess(self, model_outputs):
        scores = model_outputs["logits"][0].softmax(dim=-1).tolist()
        ranked = sorted(zip(scores, model_outputs["candidate_labels"]), key=lambda pair: -pair[0])
        return [{"score": score, "label": label} for score, label in ranked]


__all__ = ["ZERO_SHOT_ENSEMBLE_TASK", "ZeroShotEnsemblePipeline", "build_zero_shot_classifier", "tokenize_texts"]
