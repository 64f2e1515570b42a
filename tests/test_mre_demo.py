"""scripts/run_mre_demo.py: its Fig. 4 drawing (both backends), the tolerance of "student ≈ teacher", and the
script end to end at 1 step per run on 16 labelled images (two seeds: the means, the per-seed figures and the
verdicts its comparisons print)."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest
from demo_scripts import expected_verdict, load_script, per_seed, result_lines
from PIL import Image


@pytest.fixture(scope="module")
def demo_script():
    return load_script("run_mre_demo")


@pytest.mark.parametrize("backend", ["pil", "matplotlib"])
def test_relation_bias_figure(demo_script, tmp_path, backend):
    if backend == "matplotlib":
        pytest.importorskip("matplotlib")
    rng = np.random.default_rng(0)
    u_pos, u_neg = rng.normal(0.3, 0.2, (4, 3)), rng.normal(-0.2, 0.2, (4, 3))
    path = tmp_path / "relation_bias.png"
    assert demo_script.plot_relation_bias(u_pos, u_neg, path, backend) == backend
    with Image.open(path) as image:
        assert image.width > 300 and image.height > 150
        assert len(set(image.convert("RGB").getdata())) > 4  # more than a blank canvas


def test_student_tolerance_is_two_standard_errors(demo_script):
    assert demo_script.tolerance(0.3, 480) == pytest.approx(2 * np.sqrt(0.3 * 0.7 / 480))
    assert demo_script.tolerance(0.0, 480) > 0


def test_mre_demo_with_a_tiny_budget(demo_script, tmp_path, capsys):
    tiny = ["--steps", "1", "--dino_steps", "1", "--distill_steps", "1", "--lit_steps", "1", "--batch_size", "4",
            "--dino_batch_size", "4", "--lit_batch_size", "4", "--demo_num_train", "256", "--max_eval_samples", "16",
            "--dtype", "fp32", "--plot_backend", "pil"]  # fmt: skip
    demo_script.main(["--output_dir", str(tmp_path), *tiny])
    printed = capsys.readouterr().out
    printed_results, recorded = result_lines(printed), json.loads((tmp_path / "results.json").read_text())
    for name in demo_script.LABELS:  # every variant: two seeds, their mean, one RESULT line each
        for protocol in ("knn", "linear"):
            values = per_seed(recorded, name, protocol)
            assert len(values) == 2
            for seed, value in zip((0, 1), values):
                assert printed_results[f"{protocol}_top1_{name}_seed{seed}"] == pytest.approx(value, abs=1e-4)
            assert printed_results[f"{protocol}_top1_{name}"] == pytest.approx(statistics.mean(values), abs=1e-4)
    for variant, baseline, what, evidence in demo_script.CLAIMS:
        for protocol in ("knn", "linear"):
            verdict = expected_verdict(per_seed(recorded, variant, protocol), per_seed(recorded, baseline, protocol))
            assert f"paper's direction: {what} ({protocol}) [{evidence}]: {verdict}" in printed
    bias = recorded["relation_bias"]
    u_pos, u_neg = ([bias[seed][key] for seed in ("0", "1")] for key in ("mean_upos", "mean_uneg"))
    assert printed_results["mean_uneg"] == pytest.approx(statistics.mean(u_neg), abs=1e-5)
    assert printed_results["mean_uneg_seed1"] == pytest.approx(u_neg[1], abs=1e-5)
    assert f"u_pos > u_neg (mean over layers and heads, per seed) [Fig. 4]: {expected_verdict(u_pos, u_neg)}" in printed
    assert f"u_neg < 0 (mean over layers and heads, per seed) [Fig. 4]: {expected_verdict(u_neg, [0.0], -1)}" in printed
    assert (tmp_path / "relation_bias-seed1.png").exists() and "lit_zero_shot_top1" in printed_results
