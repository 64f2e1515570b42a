"""scripts/run_mre_demo.py: its Fig. 4 drawing (both backends) and the tolerance of "student ≈ teacher".

The script end to end is not run here: even with 2-step runs it trains six models and evaluates each on the demo's
1440 labelled images (about 130 s on 2 CPU cores), over the 60 s a smoke test may take. Its pieces are tested
elsewhere: the methods (test_methods.py), segment features (test_evaluation_segments.py).
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def demo_script():
    spec = importlib.util.spec_from_file_location("run_mre_demo", os.path.join(ROOT, "scripts", "run_mre_demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
