"""Today's losses of every registered method, pinned: a refactor of masking, methods, heads or schedules must keep them.

Each case trains the method's tiny preset for two optimizer steps in fp32 through the command line
(`hf_masked_vl.training.run.main`), on the four records of `tests/data/pinned_batch.parquet` (demo scenes with a
caption, a `segments` label map and a `guidance` map), with a fixed seed, no shuffling and no DataLoader workers. So
the run goes through the method's real path: its views, its collator (masks drawn there), its objective (EMA or
teacher inputs), the model's forward and loss, the optimizer, the EMA update and the final folder. Start checkpoints
and teachers are built here from fixed seeds. Recorded per case: every loss part of both steps (the model output's
`loss` and its `*_loss` / `*_entropy` fields) and two sums over the exported weights, compared with
`tests/data/pinned_losses.json`.

Exact float equality holds when the environment matches the one the file was written in (torch version, CPU
instruction set, threads: CPU kernels are deterministic there); elsewhere the kernels may sum in another order, so
the comparison falls back to a relative tolerance of `OTHER_ENVIRONMENT_RTOL`.

Only public behaviour is used (the command line, the registry, the Trainer's `compute_loss`, saved folders), so the
test needs no change when the code moves. After a change that is *meant* to alter a method's numbers, rewrite the
file (and say why in the commit):

    python tests/test_pinned_losses.py --regenerate
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"
PINNED_FILE = DATA / "pinned_losses.json"
BATCH_FILE = DATA / "pinned_batch.parquet"
OTHER_ENVIRONMENT_RTOL = 1e-4
NUM_RECORDS, BATCH_SIZE, STEPS = 4, 2, 2

# Every run: fp32 on the CPU, fixed seed, the records in file order, two steps at the learning rate's peak (no
# warm-up step at lr 0, so the second step sees the first update), no evaluation split, no intermediate checkpoints.
FLAGS = [
    "--dataset_name", "parquet", "--data_files", str(BATCH_FILE), "--shuffle_buffer", "0",
    "--max_steps", str(STEPS), "--per_device_train_batch_size", str(BATCH_SIZE), "--warmup_steps", "0",
    "--seed", "0", "--bf16", "false", "--use_cpu", "true", "--dataloader_num_workers", "0", "--save_strategy", "no",
    "--report_to", "none", "--disable_tqdm", "true", "--preset", "tiny",
]  # fmt: skip

# case → the method's flags; "{name}" is replaced by the folder of the start checkpoint `name` (STARTS)
CASES: dict[str, list[str]] = {
    # the pinned weight sums include A-CLIP's SimCLR / BYOL heads, which a final folder keeps only when asked
    "a_clip": ["--method", "a_clip", "--export_training_heads"],
    "a_clip-random_masks": ["--method", "a_clip", "--mask_mode", "random", "--export_training_heads"],
    "uta": ["--method", "uta", "--teacher", "{aclip_teacher}"],
    "uta-block_masks": ["--method", "uta", "--teacher", "{aclip_teacher}", "--mask_type", "block"],
    "uta_contrastive": ["--method", "uta_contrastive", "--model_name_or_path", "{uta_start}"],
    "attg_mae": ["--method", "attg_mae"],
    "attg_mae-random_maps-cosine": ["--method", "attg_mae", "--guidance", "random", "--temperature_schedule", "cosine"],
    "mae": ["--method", "mae"],
    "lit": ["--method", "lit", "--model_name_or_path", "{mae_start}"],
    "mre_mae": ["--method", "mre_mae"],
    "mre_dino": ["--method", "mre_dino"],
    "dino": ["--method", "dino"],
    "mre_distill-mae_teacher": ["--method", "mre_distill", "--teacher", "{mre_mae_teacher}"],
    "mre_distill-dino_teacher": ["--method", "mre_distill", "--teacher", "{mre_dino_teacher}"],
}


# ---- start checkpoints and teachers, built from fixed seeds ----
def _dual_encoder_folder(model, folder: Path) -> None:
    from hf_masked_vl.tokenization import build_clip_tokenizer

    model.save_pretrained(folder)
    build_clip_tokenizer(model.config.text_config.max_position_embeddings).save_pretrained(folder)


def _aclip_teacher(folder: Path) -> None:
    from hf_masked_vl import AClipConfig, AClipModel

    torch.manual_seed(1)
    _dual_encoder_folder(AClipModel(AClipConfig.from_preset("tiny")), folder)


def _uta_start(folder: Path) -> None:
    from hf_masked_vl import UTAConfig, UTAModel

    torch.manual_seed(2)
    _dual_encoder_folder(UTAModel(UTAConfig.from_preset("tiny")), folder)


def _mae_start(folder: Path) -> None:
    from hf_masked_vl import AttGMAEConfig, AttGMAEForPreTraining

    torch.manual_seed(3)
    AttGMAEForPreTraining(AttGMAEConfig.from_preset("tiny", guidance="none")).save_pretrained(folder)


def _mre_teacher(model_class, seed: int, folder: Path) -> None:
    """An MRE model with a non-zero attention bias, so that the teacher's attention depends on the labels."""
    from hf_masked_vl import MREViTConfig

    torch.manual_seed(seed)
    model = model_class(MREViTConfig.from_preset("tiny"))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.startswith("relation_bias."):
                parameter.copy_(torch.randn_like(parameter))
    model.save_pretrained(folder)


def _mre_mae_teacher(folder: Path) -> None:
    from hf_masked_vl import MREViTForMAE

    _mre_teacher(MREViTForMAE, 4, folder)


def _mre_dino_teacher(folder: Path) -> None:
    from hf_masked_vl import MREViTForDINO

    _mre_teacher(MREViTForDINO, 5, folder)


STARTS: dict[str, Callable[[Path], None]] = {
    "aclip_teacher": _aclip_teacher,
    "uta_start": _uta_start,
    "mae_start": _mae_start,
    "mre_mae_teacher": _mre_mae_teacher,
    "mre_dino_teacher": _mre_dino_teacher,
}


class StartFolders:
    """The start checkpoints, each built the first time a case asks for it."""

    def __init__(self, root: Path):
        self.root, self.built = root, {}

    def __getitem__(self, name: str) -> str:
        if name not in self.built:
            folder = self.root / name
            STARTS[name](folder)
            self.built[name] = str(folder)
        return self.built[name]


# ---- one run ----
def _is_loss_part(name: str, value) -> bool:
    return isinstance(value, torch.Tensor) and (name == "loss" or name.endswith(("_loss", "_entropy")))


def weight_sums(folder: Path) -> dict[str, float]:
    """The sum and the sum of squares of every floating-point weight of a saved folder: per tensor in float32 (as
    deterministic as the training), over the tensors exactly rounded (so the order of the names does not matter)."""
    from safetensors.torch import load_file

    sums, squares = [], []
    for tensor in load_file(str(folder / "model.safetensors")).values():
        if tensor.is_floating_point():
            flat = tensor.float().flatten()
            sums.append(flat.sum().item())
            squares.append(torch.dot(flat, flat).item())
    return {"sum": math.fsum(sums), "sum_of_squares": math.fsum(squares)}


def run_case(case: str, starts: StartFolders, output: Path) -> dict:
    """Train `case` for `STEPS` steps: {"steps": [{loss part: value} per step], "weights": weight_sums}."""
    from hf_masked_vl.training.run import main as run_pretraining
    from hf_masked_vl.training.trainer import MaskedVLTrainer

    flags = [flag.format_map(starts) if flag.startswith("{") else flag for flag in CASES[case]]
    steps: list[dict[str, float]] = []
    compute_loss = MaskedVLTrainer.compute_loss

    def recording_compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = compute_loss(self, model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        steps.append({name: value.item() for name, value in outputs.items() if _is_loss_part(name, value)})
        return (loss, outputs) if return_outputs else loss

    MaskedVLTrainer.compute_loss = recording_compute_loss
    try:
        run_pretraining([*flags, "--output_dir", str(output), *FLAGS])
    finally:
        MaskedVLTrainer.compute_loss = compute_loss
    return {"steps": steps, "weights": weight_sums(output)}


def environment() -> dict:
    return {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }


# ---- the test ----
@pytest.fixture(scope="module")
def pinned() -> dict:
    return json.loads(PINNED_FILE.read_text())


@pytest.fixture(scope="module")
def starts(tmp_path_factory) -> StartFolders:
    return StartFolders(tmp_path_factory.mktemp("pinned-starts"))


def test_every_registered_method_is_pinned(pinned):
    from hf_masked_vl.methods import available_methods

    methods = {flags[flags.index("--method") + 1] for flags in CASES.values()}
    assert set(available_methods()) <= methods, "a new method needs a case in CASES (then --regenerate)"
    assert set(pinned["cases"]) == set(CASES), "CASES and the pinned file disagree: run --regenerate"


@pytest.mark.parametrize("case", list(CASES))
def test_losses_and_weights_are_unchanged(case, pinned, starts, tmp_path, capsys):
    got = run_case(case, starts, tmp_path / "out")
    capsys.readouterr()
    expected = pinned["cases"][case]
    assert len(got["steps"]) == STEPS and set(got["steps"][0]) == set(expected["steps"][0]), got
    exact = pinned["environment"] == environment()
    for step, (parts, pinned_parts) in enumerate(zip(got["steps"], expected["steps"]), start=1):
        for name, value in pinned_parts.items():
            where = f"{case}: step {step} {name}"
            if exact:
                assert parts[name] == value, f"{where} = {parts[name]!r}, pinned {value!r}"
            else:
                assert parts[name] == pytest.approx(value, rel=OTHER_ENVIRONMENT_RTOL, abs=1e-6), where
    for name, value in expected["weights"].items():
        tolerance = 0 if exact else OTHER_ENVIRONMENT_RTOL
        assert got["weights"][name] == pytest.approx(value, rel=tolerance, abs=0), f"{case}: weights {name}"


# ---- the generator ----
def write_batch(path: Path = BATCH_FILE) -> None:
    """The pinned input: `NUM_RECORDS` demo scenes (48 px) with caption, `segments` and a 6 × 6 `guidance` map (the
    object mask, box-averaged). Committed as bytes, so a change of the demo generator or of PNG encoding never moves
    the pinned numbers; rewritten only when the inputs are meant to change."""
    import datasets
    import numpy as np
    from PIL import Image

    from hf_masked_vl.data.demo import generate_example

    rows = []
    for index in range(NUM_RECORDS):
        example = generate_example(7, "train", index, 48)
        objects = np.array(Image.open(io.BytesIO(example["segments"]["bytes"]))) > 0
        box = Image.fromarray(objects.astype(np.uint8) * 255).resize((6, 6), Image.BOX)
        rows.append(
            {
                "image": example["image"],
                "segments": example["segments"],
                "caption": example["caption"],
                "guidance": (np.asarray(box, dtype=np.float32) / 255).tolist(),
            }
        )
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "segments": datasets.Image(),
            "caption": datasets.Value("string"),
            "guidance": datasets.Sequence(datasets.Sequence(datasets.Value("float32"))),
        }
    )
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(path))


def regenerate(path: Path = PINNED_FILE) -> dict:
    """Run every case and write `path` (with the environment the numbers come from)."""
    results = {}
    with tempfile.TemporaryDirectory() as root:
        starts = StartFolders(Path(root) / "starts")
        for case in CASES:
            results[case] = run_case(case, starts, Path(root) / case)
    pinned = {"environment": environment(), "cases": results}
    path.write_text(json.dumps(pinned, indent=1) + "\n")
    return pinned


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--regenerate", action="store_true", help=f"rewrite {PINNED_FILE.name}")
    parser.add_argument("--batch", action="store_true", help=f"rewrite {BATCH_FILE.name} (changes every number)")
    arguments = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    import conftest  # noqa: F401  (the test session's settings: offline Hub, thread count)

    if arguments.batch:
        write_batch()
    if arguments.regenerate:
        regenerate()
    if not (arguments.batch or arguments.regenerate):
        parser.print_help()
