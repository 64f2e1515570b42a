"""Complete, self-contained checkpoint folders (weights, code, tokenizer, processor, pipeline, card) and pushing."""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from transformers import PreTrainedModel

from .models import ZeroShotEnsemblePipeline

CARD_TEMPLATES = {"a_clip": "a_clip.md", "uta": "uta.md"}


@dataclass
class ZeroShotResult:
    """A measured zero-shot figure for the model card."""

    dataset_name: str
    dataset_type: str
    top1: float
    chance: float
    num_classes: int
    split: str = "eval"


@dataclass
class CardInfo:
    """What a model card says beyond the config: provenance, training summary and measured results."""

    model_name: str
    training_summary: str = ""
    datasets: list[str] = field(default_factory=list)
    zero_shot: ZeroShotResult | None = None
    base_model: str | None = None


def auto_map_for(model: PreTrainedModel) -> dict[str, str]:
    """Every Auto class the checkpoint serves, pointing at the flat Hub-code modules saved beside it."""
    config_module = type(model.config).__module__.rsplit(".", 1)[-1]
    model_module = type(model).__module__.rsplit(".", 1)[-1]
    model_ref = f"{model_module}.{type(model).__name__}"
    entries = {"AutoConfig": f"{config_module}.{type(model.config).__name__}", "AutoModel": model_ref}
    if hasattr(model, "get_text_features"):
        entries["AutoModelForZeroShotImageClassification"] = model_ref
    return entries


def render_model_card(model: PreTrainedModel, info: CardInfo, folder: str | Path) -> ModelCard:
    """Render the model's card template from `model_cards/` with metadata (zero-shot top-1 in model-index)."""
    eval_results = None
    if info.zero_shot is not None:
        result = info.zero_shot
        eval_results = [
            EvalResult(
                task_type="zero-shot-image-classification",
                dataset_type=result.dataset_type,
                dataset_name=result.dataset_name,
                dataset_split=result.split,
                metric_type="accuracy",
                metric_name="zero-shot top-1",
                metric_value=round(result.top1, 4),
            )
        ]
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="zero-shot-image-classification",
        license="apache-2.0",
        tags=["hf_masked_vl", model.config.model_type, "custom_code"],
        datasets=info.datasets or None,
        base_model=info.base_model,
        model_name=info.model_name,
        eval_results=eval_results,
    )
    template = importlib.resources.files("hf_masked_vl.model_cards") / CARD_TEMPLATES[model.config.model_type]
    card = ModelCard.from_template(
        card_data,
        template_str=template.read_text(encoding="utf-8"),
        model_name=info.model_name,
        config=model.config,
        training_summary=info.training_summary,
        zero_shot=info.zero_shot,
        templates=list(getattr(model.config, "zero_shot_templates", [])),
        num_parameters=sum(p.numel() for p in model.parameters()),
    )
    card.save(Path(folder) / "README.md")
    return card


def save_checkpoint(
    model: PreTrainedModel,
    folder: str | Path,
    tokenizer,
    image_processor,
    card: CardInfo | None = None,
) -> Path:
    """Write a folder that `AutoModel.from_pretrained(folder, trust_remote_code=True)` and
    `pipeline(..., model=folder, trust_remote_code=True)` load without this package: safetensors weights,
    config with a complete `auto_map` and `custom_pipelines`, the flat model code, `tokenizer.json`,
    `preprocessor_config.json`, the zero-shot pipeline code and a model card."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    type(model.config).register_for_auto_class()
    type(model).register_for_auto_class("AutoModel")
    model.config.auto_map = auto_map_for(model)
    pipe = ZeroShotEnsemblePipeline(model=model, tokenizer=tokenizer, image_processor=image_processor)
    pipe.save_pretrained(folder)
    if card is not None:
        render_model_card(model, card, folder)
    return folder


def push_checkpoint(
    folder: str | Path,
    repo_id: str,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
) -> str:
    """Create `repo_id` if needed and upload the whole folder in one commit. Returns the commit URL."""
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        commit_message="Upload hf_masked_vl checkpoint",
        revision=revision,
        ignore_patterns=["checkpoint-*/**", "checkpoint-*"],
    )
    return str(commit.commit_url)


__all__ = [
    "CardInfo",
    "ZeroShotResult",
    "auto_map_for",
    "push_checkpoint",
    "render_model_card",
    "save_checkpoint",
]
