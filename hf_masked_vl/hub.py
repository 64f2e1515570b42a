"""Complete, self-contained checkpoint folders (weights, code, tokenizer, processor, pipeline, card) and pushing
exactly those files to the Hub."""

from __future__ import annotations

import contextlib
import fnmatch
import importlib.resources
import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import huggingface_hub.constants
from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.errors import LocalTokenNotFoundError
from transformers import CLIPProcessor, PreTrainedModel

from .cards import PACKAGE_NAME, closing_sections, training_details
from .errors import UsageError
from .models import ZERO_SHOT_ENSEMBLE_TASK, ZeroShotEnsemblePipeline
from .public import public_log_files, public_name

logger = logging.getLogger(__name__)

PROTOCOL_LABELS = {
    "zero_shot": "zero-shot top-1",
    "knn": "k-NN top-1 (k=20)",
    "linear": "linear-probe top-1",
    "finetune": "fine-tuned top-1",
}
PROTOCOL_TASKS = {
    "zero_shot": "zero-shot-image-classification",
    "knn": "image-classification",
    "linear": "image-classification",
}

# What a checkpoint folder of this package holds; `push_checkpoint` uploads these names and nothing else.
CHECKPOINT_FILE_PATTERNS = (
    "config.json",
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "preprocessor_config.json",
    "processor_config.json",
    "README.md",
    # the run's figures, as transformers' example scripts write them (metrics only: no path, no host)
    "all_results.json",
    "train_results.json",
    "eval_results.json",
)
# What `MaskedVLTrainer` adds in an intermediate `checkpoint-N` folder to resume from it: transformers'
# TRAINER_STATE_NAME, OPTIMIZER_NAME, SCHEDULER_NAME, SCALER_NAME and one rng_state*.pth per process, this package's
# data_state*.json, EMA weights and completeness manifest. `training_args.bin` is left out on purpose: a pickle of
# the TrainingArguments holding the absolute paths of the machine that trained, which resuming does not read (the
# arguments come from the command line).
CHECKPOINT_STATE_PATTERNS = (
    "trainer_state.json",
    "optimizer.pt",
    "scheduler.pt",
    "scaler.pt",
    "rng_state*.pth",
    "data_state*.json",
    "ema.safetensors",
    "checkpoint_manifest.json",
)
CHECKPOINT_FOLDER = re.compile(r"^checkpoint-\d+$")  # transformers' PREFIX_CHECKPOINT_DIR-<global step>
LOGS_FOLDER = "runs"  # where transformers' TensorBoard callback writes by default, in output_dir


@dataclass
class EvaluationFigure:
    """A measured figure for the model card: one protocol, one set of weights. `dataset_name` names the data and
    its split (`demo shapes (eval)`); `dataset_id` is its Hub id, None when it is not on the Hub (the embedded demo,
    local files): such a figure is shown in the card's table but left out of the `model-index` metadata, whose
    `dataset.type` the Hub shows as a link to the dataset."""

    protocol: str  # zero_shot, knn, linear
    top1: float
    chance: float
    num_classes: int
    dataset_name: str
    dataset_id: str | None = None
    split: str = "eval"
    weights: str = "exported"  # "ema" / "online" when both were scored
    exported: bool = True

    @property
    def label(self) -> str:
        return PROTOCOL_LABELS.get(self.protocol, self.protocol)


@dataclass
class CardInfo:
    """What a model card says beyond the config: provenance, training summary and measured results.

    Attributes:
        model_name: the card's title (the output folder's name).
        training_summary: the run's account (steps, data, time, recipe and its deviations).
        datasets: the training data's Hub ids (metadata `datasets`); none for the demo or local files.
        results: the measured figures.
        base_model: the Hub id the model started from or was distilled from.
        template: a file of `model_cards/`.
        pipeline_tag: the metadata's task (default: zero-shot for dual encoders, else feature extraction).
        repo_id: the Hub id the card's snippets load from (`--hub_model_id`, the push); None: the folder's name.
        license: a Hub license id the user chose (`--license`); None: the metadata names no license.
        training_data: one line on what the model was trained on.
        hyperparameters: the training arguments that matter, name → value.
        config_values: the method's config values, name → value.
        precision: the training precision and why it was chosen.
        demo: trained on the embedded demo (the limitations say it is a toy).
        citations: keys of `cards.CITATIONS` (the papers' BibTeX).
    """

    model_name: str
    training_summary: str = ""
    datasets: list[str] = field(default_factory=list)
    results: list[EvaluationFigure] = field(default_factory=list)
    base_model: str | None = None
    template: str = "generic.md"
    pipeline_tag: str | None = None
    repo_id: str | None = None
    license: str | None = None
    training_data: str = ""
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    config_values: dict[str, Any] = field(default_factory=dict)
    precision: str | None = None
    demo: bool = False
    citations: tuple[str, ...] = ()


def hub_code_files() -> set[str]:
    """The flat Hub-code modules of `hf_masked_vl.models` (copied beside the weights by `save_pretrained`)."""
    folder = importlib.resources.files("hf_masked_vl.models")
    return {entry.name for entry in folder.iterdir() if entry.name.endswith(".py") and entry.name != "__init__.py"}


def checkpoint_files(folder: str | Path, training_state: bool = False) -> list[str]:
    """The files of `folder` that this package writes for a checkpoint (the push allow-list): the final folder's
    (`CHECKPOINT_FILE_PATTERNS` and the Hub code) and, with `training_state`, what a `checkpoint-N` folder holds to
    resume (`CHECKPOINT_STATE_PATTERNS`). Only regular files inside `folder` count: a symlink or a special file
    under an allowed name is left out, with a warning naming it."""
    folder = Path(folder)
    patterns = CHECKPOINT_FILE_PATTERNS + (CHECKPOINT_STATE_PATTERNS if training_state else ())
    code = hub_code_files()
    names = []
    for path in sorted(folder.iterdir()):
        if path.name in code or any(fnmatch.fnmatch(path.name, pattern) for pattern in patterns):
            if is_plain_file_inside(path, folder):
                names.append(path.name)
    return names


def is_plain_file_inside(path: Path, folder: Path) -> bool:
    """Whether `path` is a regular file (not a symlink, FIFO or device) whose real location is inside `folder`;
    warns naming it when it is not."""
    mode = path.lstat().st_mode
    if stat.S_ISLNK(mode):
        logger.warning("not pushing %s: it is a symbolic link (to %s)", path, os.readlink(path))
        return False
    if not stat.S_ISREG(mode):
        logger.warning("not pushing %s: it is not a regular file", path)
        return False
    if not path.resolve().is_relative_to(folder.resolve()):
        logger.warning("not pushing %s: its real location %s is outside %s", path, path.resolve(), folder)
        return False
    return True


def run_checkpoint_folders(output_dir: str | Path, names: Sequence[str] | None = None) -> list[str]:
    """The intermediate `checkpoint-<step>` folders of `output_dir` to push, by step: `names` (the run's own, from
    its record: `training.outputs.run_checkpoints`) or, when None, every `checkpoint-<int>` folder. A linked folder
    is left out with a warning."""
    output_dir = Path(output_dir)
    candidates = names if names is not None else [path.name for path in output_dir.iterdir()]
    folders = []
    for name in candidates:
        path = output_dir / name
        if not CHECKPOINT_FOLDER.match(name):
            continue
        if path.is_symlink():
            logger.warning("not pushing %s: it is a symbolic link (to %s)", path, os.readlink(path))
        elif path.is_dir():
            folders.append(name)
    return sorted(folders, key=lambda name: int(name.split("-")[1]))


def upload_plan(
    folder: str | Path,
    include_checkpoints: bool | Sequence[str] = False,
    training_state: bool = False,
    path_in_repo: str = "",
) -> list[tuple[Path, str]]:
    """Every file `push_checkpoint` uploads from `folder`, as (local file, path in the repo): the final folder's
    `checkpoint_files` (with `training_state`, a `checkpoint-N` folder's resumable state too), under the folder
    `path_in_repo` of the repo (default: its top), and, with `include_checkpoints`, those of the `checkpoint-N`
    folders (True: every one; a list: those names, e.g. the run record's) with their training state. Nothing else: no
    glob over the folder, no symlink, no file this package does not write."""
    folder = Path(folder)
    prefix = f"{path_in_repo.strip('/')}/" if path_in_repo.strip("/") else ""
    plan = [(folder / name, prefix + name) for name in checkpoint_files(folder, training_state)]
    if include_checkpoints:
        names = None if include_checkpoints is True else list(include_checkpoints)
        for checkpoint in run_checkpoint_folders(folder, names):
            files = checkpoint_files(folder / checkpoint, training_state=True)
            plan += [(folder / checkpoint / name, f"{checkpoint}/{name}") for name in files]
    return plan


def auto_map_for(model: PreTrainedModel) -> dict[str, str]:
    """Every Auto class the checkpoint serves, pointing at the flat Hub-code modules saved beside it."""
    config_module = type(model.config).__module__.rsplit(".", 1)[-1]
    model_module = type(model).__module__.rsplit(".", 1)[-1]
    model_ref = f"{model_module}.{type(model).__name__}"
    entries = {"AutoConfig": f"{config_module}.{type(model.config).__name__}", "AutoModel": model_ref}
    if hasattr(model, "get_text_features"):
        entries["AutoModelForZeroShotImageClassification"] = model_ref
    entries.update(getattr(model, "extra_auto_map", {}) or {})
    return entries


def own_auto_class(model: PreTrainedModel, auto_map: dict[str, str]) -> str:
    """The Auto class `save_pretrained` writes the saved model's own class under: "AutoModel" unless `auto_map`
    gives AutoModel to another class (a pre-training model whose AutoModel is its encoder), then the first Auto
    class that names it. (`save_pretrained` overwrites that entry, so it must agree with `auto_map`.)"""
    model_ref = f"{type(model).__module__.rsplit('.', 1)[-1]}.{type(model).__name__}"
    if auto_map.get("AutoModel", model_ref) == model_ref:
        return "AutoModel"
    return next(name for name, ref in auto_map.items() if ref == model_ref and name != "AutoConfig")


def hub_id_or_none(name: str | None) -> str | None:
    """`name` if it can be a Hub model id (card metadata `base_model`), not a local path or an open_clip spec."""
    if not name or os.path.exists(name) or name.startswith("open_clip:") or name.count("/") > 1:
        return None
    return name


def render_model_card(model: PreTrainedModel, info: CardInfo, folder: str | Path) -> ModelCard:
    """Render the method's card template from `model_cards/` with metadata (exported figures in model-index)."""
    eval_results = [
        EvalResult(
            task_type=PROTOCOL_TASKS.get(figure.protocol, "image-classification"),
            dataset_type=figure.dataset_id,
            dataset_name=figure.dataset_name,
            dataset_split=figure.split,
            metric_type="accuracy",
            metric_name=figure.label,
            metric_value=round(figure.top1, 4),
        )
        for figure in info.results
        if figure.exported and figure.dataset_id is not None
    ]
    has_text = getattr(model.config, "text_config", None) is not None
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=info.pipeline_tag
        or ("zero-shot-image-classification" if has_text else "image-feature-extraction"),
        license=info.license,
        tags=["hf_masked_vl", model.config.model_type, "custom_code"],
        datasets=info.datasets or None,
        base_model=info.base_model,
        model_name=info.model_name,
        eval_results=eval_results or None,
    )
    templates = importlib.resources.files("hf_masked_vl.model_cards")
    template = templates / info.template
    if not template.is_file():
        template = templates / "generic.md"
    card = ModelCard.from_template(
        card_data,
        template_str=template.read_text(encoding="utf-8"),
        model_name=info.model_name,
        model_type=model.config.model_type,
        model_class=type(model).__name__,
        config=model.config,
        training_summary=info.training_summary,
        results=info.results,
        templates=list(getattr(model.config, "zero_shot_templates", []) or []),
        num_parameters=sum(p.numel() for p in model.parameters()),
        package=PACKAGE_NAME,
        model_id=info.repo_id or info.model_name,
        model_id_known=info.repo_id is not None,
        training_details=training_details(info.training_data, info.hyperparameters, info.config_values, info.precision),
        closing_sections=closing_sections(info.demo, info.license, info.citations),
    )
    card.save(Path(folder) / "README.md")
    return card


def prepare_for_saving(model: PreTrainedModel) -> None:
    """Register the model's config and class for the Auto classes and write its complete `auto_map`, so that every
    `save_pretrained` of it (final folder and intermediate `checkpoint-N`) carries the flat model code."""
    type(model.config).register_for_auto_class()
    auto_map = auto_map_for(model)
    type(model).register_for_auto_class(own_auto_class(model, auto_map))
    model.config.auto_map = auto_map


def write_checkpoint_folder(
    model: PreTrainedModel,
    folder: str | Path,
    tokenizer=None,
    image_processor=None,
    card: CardInfo | None = None,
    pipelines: tuple[str, ...] | None = None,
    training_heads: bool = False,
) -> Path:
    """Write the files of a complete checkpoint (see `save_checkpoint`) straight into `folder`, a new or empty
    folder (a staging folder: nothing there is replaced atomically)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    prepare_for_saving(model)
    with training_modules_left_out(model, leave_out=not training_heads) as left_out:
        if left_out:
            logger.info("leaving the training-only modules %s out of %s", ", ".join(left_out), folder)
        save_model_files(model, folder, tokenizer, image_processor, pipelines)
        if card is not None:
            render_model_card(model, card, folder)
    return folder


@contextlib.contextmanager
def training_modules_left_out(model: PreTrainedModel, leave_out: bool = True) -> Iterator[list[str]]:
    """Within the block the model's `training_only_modules` (modules only its pre-training loss uses, e.g. A-CLIP's
    SimCLR head and BYOL projector and predictor) are detached (set to None), so that `save_pretrained` and the card
    leave them out; they are put back when the block ends. Yields the names detached (none with `leave_out=False`
    or for a model that declares none)."""
    names = [name for name in getattr(model, "training_only_modules", ()) if getattr(model, name, None) is not None]
    detached = {name: getattr(model, name) for name in names} if leave_out else {}
    for name in detached:
        setattr(model, name, None)
    try:
        yield list(detached)
    finally:
        for name, module in detached.items():
            setattr(model, name, module)


def save_model_files(
    model: PreTrainedModel, folder: Path, tokenizer, image_processor, pipelines: tuple[str, ...] | None
) -> None:
    """Weights, config and code (through the zero-shot ensemble pipeline when `pipelines` holds it), tokenizer,
    image processor and, with both of these, a `CLIPProcessor` (`processor_config.json`), so that
    `AutoProcessor.from_pretrained(folder)` returns one that prepares text and images together as CLIP's does."""
    if pipelines is None:
        pipelines = (ZERO_SHOT_ENSEMBLE_TASK,) if hasattr(model, "get_text_features") else ()
    if ZERO_SHOT_ENSEMBLE_TASK in pipelines:
        if tokenizer is None:
            raise ValueError("the zero-shot pipeline needs the model's tokenizer")
        pipe = ZeroShotEnsemblePipeline(model=model, tokenizer=tokenizer, image_processor=image_processor)
        pipe.save_pretrained(folder)
    else:
        model.save_pretrained(folder)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        if image_processor is not None:
            image_processor.save_pretrained(folder)
    if tokenizer is not None and image_processor is not None:
        CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)


def move_files_into(staging: str | Path, folder: str | Path, last: str = "config.json") -> None:
    """Move every file of `staging` into `folder` with `os.replace` (same file system), `last` at the end: a name
    already in `folder` is replaced, a link there is replaced itself and never written through, and a reader sees
    each file old or new, never half-written. `config.json` last: a folder with it is a complete checkpoint."""
    staging, folder = Path(staging), Path(folder)
    names = sorted(entry.name for entry in staging.iterdir())
    for name in sorted(names, key=lambda name: name == last):
        os.replace(staging / name, folder / name)


def save_checkpoint(
    model: PreTrainedModel,
    folder: str | Path,
    tokenizer=None,
    image_processor=None,
    card: CardInfo | None = None,
    pipelines: tuple[str, ...] | None = None,
    *,
    training_heads: bool = False,
) -> Path:
    """Write a folder that `AutoModel.from_pretrained(folder)` loads with this package installed, and with
    `trust_remote_code=True` without it: safetensors weights, config with a complete `auto_map`, the flat model
    code, `tokenizer.json` and the template-ensemble zero-shot pipeline (dual encoders),
    `preprocessor_config.json`, a `CLIPProcessor`'s `processor_config.json` (dual encoders: for
    `AutoProcessor`) and a model card. `pipelines` defaults to the zero-shot ensemble for models with a text tower
    and none otherwise. The modules only pre-training uses (`training_only_modules`: A-CLIP's SimCLR / BYOL heads)
    are left out unless `training_heads` (to continue pre-training with them); the model loads without them.

    The files are written into a hidden temporary folder inside `folder` and moved in when all are written
    (`move_files_into`, `config.json` last): an interrupted save leaves the folder's previous files whole, and a
    link planted in `folder` is replaced, never written through. Other files of `folder` are left alone."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".save-", suffix=".tmp", dir=folder))
    try:
        write_checkpoint_folder(model, staging, tokenizer, image_processor, card, pipelines, training_heads)
        move_files_into(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def push_checkpoint(
    folder: str | Path,
    repo_id: str,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    include_checkpoints: bool | Sequence[str] = False,
    logs: str | Path | None = None,
    training_state: bool = False,
    path_in_repo: str = "",
    state_copy_in_repo: str | None = None,
    commit_message: str = "Upload hf_masked_vl checkpoint",
) -> str:
    """Create `repo_id` if needed and upload, in one commit, the files of `upload_plan` (weights, config, code,
    tokenizer, processor, card; with `include_checkpoints` the `checkpoint-N` folders' too: True for every one, or
    a list of names) and, with `logs`, a public copy of the TensorBoard event files under that folder
    (`public.public_log_files`: no host name, no absolute path) as `runs/...`. Each file is named one by one, never
    by a glob; anything else in the folder stays on the machine. `training_state` and `path_in_repo`: see
    `upload_plan`. `state_copy_in_repo`: in the same commit, `folder` (a `checkpoint-N` folder) again with its
    training state under that folder of the repository (`--hub_strategy checkpoint`: its model files at the top and
    the resumable checkpoint as `last-checkpoint/`). Returns the commit URL."""
    plan = upload_plan(folder, include_checkpoints, training_state, path_in_repo)
    if state_copy_in_repo is not None:
        plan += upload_plan(folder, training_state=True, path_in_repo=state_copy_in_repo)
    if not any(local.name == "config.json" and local.parent == Path(folder) for local, _ in plan):
        raise FileNotFoundError(f"{folder} holds no checkpoint of this package (no config.json)")
    with tempfile.TemporaryDirectory(prefix="hf_masked_vl_logs_") as staging:
        if logs is not None:
            log_files = public_log_files(logs, staging, LOGS_FOLDER)
            if not log_files:
                logger.warning("--hub_include_logs: no TensorBoard event file under %s to push", logs)
            plan += log_files
        operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(local)) for local, path in plan]
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.create_commit(
            repo_id=repo_id,
            operations=operations,
            commit_message=commit_message,
            revision=revision,
        )
    return str(commit.commit_url)


def check_hub_access(repo_id: str, token: str | None = None) -> str:
    """Fail early, before training, in one line (`UsageError`) when the Hub cannot be reached (offline mode, no
    network), no token is found or the token cannot write to `repo_id`. The message never holds the token.
    Returns the full id (`owner/name`: a bare name is the token user's)."""
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        raise UsageError(
            "--push_to_hub needs the Hub, but offline mode is on (HF_HUB_OFFLINE=1): unset it, or drop --push_to_hub"
        )
    try:
        whoami = HfApi(token=token).whoami()
    except LocalTokenNotFoundError:
        raise UsageError(
            "--push_to_hub needs a Hub token with write access: log in with `hf auth login`, set HF_TOKEN or pass "
            "--hub_token, or drop --push_to_hub"
        ) from None
    except Exception as error:
        raise UsageError(
            f"--push_to_hub: cannot reach the Hub or the token is not valid ({type(error).__name__}: "
            f"{redacted_first_line(error, token)}). Log in with `hf auth login` or pass --hub_token, or drop "
            "--push_to_hub."
        ) from None
    owner = repo_id.split("/")[0] if "/" in repo_id else whoami.get("name")
    allowed = {whoami.get("name")} | {org.get("name") for org in whoami.get("orgs", []) or []}
    if owner not in allowed:
        raise UsageError(
            f"--hub_model_id {repo_id}: the token of {whoami.get('name')!r} cannot create or write it (owner "
            f"{owner!r} is not the user or one of their organisations)"
        )
    return f"{owner}/{repo_id.split('/')[-1]}"


def check_card_metadata(license_id: str | None, datasets: list[str] | None = None) -> None:
    """Before a push (and before training), let the Hub check the card metadata the user chose (`--license`, the
    training data's Hub id), so that an id the Hub does not accept fails now, in one line, rather than the upload
    after training. A Hub that cannot be asked is logged and the run goes on (the upload checks it again)."""
    data = ModelCardData(library_name="transformers", license=license_id, datasets=datasets or None)
    try:
        ModelCard(f"---\n{data.to_yaml()}\n---\n").validate(repo_type="model")
    except ValueError as error:
        raise UsageError(
            f"--license {license_id}: the Hub refuses the model card's metadata: {redacted_first_line(error, None)}"
        ) from None
    except Exception as error:  # network: HTTP errors, timeouts
        logger.warning("could not ask the Hub to check the card's metadata (%s: %s)", type(error).__name__, error)


def redacted_first_line(error: BaseException, token: str | None) -> str:
    """The first line of an error's message, with `token` (if any) replaced by `***`."""
    text = (str(error).strip().splitlines() or [""])[0]
    return text.replace(token, "***") if token else text


__all__ = [
    "CHECKPOINT_FILE_PATTERNS",
    "CHECKPOINT_STATE_PATTERNS",
    "CardInfo",
    "EvaluationFigure",
    "auto_map_for",
    "check_card_metadata",
    "check_hub_access",
    "checkpoint_files",
    "hub_code_files",
    "move_files_into",
    "prepare_for_saving",
    "hub_id_or_none",
    "own_auto_class",
    "public_name",
    "push_checkpoint",
    "render_model_card",
    "run_checkpoint_folders",
    "save_checkpoint",
    "save_model_files",
    "training_modules_left_out",
    "upload_plan",
    "write_checkpoint_folder",
]
