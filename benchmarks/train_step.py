#!/usr/bin/env python
"""Time one training step of a method against its peer baseline of the same size, batch and precision, in one run.

    python benchmarks/train_step.py --method a_clip       # A-CLIP vs transformers CLIPModel, ViT-B/16, batch 32
    python benchmarks/train_step.py --method attg_mae     # AttG-MAE vs transformers ViTMAEForPreTraining, ViT-B/16
    python benchmarks/train_step.py --method a_clip --preset tiny --batch_size 64 --dtype fp32

`--dtype auto` (default) uses bf16 autocast only where the hardware runs it fast. Steps are timed round-robin
after warm-up (median), FLOPs come from `torch.utils.flop_counter` (CPU attention included). Prints a table, then
`RESULT` lines last.

- a_clip: everything the trainer does per optimizer step — the EMA forward on the EMA view (CLS attention of every
  layer, BYOL targets), the attentive keep sets, the online forward on two masked views with CLIP + SimCLR + BYOL
  losses, backward, AdamW, the logit-scale clamp and the EMA update — against transformers' `CLIPModel` (full
  tokens, one view, CLIP loss). `RESULT aclip_over_clip_step_time=…` (paper: 1.16 on GPUs).
- attg_mae: the guided loss (exp(M / τ) weights on a random map) with the same weights and masks as transformers'
  `ViTMAEForPreTraining` (converted weights, the same `noise`). `RESULT attg_over_vitmae_step_time=…` and
  `RESULT attg_over_vitmae_flops=…` (target: ≤ 1.05 and within 2%).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig

from hf_masked_vl import AClipConfig, AClipModel, AttGMAEConfig, AttGMAEForPreTraining
from hf_masked_vl.data.views import enclosing_box, random_resized_crop_box
from hf_masked_vl.methods.a_clip import AClipObjective
from hf_masked_vl.precision import PRECISIONS, autocast, choose_precision
from hf_masked_vl.training.ema import EMACallback
from hf_masked_vl.training.flops import count_flops


def matching_clip(config: AClipConfig) -> CLIPModel:
    vision = config.vision_config
    vision_config = CLIPVisionConfig(
        hidden_size=vision.hidden_size,
        intermediate_size=int(vision.hidden_size * vision.mlp_ratio),
        num_hidden_layers=vision.num_hidden_layers,
        num_attention_heads=vision.num_attention_heads,
        image_size=vision.image_size,
        patch_size=vision.patch_size,
        hidden_act="gelu",
        layer_norm_eps=vision.layer_norm_eps,
    )
    clip_config = CLIPConfig(
        vision_config=vision_config.to_dict(),
        text_config=config.text_config.to_dict(),
        projection_dim=config.projection_dim,
    )
    return CLIPModel(clip_config)


def synthetic_batch(config: AClipConfig, batch_size: int, device: torch.device) -> dict:
    rng = np.random.default_rng(0)
    size = config.vision_config.image_size
    boxes = []
    for _ in range(batch_size):
        crops = [random_resized_crop_box(rng, 2 * size, 2 * size, (0.5, 1.0)) for _ in range(2)]
        boxes.append(crops + [enclosing_box(rng, crops, 2 * size, 2 * size)])
    context = config.text_config.max_position_embeddings
    input_ids = torch.randint(0, 49406, (batch_size, context))
    input_ids[:, 0], input_ids[:, -1] = 49406, 49407
    return {
        "pixel_values": torch.randn(batch_size, 2, 3, size, size, device=device),
        "ema_pixel_values": torch.randn(batch_size, 3, size, size, device=device),
        "crop_boxes": torch.tensor(boxes, dtype=torch.float32, device=device),
        "sample_seeds": torch.arange(batch_size, device=device),
        "input_ids": input_ids.to(device),
        "attention_mask": torch.ones_like(input_ids, device=device),
    }


def time_interleaved(steps_by_name: dict, steps: int, warmup: int, device: torch.device) -> dict[str, list[float]]:
    """Warm every step up, then time them round-robin so that drift on a shared machine hits all alike."""

    def timed(step) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for step in steps_by_name.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps_by_name}
    for _ in range(steps):
        for name, step in steps_by_name.items():
            times[name].append(timed(step))
    return times


def aclip_step_fn(config: AClipConfig, batch: dict, device: torch.device, precision):
    model = AClipModel(config).to(device).train()
    ema = EMACallback(momentum=0.996, model=model)
    objective = AClipObjective(config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)

    def step():
        with autocast(precision, device):
            with torch.no_grad():
                inputs = objective.prepare(batch, model, ema.ema_model)
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        objective.after_optimizer_step(model)
        ema.update(model, 0.998)

    return step


def clip_step_fn(config: AClipConfig, batch: dict, device: torch.device, precision):
    model = matching_clip(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # the Trainer's default optimizer
    pixel_values = batch["pixel_values"][:, 0]

    def step():
        with autocast(precision, device):
            loss = model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                pixel_values=pixel_values,
                return_loss=True,
            ).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def aclip_benchmark(args, device, precision) -> tuple[dict, str, list[str]]:
    preset = args.preset or "vit-b-16"
    config = AClipConfig.from_preset(preset)
    batch = synthetic_batch(config, args.batch_size, device)
    steps = {
        "CLIP (transformers CLIPModel, full tokens)": clip_step_fn(config, batch, device, precision),
        "A-CLIP attentive, CLIP loss only": aclip_step_fn(
            AClipConfig.from_preset(preset, simclr_loss_weight=0.0, byol_loss_weight=0.0), batch, device, precision
        ),
        "A-CLIP attentive + SimCLR + BYOL": aclip_step_fn(config, batch, device, precision),
    }
    return steps, preset, ["paper (microsoft/A-CLIP README, 8x A100): CLIP 1.00, A-CLIP 1.16"]


def attg_benchmark(args, device, precision) -> tuple[dict, str, list[str]]:
    preset = args.preset or "vit-b-16"
    config = AttGMAEConfig.from_preset(preset)
    attg = AttGMAEForPreTraining(config).to(device).train()
    vit_mae = attg.to_vit_mae().to(device).train()  # the same weights in transformers' layout
    size, patches = config.vision_config.image_size, config.vision_config.num_patches
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(args.batch_size, 3, size, size, generator=generator).to(device)
    noise = torch.rand(args.batch_size, patches, generator=generator).to(device)
    guidance = torch.rand(args.batch_size, patches, generator=generator).to(device)

    def step_fn(model, inputs):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type in ("cuda", "cpu"))

        def step():
            with autocast(precision, device):
                loss = model(pixel_values=pixels, noise=noise, **inputs).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    steps = {
        "MAE (transformers ViTMAEForPreTraining)": step_fn(vit_mae, {}),
        "AttG-MAE (guided loss, same weights and masks)": step_fn(attg, {"guidance": guidance}),
    }
    return steps, preset, []


BENCHMARKS = {"a_clip": aclip_benchmark, "attg_mae": attg_benchmark}
RESULT_KEYS = {"a_clip": ("aclip", "clip"), "attg_mae": ("attg", "vitmae")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="a_clip", choices=list(BENCHMARKS))
    parser.add_argument("--preset", default=None, help="size preset (default vit-b-16)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto", choices=PRECISIONS, help="auto: bf16 only where it is fast")
    args = parser.parse_args()
    device = torch.device(args.device)
    precision = choose_precision(args.dtype, device)
    torch.manual_seed(0)

    steps, preset, notes = BENCHMARKS[args.method](args, device, precision)
    flops = {name: count_flops(step) for name, step in steps.items()}
    times = time_interleaved(steps, args.steps, args.warmup, device)
    rows = [(name, statistics.median(values)) for name, values in times.items()]
    base_name, base_time = rows[0]
    print(f"device={device} precision={precision} preset={preset} batch={args.batch_size} timed steps={args.steps}")
    print(f"| {'step':<48} | {'ms / step':>10} | {'img / s':>8} | {'GFLOP / step':>12} | {'time vs base':>12} |")
    print(f"| {'-' * 48} | {'-' * 10} | {'-' * 8} | {'-' * 12} | {'-' * 12} |")
    for name, seconds in rows:
        print(
            f"| {name:<48} | {seconds * 1e3:>10.1f} | {args.batch_size / seconds:>8.1f} | "
            f"{flops[name] / 1e9:>12.1f} | {seconds / base_time:>12.3f} |"
        )
    for note in notes:
        print(note)
    ours, peer = RESULT_KEYS[args.method]
    name, seconds = rows[-1]
    print(f"RESULT {peer}_step_ms={base_time * 1e3:.1f}")
    print(f"RESULT {ours}_step_ms={seconds * 1e3:.1f}")
    print(f"RESULT {ours}_over_{peer}_flops={flops[name] / flops[base_name]:.4f}")
    print(f"RESULT {ours}_over_{peer}_step_time={seconds / base_time:.3f}")


if __name__ == "__main__":
    main()
