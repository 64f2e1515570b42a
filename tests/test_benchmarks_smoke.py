"""Smoke test of `benchmarks/data_pipeline.py` at its smallest settings: every method's views and their torchvision peer
run on parquet and webdataset sources, and the script ends with a ratio per method. No timing is asserted."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pyarrow
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "data_pipeline.py"


@pytest.fixture
def data_pipeline():
    """The benchmark script as a module; the thread counts it sets for itself are restored afterwards."""
    threads, arrow_threads = torch.get_num_threads(), pyarrow.cpu_count()
    spec = importlib.util.spec_from_file_location("data_pipeline", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]
    torch.set_num_threads(threads)
    pyarrow.set_cpu_count(arrow_threads)


def test_data_pipeline_prints_a_ratio_per_method(data_pipeline, tmp_path, capsys):
    data_pipeline.main(
        ["--num_images", "4", "--image_size", "40", "30", "--num_shards", "2", "--batch_size", "2", "--repeats", "1"]
        + ["--preset", "tiny", "--cache_dir", str(tmp_path)]
    )
    lines = capsys.readouterr().out.strip().splitlines()
    results = dict(
        re.fullmatch(r"RESULT (\w+)=([0-9.]+)", line).groups() for line in lines if line.startswith("RESULT")
    )
    assert lines[-1].startswith("RESULT")
    for method in data_pipeline.METHODS:
        assert float(results[f"{method}_over_torchvision_images_per_s"]) > 0
        assert float(results[f"{method}_images_per_s"]) > 0
    table = [line for line in lines if line.startswith("| parquet") or line.startswith("| webdataset")]
    assert len(table) >= 2 * len(data_pipeline.METHODS)
    assert any(line.startswith("| parquet | a_clip | 3 |") for line in table)  # A-CLIP's 3 views per image
