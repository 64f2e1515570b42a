#!/usr/bin/env python
"""The data-wait share of training windows that hold an epoch boundary: the trainer's DataLoader with its worker
started again at every epoch (as before) against one persistent worker whose stream rolls into the next epoch
(`ImageTextStream.roll_epochs`), in the same run, interleaved.

    python benchmarks/epoch_boundaries.py                        # 640 demo records, batch 64, 0.5 s steps
    python benchmarks/epoch_boundaries.py --step_seconds 0.2 --repeats 3

The input is the main job's: the embedded demo's parquet shards (`--num_train` records), A-CLIP's views at 48 px and
its collator, a shuffle buffer of 1000, one DataLoader worker. A step is `--step_seconds` of matmuls in the main
process (it competes with the worker for the cores, as a real step does). The data-wait share of a window is measured
as the trainer logs it (`data_wait_share`: time spent fetching batches over the window's wall time), every
`--window` steps. Prints a table per mode, then `RESULT` lines last: the worst and the median share of the windows
that hold a boundary, per mode, and their ratio; then the MFU of the stand-in steps (256² fp32 matmuls) over each
run's wall time against a matmul probe of this machine's fp32 peak (`RESULT mfu_<mode>=…`, `RESULT mfu=…` rolling).
The steps share the cores with the DataLoader worker, so that MFU reads contention as much as stalls (and small
matmuls run below the probe's 2048² peak); the data-wait share is the figure for stalls.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import torch

from hf_masked_vl.data.demo import ensure_demo_dataset
from hf_masked_vl.data.streaming import ImageTextCollator, ImageTextStream, load_stream
from hf_masked_vl.data.views import AClipViews
from hf_masked_vl.training.flops import peak_flops
from hf_masked_vl.training.trainer import _EpochDataLoader

MODES = ("restarted", "rolling")


def busy_step(seconds: float, operand: torch.Tensor) -> int:
    """Compute (matmuls) in the main process for `seconds`, as a training step does; returns the FLOPs done."""
    end, products = time.perf_counter() + seconds, 0
    while time.perf_counter() < end:
        operand @ operand
        products += 1
    return products * 2 * operand.shape[0] ** 3


def window_shares(mode: str, files: list[str], args: argparse.Namespace) -> tuple[list[tuple[int, float, bool]], float]:
    """(last step, data-wait share, holds a boundary) of each window of a run of `args.steps` steps, and the FLOP/s
    the steps achieved over the run's wall time (what the input side leaves the model)."""
    stream = ImageTextStream(load_stream("parquet", files, record_locations=True), AClipViews(48), seed=0)
    rolling = mode == "rolling"
    if rolling:
        stream.roll_epochs(args.batch_size * 2)
    loader = _EpochDataLoader(
        stream, args.batch_size, num_workers=1, collate_fn=ImageTextCollator(), persistent_workers=rolling
    )
    operand = torch.randn(256, 256)
    windows, step, epoch, flops = [], 0, 0, 0
    wait, start, boundary = 0.0, time.perf_counter(), False
    run_start = start
    while step < args.steps:
        loader.set_epoch(epoch)
        batches, fetch_start = iter(loader), time.perf_counter()
        boundary = boundary or epoch > 0
        for _ in batches:
            wait += time.perf_counter() - fetch_start
            flops += busy_step(args.step_seconds, operand)
            step += 1
            if step % args.window == 0:
                now = time.perf_counter()
                windows.append((step, wait / (now - start), boundary))
                wait, start, boundary = 0.0, now, False
            if step == args.steps:
                break
            fetch_start = time.perf_counter()
        epoch += 1
    return windows, flops / (time.perf_counter() - run_start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_train", type=int, default=640, help="demo records per epoch")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--step_seconds", type=float, default=0.5, help="compute per step in the main process")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--window", type=int, default=5, help="steps per logged window")
    parser.add_argument("--repeats", type=int, default=2, help="runs per mode, interleaved")
    args = parser.parse_args()
    epoch_steps = math.ceil(args.num_train / args.batch_size)  # the last batch of an epoch may be short
    if args.steps // args.window * args.window <= epoch_steps:
        parser.error(
            f"--steps {args.steps} with --window {args.window}: no logged window ends after the first epoch "
            f"({epoch_steps} steps), so none holds a boundary"
        )
    demo = ensure_demo_dataset(os.environ.get("HF_MASKED_VL_CACHE"), num_train=args.num_train)
    boundary_shares: dict[str, list[float]] = {mode: [] for mode in MODES}
    achieved: dict[str, list[float]] = {mode: [] for mode in MODES}
    print("| mode | repeat | data-wait share per window (* holds an epoch boundary) |")
    print("| --- | --- | --- |")
    for repeat in range(args.repeats):
        for mode in MODES:
            windows, flops_per_s = window_shares(mode, demo.train_files, args)
            achieved[mode].append(flops_per_s)
            boundary_shares[mode] += [share for _, share, boundary in windows if boundary]
            cells = " ".join(f"{share:.3f}{'*' if boundary else ''}" for _, share, boundary in windows)
            print(f"| {mode} | {repeat} | {cells} |")
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f}")
    peak = peak_flops("cpu")
    mfu = {mode: peak.mfu(statistics.median(achieved[mode])) for mode in MODES}
    print(f"MFU of the stand-in steps (256² matmuls sharing the cores with the worker) over each run's wall time, "
          f"against {peak}:")  # fmt: skip
    print(", ".join(f"{mode} {share:.1%}" for mode, share in mfu.items()) + " (the model's own MFU: train_step.py)")
    for mode in MODES:
        print(f"RESULT {mode}_boundary_wait_share_max={max(boundary_shares[mode]):.3f}")
        print(f"RESULT {mode}_boundary_wait_share_median={statistics.median(boundary_shares[mode]):.3f}")
    ratio = statistics.median(boundary_shares["rolling"]) / statistics.median(boundary_shares["restarted"])
    print(f"RESULT rolling_over_restarted_boundary_wait_share={ratio:.3f}")
    for mode in MODES:
        print(f"RESULT mfu_{mode}={mfu[mode]:.4f}")
    print(f"RESULT mfu={mfu['rolling']:.4f}")


if __name__ == "__main__":
    main()
