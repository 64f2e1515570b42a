"""Helpers of the demo scripts' tests: load a script as a module, read its `RESULT` lines, and the verdict a
comparison of per-seed figures should print (written out here, independent of `Comparison.verdict`)."""

from __future__ import annotations

import importlib.util
import statistics
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

SCRIPTS = Path(__file__).parent.parent / "scripts"


def load_script(name: str) -> ModuleType:
    """`scripts/<name>.py` as a module (its `main(argv)` runs the demo in this process)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def result_lines(printed: str) -> dict[str, float]:
    """Every numeric `RESULT key=value` line of `printed` (the script's own, printed last, win over its runs'):
    key → value."""
    lines = [line.removeprefix("RESULT ").split("=", 1) for line in printed.splitlines() if line.startswith("RESULT ")]
    return {key: float(value) for key, value in lines if value.strip().lstrip("+-").replace(".", "", 1).isdigit()}


def per_seed(results: dict, name: str, protocol: str) -> list[float]:
    """The top-1 per seed of variant `name` recorded in a demo's results.json."""
    return [run["top1"][protocol] for run in results["runs"] if run["name"] == name]


def expected_verdict(variant: Sequence[float], baseline: Sequence[float], sign: int = 1) -> str:
    """The start of the verdict on "variant > baseline" (sign 1) from per-seed figures: within the spread when the
    difference of the means is at most the larger largest-minus-smallest, else whether it has the expected sign."""
    difference = statistics.mean(variant) - statistics.mean(baseline)
    spread = max(max(values) - min(values) for values in (variant, baseline))
    if abs(difference) <= spread:
        return "within the spread"
    return "holds beyond the spread" if difference * sign > 0 else "does not hold"
