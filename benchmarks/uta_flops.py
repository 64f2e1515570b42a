#!/usr/bin/env python
"""Training FLOPs and step time of a UTA student step against the mask ratio (UTA paper, Table 8).

    python benchmarks/uta_flops.py                       # B/14 student at 224 px, batch 1 for FLOPs, 4 for time

A student step is forward + backward of the EVA-02 B/14 student on CLS + kept patches with the cosine loss to
given teacher tokens (the frozen teacher's own forward is excluded, as in the paper's comparison with full-token
feature distillation at ratio 0). FLOPs come from `torch.utils.flop_counter.FlopCounterMode`; step times are
medians in the precision `--dtype` picks (auto: bf16 only where the hardware runs it fast). Prints a table and
`RESULT flops_ratio_r04=…`, `…_r05`, `…_r07` (paper: 0.6, 0.5, 0.3). MFU: each ratio's FLOP/s over the peak of
that precision measured in the same run (`training.flops.peak_flops`: a matmul probe on the CPU, the card's dense
bf16 peak on CUDA), as `RESULT mfu_r00=…` … and `RESULT mfu=…` (ratio 0.5, the paper's default).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch

from hf_masked_vl import UTAConfig
from hf_masked_vl.masking import mask_rng, mask_to_keep_indices, num_kept, reversed_block_mask
from hf_masked_vl.models.losses import token_alignment_loss
from hf_masked_vl.models.modeling_masked_vit import MaskedViTModel, gather_tokens
from hf_masked_vl.precision import PRECISIONS, autocast, choose_precision
from hf_masked_vl.training.flops import count_flops, peak_flops

PAPER = {0.0: 1.0, 0.4: 0.6, 0.5: 0.5, 0.7: 0.3}
HEADLINE_RATIO = 0.5  # UTA's default mask ratio: the `RESULT mfu=` line


def ratio_key(ratio: float) -> str:
    return f"r{int(round(ratio * 10)):02d}"


def keep_indices(grid: int, ratio: float, batch: int) -> torch.Tensor | None:
    if ratio == 0:
        return None
    rngs = [mask_rng(0, i) for i in range(batch)]
    masks = torch.stack([torch.from_numpy(reversed_block_mask(rng, (grid, grid), ratio)) for rng in rngs])
    return mask_to_keep_indices(masks, num_kept(grid * grid, ratio), rngs)


def student_step(student, head, pixels, targets, keep):
    tokens = head(student(pixels, keep_indices=keep).last_hidden_state)
    aligned = targets if keep is None else torch.cat((targets[:, :1], gather_tokens(targets[:, 1:], keep)), dim=1)
    loss = token_alignment_loss(tokens, aligned)
    loss.backward()
    return loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="b-14")
    parser.add_argument("--batch_size", type=int, default=4, help="batch of the timed steps")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto", choices=PRECISIONS, help="auto: bf16 only where it is fast")
    args = parser.parse_args()
    device = torch.device(args.device)
    precision = choose_precision(args.dtype, device)
    torch.manual_seed(0)
    config = UTAConfig.from_preset(args.preset)
    vision = config.vision_config
    student = MaskedViTModel(vision).to(device).train()
    head = torch.nn.Linear(vision.hidden_size, config.projection_dim).to(device)
    grid, size = vision.grid_size, vision.image_size

    rows = []
    for ratio in PAPER:
        pixels = torch.randn(1, 3, size, size, device=device)
        targets = torch.randn(1, 1 + grid * grid, config.projection_dim, device=device)
        keep = keep_indices(grid, ratio, 1)
        keep = keep.to(device) if keep is not None else None
        flops = count_flops(functools.partial(student_step, student, head, pixels, targets, keep))

        pixels = torch.randn(args.batch_size, 3, size, size, device=device)
        targets = torch.randn(args.batch_size, 1 + grid * grid, config.projection_dim, device=device)
        keep = keep_indices(grid, ratio, args.batch_size)
        keep = keep.to(device) if keep is not None else None
        times = []
        for step in range(args.steps + 2):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            with autocast(precision, device):
                student_step(student, head, pixels, targets, keep)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step >= 2:  # two warm-up steps
                times.append(time.perf_counter() - start)
            student.zero_grad(set_to_none=True)
        kept = grid * grid if keep is None else keep.shape[1]
        rows.append((ratio, kept, flops, statistics.median(times)))

    peak = peak_flops(device, precision.dtype)  # right after the steps, under the same load
    print_results(args, vision, grid, size, device, precision, rows, peak)


def print_results(args, vision, grid, size, device, precision, rows, peak) -> None:
    base_flops, base_time = rows[0][2], rows[0][3]
    print(
        f"UTA student {args.preset}: {vision.num_hidden_layers} layers, width {vision.hidden_size}, "
        f"{grid}x{grid} patches at {size} px; device={device}; precision {precision}; timed batch {args.batch_size}"
    )
    print(
        f"| {'mask ratio':>10} | {'kept':>4} | {'GFLOPs / img':>12} | {'FLOPs vs 0':>10} | {'paper':>5} |"
        f" {'ms / step':>9} | {'time vs 0':>9} | {'MFU':>6} |"
    )
    print(f"| {'-' * 10} | {'-' * 4} | {'-' * 12} | {'-' * 10} | {'-' * 5} | {'-' * 9} | {'-' * 9} | {'-' * 6} |")
    mfu = {ratio: peak.mfu(flops * args.batch_size / seconds) for ratio, _, flops, seconds in rows}  # FLOPs: batch 1
    for ratio, kept, flops, seconds in rows:
        print(
            f"| {ratio:>10.1f} | {kept:>4} | {flops / 1e9:>12.1f} | {flops / base_flops:>10.3f} |"
            f" {PAPER[ratio]:>5.1f} | {seconds * 1e3:>9.1f} | {seconds / base_time:>9.3f} | {mfu[ratio]:>6.1%} |"
        )
    print(f"MFU: achieved FLOP/s over the peak of this precision here, {peak}")
    for ratio, _, _, seconds in rows[1:]:
        print(f"RESULT step_time_ratio_{ratio_key(ratio)}={seconds / base_time:.3f}")
    for ratio, _, flops, _ in rows[1:]:
        print(f"RESULT flops_ratio_{ratio_key(ratio)}={flops / base_flops:.3f}")
    for ratio, share in mfu.items():
        print(f"RESULT mfu_{ratio_key(ratio)}={share:.4f}")
    print(f"RESULT mfu={mfu[HEADLINE_RATIO]:.4f}")


if __name__ == "__main__":
    main()
