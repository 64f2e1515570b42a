"""Same-budget comparisons of pre-training runs on the demo data: the runner the demo scripts share
(`scripts/run_attg_demo.py`, `run_mre_demo.py`, `run_composition_demo.py`).

A `DemoRuns` trains named variants through the command line's entry point (`training.run.main`) with the variant's
flags, a budget every variant shares (`budget_flags`) and a seed, into `<output_dir>/<name>[-seed<s>]`. It records
each run's top-1 per protocol: the run's own evaluation, and for a protocol its method does not run (the linear probe
of a dual encoder) the same protocol measured on the saved folder. Over seeds, a variant's figures have a mean and a
seed-to-seed spread (largest minus smallest); a `Comparison` of two variants says whether the difference of their
means exceeds the larger of their two spreads, and `verdict` whether a paper's direction holds beyond that spread.
Tables are printed as Markdown, figures as `RESULT key=value` lines.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.demo import ensure_demo_dataset
from ..evaluation import PROTOCOLS, demo_splits, evaluate_many
from .run import main as run_pretraining

# every run of a demo: no progress bar, no intermediate checkpoints, no logging integration, a rerun replaces it
RUN_FLAGS = ("--disable_tqdm", "true", "--save_strategy", "no", "--report_to", "none", "--overwrite_output_dir", "true")
DTYPES = ("auto", "fp32", "bf16")


def precision_flags(dtype: str) -> list[str]:
    """`--bf16 false` for "fp32", `--bf16 true` for "bf16", nothing for "auto" (bf16 only where the hardware runs it
    fast)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {DTYPES}")
    return [] if dtype == "auto" else ["--bf16", str(dtype == "bf16").lower()]


def budget_flags(
    steps: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float | None = 0.05,
    adam_beta2: float | None = 0.95,
    logs_per_run: int = 4,
    extra: Sequence[str] = (),
) -> list[str]:
    """The optimisation budget every variant of a comparison shares: `steps` optimizer steps of `batch_size`, AdamW
    at `learning_rate` (MAE's weight decay 0.05 and β₂ 0.95 by default; None: the run's default), a log line
    `logs_per_run` times, then `extra` flags."""
    flags = ["--max_steps", str(steps), "--per_device_train_batch_size", str(batch_size)]
    flags += ["--learning_rate", str(learning_rate), "--logging_steps", str(max(1, steps // logs_per_run))]
    for flag, value in (("--weight_decay", weight_decay), ("--adam_beta2", adam_beta2)):
        flags += [flag, str(value)] if value is not None else []
    return [*flags, *extra]


@dataclass
class TrainedRun:
    """One run of a variant: its folder, top-1 per protocol, the size of the test split and the wall time."""

    name: str
    seed: int | None
    folder: Path
    top1: dict[str, float]
    num_test: int
    chance: float
    wall_s: float
    train_runtime_s: float
    exported: str = "online"  # the weights saved: "ema" or "online"


def spread(values: Sequence[float]) -> float:
    """Largest minus smallest of `values` (0 for one value)."""
    return max(values) - min(values)


@dataclass(frozen=True)
class Comparison:
    """`variant` against `baseline` on one protocol: the difference of their means over seeds, and the larger of
    their two seed-to-seed spreads; `exceeds` when the difference is larger than that spread."""

    variant: str
    baseline: str
    protocol: str
    difference: float
    spread: float

    @classmethod
    def of(
        cls,
        variant: str,
        baseline: str,
        protocol: str,
        variant_values: Sequence[float],
        baseline_values: Sequence[float],
    ) -> Comparison:
        """The comparison of two lists of per-seed figures (any figure: a top-1, a learned scalar, 0 for a sign)."""
        difference = statistics.mean(variant_values) - statistics.mean(baseline_values)
        return cls(variant, baseline, protocol, difference, max(spread(variant_values), spread(baseline_values)))

    @property
    def exceeds(self) -> bool:
        return abs(self.difference) > self.spread

    def verdict(self, expected_sign: int = 1) -> str:
        """Whether "variant > baseline" (`expected_sign` 1; -1: "variant < baseline") holds: "holds beyond the
        spread", "within the spread" (the difference does not exceed the spread; the sign of the means in
        parentheses) or "does not hold" (the opposite direction exceeds the spread)."""
        agrees = self.difference * expected_sign > 0
        if not self.exceeds:
            return f"within the spread (the means {'agree' if agrees else 'disagree'})"
        return "holds beyond the spread" if agrees else "does not hold (the opposite exceeds the spread)"


@dataclass
class DemoRuns:
    """Runs of demo variants into `output_dir`, in `dtype`, evaluated with `protocols` (see the module docstring).

    `run_flags` go to every run after the variant's own (`--demo_num_train`, `--max_eval_samples`, ... of a smoke
    test); a protocol measured on a saved folder uses the same demo splits as the runs."""

    output_dir: str | os.PathLike
    dtype: str = "auto"
    protocols: tuple[str, ...] = ("knn", "linear")
    run_flags: Sequence[str] = ()
    demo_num_train: int = 8192
    max_eval_samples: int | None = None
    runs: list[TrainedRun] = field(default_factory=list)
    wall: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        self.output = Path(self.output_dir)
        self.output.mkdir(parents=True, exist_ok=True)
        self.started = time.perf_counter()
        self.load_at_start = os.getloadavg()  # other work on the machine slows every run: say how busy it was
        self.flags = [*RUN_FLAGS, *precision_flags(self.dtype), "--demo_num_train", str(self.demo_num_train)]
        if self.max_eval_samples is not None:
            self.flags += ["--max_eval_samples", str(self.max_eval_samples)]
        self.flags += list(self.run_flags)
        self.demo = self.timed("demo data", ensure_demo_dataset, num_train=self.demo_num_train)

    def timed(self, label: str, step: Callable, *args: Any, **kwargs: Any) -> Any:
        """`step(*args, **kwargs)`, its wall time recorded under `label`."""
        begin = time.perf_counter()
        try:
            return step(*args, **kwargs)
        finally:
            self.wall[label] = self.wall.get(label, 0.0) + time.perf_counter() - begin

    def folder(self, name: str, seed: int | None = None) -> Path:
        return self.output / (name if seed is None else f"{name}-seed{seed}")

    def train(
        self,
        name: str,
        flags: Sequence[str],
        budget: Sequence[str],
        seed: int | None = None,
        measure_missing: bool = True,
    ) -> TrainedRun:
        """Train variant `name` (its method flags `flags`, the shared `budget`, `--seed seed` when given) and
        record its top-1 per protocol (with `measure_missing`, also the comparison's protocols its method does not
        run, measured on the saved folder)."""
        folder = self.folder(name, seed)
        seed_flags = [] if seed is None else ["--seed", str(seed)]
        label = folder.name
        begin = time.perf_counter()
        result = run_pretraining([*flags, *budget, *seed_flags, "--output_dir", str(folder), *self.flags])
        top1 = {protocol: figure.top1 for protocol, figure in result.results.items()}
        missing = [protocol for protocol in self.protocols if protocol not in top1]
        if missing and measure_missing:
            top1.update(self.evaluate_folder(folder, missing))
        first = next(iter(result.results.values()))
        self.wall[label] = time.perf_counter() - begin
        run = TrainedRun(name, seed, folder, top1, first.num_test, first.chance, self.wall[label],
                         train_runtime_s=result.train_runtime, exported=result.exported)  # fmt: skip
        self.runs.append(run)
        return run

    def evaluate_folder(self, folder: str | os.PathLike, protocols: Sequence[str]) -> dict[str, float]:
        """Top-1 of a saved folder (loaded with `AutoModel`) on the demo's labelled splits, per protocol; zero-shot
        with the folder's tokenizer and the demo's templates."""
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        model = AutoModel.from_pretrained(folder).eval()
        train, test = demo_splits(self.demo, max_samples=self.max_eval_samples)
        processor = AutoImageProcessor.from_pretrained(folder)
        text = any(PROTOCOLS[protocol].needs_text_tower for protocol in protocols)
        tokenizer = AutoTokenizer.from_pretrained(folder) if text else None
        results = evaluate_many(model, list(protocols), image_processor=processor, test_split=test, train_split=train,
                                tokenizer=tokenizer, templates=self.demo.templates)  # fmt: skip
        return {protocol: result.top1 for protocol, result in results.items()}

    # ---- figures over seeds ----
    def figures(self, name: str, protocol: str) -> list[float]:
        """Top-1 of every run of `name`, in the order trained (one per seed)."""
        return [run.top1[protocol] for run in self.runs if run.name == name]

    def mean(self, name: str, protocol: str) -> float:
        return statistics.mean(self.figures(name, protocol))

    def spread(self, name: str, protocol: str) -> float:
        """Largest minus smallest top-1 over the seeds (0 with one seed)."""
        return spread(self.figures(name, protocol))

    def compare(self, variant: str, baseline: str, protocol: str) -> Comparison:
        return Comparison.of(
            variant, baseline, protocol, self.figures(variant, protocol), self.figures(baseline, protocol)
        )

    @property
    def total_wall_s(self) -> float:
        return time.perf_counter() - self.started

    # ---- printing ----
    def print_table(self, labels: dict[str, str]) -> None:
        """One row per variant (`labels`: name → row label): every protocol's top-1 per seed, their mean and their
        spread (largest minus smallest)."""
        header = " | ".join(f"{protocol} top-1 per seed | mean | spread" for protocol in self.protocols)
        print(f"| variant | {header} |\n|{' --- |' * (1 + 3 * len(self.protocols))}")
        for name, label in labels.items():
            cells = []
            for protocol in self.protocols:
                per_seed = ", ".join(f"{value:.4f}" for value in self.figures(name, protocol))
                cells += [per_seed, f"{self.mean(name, protocol):.4f}", f"{self.spread(name, protocol):.4f}"]
            print(f"| {label} | {' | '.join(cells)} |")

    def print_comparisons(self, pairs: Sequence[tuple[str, str]], labels: dict[str, str]) -> list[dict[str, Any]]:
        """Per (variant, baseline) of `pairs` whose two variants ran, per protocol: the difference of the means, the
        seed-to-seed spread and whether the difference exceeds it, as a table (`labels`: name → label). Returns the
        comparisons as dicts (for a results file)."""
        ran = {run.name for run in self.runs}
        comparisons = []
        print("| comparison | protocol | difference of means | seed-to-seed spread | exceeds the spread? |")
        print("| --- | --- | --- | --- | --- |")
        for variant, baseline in pairs:
            for protocol in self.protocols if {variant, baseline} <= ran else ():
                result = self.compare(variant, baseline, protocol)
                verdict = "**yes**" if result.exceeds else "no"
                label = f"{labels[variant]} vs {labels[baseline]}"
                print(f"| {label} | {protocol} | {result.difference:+.4f} | {result.spread:.4f} | {verdict} |")
                comparisons.append({**vars(result), "exceeds": result.exceeds})
        return comparisons

    def print_wall_times(self) -> None:
        print("wall time per step (training + its evaluation + saving):")
        for label, seconds in self.wall.items():
            print(f"  {label}: {seconds:.1f} s")
        print(
            f"  total: {self.total_wall_s:.1f} s (load average at start {self.load_at_start[0]:.2f}, at end "
            f"{os.getloadavg()[0]:.2f})"
        )

    def print_results(self, names: Sequence[str]) -> None:
        """`RESULT <protocol>_top1_<name>=…` per variant (the mean over seeds) and, with several seeds, per run
        (`…_seed<s>`)."""
        for name in names:
            for protocol in self.protocols:
                print(f"RESULT {protocol}_top1_{name}={self.mean(name, protocol):.4f}")
                runs = [run for run in self.runs if run.name == name]
                for run in runs if len(runs) > 1 else ():
                    print(f"RESULT {protocol}_top1_{name}_seed{run.seed}={run.top1[protocol]:.4f}")

    def summary(self) -> dict[str, Any]:
        """Everything recorded, for a results file."""
        return {
            "runs": [{**vars(run), "folder": str(run.folder)} for run in self.runs],
            "wall_s": self.wall,
            "total_wall_s": self.total_wall_s,
            "load_average": {"start": self.load_at_start, "end": os.getloadavg()},
        }


__all__ = ["Comparison", "DemoRuns", "TrainedRun", "budget_flags", "precision_flags", "spread"]
