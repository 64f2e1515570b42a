"""The demo scripts' shared comparison (`Comparison.verdict`) and `scripts/run_attg_demo.py`,
`scripts/run_uta_demo.py` end to end at 1 step per run on 16 labelled images: two seeds, the means, the per-seed
figures, and the verdicts derived from the recorded per-seed numbers. (`run_mre_demo.py`: test_mre_demo.py;
`run_composition_demo.py`: test_composition.py.)"""

from __future__ import annotations

import json
import statistics

import pytest
from demo_scripts import expected_verdict, load_script, per_seed, result_lines

from hf_masked_vl.training.demo_runs import Comparison

TINY = ["--demo_num_train", "256", "--max_eval_samples", "16", "--dtype", "fp32"]


@pytest.mark.parametrize(
    ("variant", "baseline", "sign", "verdict"),
    [
        ([0.30, 0.32], [0.20, 0.21], 1, "holds beyond the spread"),
        ([0.30, 0.32], [0.20, 0.21], -1, "does not hold (the opposite exceeds the spread)"),
        ([0.30, 0.20], [0.24, 0.25], 1, "within the spread (the means agree)"),
        ([0.20, 0.21], [0.19, 0.30], 1, "within the spread (the means disagree)"),
        ([-0.10, -0.06], [0.0], -1, "holds beyond the spread"),  # u_neg < 0
    ],
)
def test_comparison_verdicts(variant, baseline, sign, verdict):
    comparison = Comparison.of("variant", "baseline", "knn", variant, baseline)
    assert comparison.difference == pytest.approx(statistics.mean(variant) - statistics.mean(baseline))
    assert comparison.spread == pytest.approx(max(max(variant) - min(variant), max(baseline) - min(baseline)))
    assert comparison.verdict(sign) == verdict
    assert verdict.startswith(expected_verdict(variant, baseline, sign))


def test_attg_demo_with_a_tiny_budget(tmp_path, capsys):
    script = load_script("run_attg_demo")
    tiny = ["--steps", "1", "--batch_size", "4", "--backbone_steps", "1", "--lit_steps", "1", "--iou_samples", "16"]
    script.main(["--output_dir", str(tmp_path), *tiny, *TINY])
    printed = capsys.readouterr().out
    printed_results, recorded = result_lines(printed), json.loads((tmp_path / "results.json").read_text())
    for name in script.DEFAULT_VARIANTS:
        for protocol in ("knn", "linear"):
            values = per_seed(recorded, name, protocol)
            assert len(values) == 2
            assert printed_results[f"{protocol}_top1_{name}"] == pytest.approx(statistics.mean(values), abs=1e-4)
            assert printed_results[f"{protocol}_top1_{name}_seed1"] == pytest.approx(values[1], abs=1e-4)
    for variant, baseline, what in script.CLAIMS[:2]:
        for protocol in ("knn", "linear"):
            verdict = expected_verdict(per_seed(recorded, variant, protocol), per_seed(recorded, baseline, protocol))
            assert f"paper's direction: {what} ({protocol}): {verdict}" in printed
    assert "| AttG-MAE, TokenCut maps vs MAE | knn |" in printed and "tokencut_iou" in printed_results


def test_uta_demo_with_a_tiny_budget(tmp_path, capsys):
    script = load_script("run_uta_demo")
    tiny = ["--steps", "1", "--batch_size", "4", "--teacher_steps", "1"]
    script.main(["--output_dir", str(tmp_path), *tiny, *TINY])
    printed = capsys.readouterr().out
    printed_results = result_lines(printed)
    students = [printed_results[f"uta_zero_shot_top1_seed{seed}"] for seed in (0, 1)]
    assert printed_results["uta_zero_shot_top1"] == pytest.approx(statistics.mean(students), abs=2e-4)
    assert printed_results["uta_zero_shot_top1_spread"] == pytest.approx(max(students) - min(students), abs=2e-4)
    teacher = printed_results["teacher_zero_shot_top1"]
    ratios = [printed_results[f"uta_over_teacher_seed{seed}"] for seed in (0, 1)]
    if teacher > 0:
        assert ratios == pytest.approx([student / teacher for student in students], abs=2e-3)
    assert printed_results["uta_over_teacher"] == pytest.approx(statistics.mean(ratios), abs=2e-4)
    assert "uta_knn_top1_seed1" in printed_results
