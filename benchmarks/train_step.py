#!/usr/bin/env python
"""Time one training step of a method against its peer baseline of the same size, batch and precision, in one run.

    python benchmarks/train_step.py --method a_clip       # A-CLIP vs transformers CLIPModel, ViT-B/16, batch 32
    python benchmarks/train_step.py --method attg_mae     # AttG-MAE vs transformers ViTMAEForPreTraining, ViT-B/16
    python benchmarks/train_step.py --method a_clip --preset tiny --batch_size 64 --dtype fp32
    python benchmarks/train_step.py --method mre_mae      # MRE-MAE with vs without segments, ViT-S/16, batch 32
    python benchmarks/train_step.py --method dino         # a DINO step, ViT-S/16, 2 global + 8 local crops

`--dtype auto` (default) uses bf16 autocast only where the hardware runs it fast. Steps are timed round-robin
after warm-up (median), FLOPs come from `torch.utils.flop_counter` (CPU attention included), and the peak memory of
one more step of each, alone: on CUDA `torch.cuda.max_memory_allocated` over the step, minus what the other steps'
models hold; on the CPU the tensors the step owns before it starts (weights, optimizer state, EMA, inputs) plus the
peak of the allocations made during the step (`torch.profiler`, `profile_memory=True`). Prints a table, then
`RESULT` lines last.

MFU: each step's FLOP/s over the peak of its precision, measured in the same run (`training.flops.peak_flops`: on
the CPU a square matmul timed in fp32 or bf16 after the steps; on CUDA the card's dense bf16 peak), one
`RESULT mfu_<step>=…` per step and `RESULT mfu=…` for the method's own step. On CUDA the steps run with bf16 autocast
(`--dtype auto`), fused AdamW, and attention restricted to SDPA's flash, memory-efficient and cuDNN kernels (a step
that would fall back to the math kernel fails, naming it; `--sdpa_any_kernel` lifts that).

`--compile` also builds every step with its model under `torch.compile` (as `--torch_compile` does in training: the
model's forward and backward; the EMA forward and update stay eager) and times both in the same run: a second table
gives compile time, graph breaks, compiled / eager step time and both MFUs, and for the method's own step
`RESULT compiled_over_eager_step_time=…` and `RESULT mfu_compiled=…`.

- a_clip: everything the trainer does per optimizer step — the EMA forward on the EMA view (CLS attention of every
  layer, BYOL targets), the attentive keep sets, the online forward on two masked views with CLIP + SimCLR + BYOL
  losses, backward, AdamW, the logit-scale clamp and the EMA update — against transformers' `CLIPModel` (full
  tokens, one view, CLIP loss). `RESULT aclip_over_clip_step_time=…` (paper: 1.16 on GPUs).
- attg_mae: the guided loss (exp(M / τ) weights on a random map) with the same weights and masks as transformers'
  `ViTMAEForPreTraining` (converted weights, the same `noise`). `RESULT attg_over_vitmae_step_time=…` and
  `RESULT attg_over_vitmae_flops=…` (target: ≤ 1.05 and within 2%).
- mre_mae: the MRE-MAE training step (ViT-S/16 encoder with the mask-relation bias, MAE's decoder, 75% masks) with
  token labels (5 random rectangles per image at the token grid, labels 1–5, later ones on top, 0 elsewhere) against
  the same model and masks without labels (a plain ViT), plus the encoder alone (forward + backward) both ways.
  `RESULT bias_step_time_ratio=…` (target ≤ 1.10) and `RESULT bias_peak_memory_ratio=…` (target ≤ 1.2).
- dino: everything the trainer does per DINO step — the EMA teacher on the 2 global crops, the student on the 2 global
  and the local crops (`vit-s-16`: 8 of 96 px), DINO's head and centred loss, backward, gradient clipping, AdamW and
  the EMA update. `RESULT dino_images_per_s=…` and `RESULT dino_gflops_per_image=…` (an image = its 2 + L crops).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig

from hf_masked_vl import AClipConfig, AClipModel, AttGMAEConfig, AttGMAEForPreTraining
from hf_masked_vl.data.views import enclosing_box, random_resized_crop_box
from hf_masked_vl.methods.a_clip import AClipObjective
from hf_masked_vl.methods.mre import DINOObjective
from hf_masked_vl.models import MREViTConfig, MREViTForDINO, MREViTForMAE
from hf_masked_vl.precision import PRECISIONS, autocast, choose_precision
from hf_masked_vl.training.compile_stats import CompileStats
from hf_masked_vl.training.ema import EMACallback
from hf_masked_vl.training.flops import PeakFlops, count_flops, peak_flops


@dataclass
class Suite:
    """What a benchmark times: `steps` (name → step function; the first is the base of the ratios), the preset, notes
    printed under the table, and per step what it owns (modules, optimizers, tensors) for its resting memory."""

    steps: dict[str, Callable[[], None]]
    preset: str
    notes: list[str] = field(default_factory=list)
    owned: dict[str, list] = field(default_factory=dict)
    images_per_step: int | None = None  # default: --batch_size
    keys: list[str] = field(default_factory=list)  # per step, in order: its name in `RESULT mfu_<key>=…`
    headline: str = ""  # the key of the method's own step (`RESULT mfu=…`)


def forward_module(model: Callable, args) -> Callable:
    """What a step calls: `model` (a module or a method), or on `--compile`'s compiled pass (`args.compiled`)
    `torch.compile(model)`, as the Trainer's `--torch_compile` wraps the model (parameters, EMA and optimizer stay on
    the module itself)."""
    if not getattr(args, "compiled", False):
        return model
    return torch.compile(model, backend=args.compile_backend, mode=args.compile_mode)


def _tensors(thing) -> list[torch.Tensor]:
    if isinstance(thing, torch.Tensor):
        return [thing]
    if isinstance(thing, torch.nn.Module):
        return [t for t in (*thing.parameters(), *thing.buffers())] + [
            p.grad for p in thing.parameters() if p.grad is not None
        ]
    if isinstance(thing, torch.optim.Optimizer):
        return [v for state in thing.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
    if isinstance(thing, dict):
        return [t for value in thing.values() for t in _tensors(value)]
    if isinstance(thing, (list, tuple)):
        return [t for value in thing for t in _tensors(value)]
    return []


def resting_bytes(owned: list) -> int:
    """Bytes of the distinct storages of every tensor in `owned` (modules: parameters, buffers, gradients;
    optimizers: their state; dicts / lists of tensors)."""
    storages = {}
    for tensor in _tensors(owned):
        storage = tensor.untyped_storage()
        storages[(storage.device, storage.data_ptr())] = storage.nbytes()
    return sum(storages.values())


def step_peak_bytes(step: Callable[[], None], owned: list, device: torch.device) -> int:
    """Peak tensor memory of one step: what the step owns before it starts plus the peak of what it allocates."""
    resting = resting_bytes(owned)
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return resting + torch.cuda.max_memory_allocated() - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        step()
    live = peak = 0
    for _, allocated in sorted((event.time_range.start, event.self_cpu_memory_usage) for event in profiler.events()):
        live += allocated
        peak = max(peak, live)
    return resting + peak


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


def timed(step: Callable[[], None], device: torch.device) -> float:
    """Seconds of one call of `step` (CUDA synchronised before and after)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def time_interleaved(steps_by_name: dict, steps: int, warmup: int, device: torch.device) -> dict[str, list[float]]:
    """Warm every step up, then time them round-robin so that drift on a shared machine hits all alike."""
    for step in steps_by_name.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps_by_name}
    for _ in range(steps):
        for name, step in steps_by_name.items():
            times[name].append(timed(step, device))
    return times


def aclip_step_fn(config: AClipConfig, batch: dict, device: torch.device, precision, args):
    model = AClipModel(config).to(device).train()
    ema = EMACallback(momentum=0.996, model=model)
    objective = AClipObjective(config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    forward = forward_module(model, args)

    def step():
        with autocast(precision, device):
            with torch.no_grad():
                inputs = objective.prepare(batch, forward, ema.ema_model)
            loss = forward(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        objective.after_optimizer_step(model)
        ema.update(model, 0.998)

    step.owned = [model, ema.ema_model, optimizer, batch]
    return step


def clip_step_fn(config: AClipConfig, batch: dict, device: torch.device, precision, args):
    model = matching_clip(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # the Trainer's default optimizer
    pixel_values = batch["pixel_values"][:, 0]
    forward = forward_module(model, args)

    def step():
        with autocast(precision, device):
            loss = forward(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                pixel_values=pixel_values,
                return_loss=True,
            ).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step.owned = [model, optimizer, batch["input_ids"], batch["attention_mask"], pixel_values]
    return step


def aclip_benchmark(args, device, precision) -> Suite:
    preset = args.preset or "vit-b-16"
    config = AClipConfig.from_preset(preset)
    batch = synthetic_batch(config, args.batch_size, device)
    steps = {
        "CLIP (transformers CLIPModel, full tokens)": clip_step_fn(config, batch, device, precision, args),
        "A-CLIP attentive, CLIP loss only": aclip_step_fn(
            AClipConfig.from_preset(preset, simclr_loss_weight=0.0, byol_loss_weight=0.0),
            batch,
            device,
            precision,
            args,
        ),  # fmt: skip
        "A-CLIP attentive + SimCLR + BYOL": aclip_step_fn(config, batch, device, precision, args),
    }
    notes = ["paper (microsoft/A-CLIP README, 8x A100): CLIP 1.00, A-CLIP 1.16"]
    owned = {name: step.owned for name, step in steps.items()}
    return Suite(steps, preset, notes, owned, keys=["clip", "aclip_clip_loss_only", "aclip"], headline="aclip")


def attg_benchmark(args, device, precision) -> Suite:
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
        forward = forward_module(model, args)

        def step():
            with autocast(precision, device):
                loss = forward(pixel_values=pixels, noise=noise, **inputs).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        step.owned = [model, optimizer, pixels, noise, inputs]
        return step

    steps = {
        "MAE (transformers ViTMAEForPreTraining)": step_fn(vit_mae, {}),
        "AttG-MAE (guided loss, same weights and masks)": step_fn(attg, {"guidance": guidance}),
    }
    owned = {name: step.owned for name, step in steps.items()}
    return Suite(steps, preset, [], owned, keys=["vitmae", "attg"], headline="attg")


def rectangle_labels(batch_size: int, grid: int, num_rectangles: int = 5, seed: int = 0) -> torch.Tensor:
    """(B, grid²) token labels: per image `num_rectangles` random rectangles (sides 2 … grid/2 tokens) labelled
    1, 2, … in drawing order (later ones on top), 0 where none lies (SAM's top-5 masks at the token grid)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((batch_size, grid, grid), dtype=np.int64)
    for image in labels:
        for label in range(1, num_rectangles + 1):
            height, width = rng.integers(2, max(3, grid // 2 + 1), size=2)
            top, left = rng.integers(0, grid - height + 1), rng.integers(0, grid - width + 1)
            image[top : top + height, left : left + width] = label
    return torch.from_numpy(labels.reshape(batch_size, -1))


def mre_mae_benchmark(args, device, precision) -> Suite:
    preset = args.preset or "vit-s-16"
    config = MREViTConfig.from_preset(preset)
    with_bias = MREViTForMAE(config).to(device).train()
    plain = copy.deepcopy(with_bias)  # the same weights, trained without labels: a plain ViT encoder
    grid, patches = config.vision_config.grid_size, config.num_patches
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(args.batch_size, 3, config.vision_config.image_size, config.vision_config.image_size,
                         generator=generator).to(device)  # fmt: skip
    noise = torch.rand(args.batch_size, patches, generator=generator).to(device)
    labels = rectangle_labels(args.batch_size, grid).to(device)
    covered = (labels > 0).float().mean().item()

    def step_fn(model, token_labels):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type in ("cuda", "cpu"))
        forward = forward_module(model, args)

        def step():
            with autocast(precision, device):
                loss = forward(pixel_values=pixels, noise=noise, token_labels=token_labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        step.owned = [model, optimizer, pixels, noise, labels]
        return step

    def encoder_fn(model, token_labels):
        keep = torch.argsort(noise, dim=1)[:, : config.num_kept_patches]
        encode = forward_module(model.encode, args)

        def step():
            with autocast(precision, device):
                hidden = encode(pixels, token_labels, keep).last_hidden_state
            hidden.float().square().mean().backward()
            model.zero_grad(set_to_none=True)

        step.owned = [model, pixels, keep, labels]
        return step

    steps = {
        "MRE-MAE without segments (plain ViT encoder)": step_fn(plain, None),
        "MRE-MAE with segments (bias in every layer)": step_fn(with_bias, labels),
        "encoder fwd+bwd without segments": encoder_fn(plain, None),
        "encoder fwd+bwd with segments": encoder_fn(with_bias, labels),
    }
    notes = [
        f"token labels: 5 random rectangles per image on the {grid}x{grid} grid ({covered:.0%} of tokens labelled); "
        f"{config.num_kept_patches} of {patches} patches visible; decoder {config.decoder_hidden_size} wide, "
        f"{config.decoder_num_hidden_layers} deep (no bias)"
    ]
    owned = {name: step.owned for name, step in steps.items()}
    keys = ["plain", "bias", "encoder_plain", "encoder_bias"]
    return Suite(steps, preset, notes, owned, keys=keys, headline="bias")


def dino_benchmark(args, device, precision) -> Suite:
    preset = args.preset or "vit-s-16"
    config = MREViTConfig.from_preset(preset, relation_bias="none")
    model = MREViTForDINO(config).to(device).train()
    ema = EMACallback(momentum=0.996, model=model, averaged=("vit.", "head."))
    objective = DINOObjective(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type in ("cuda", "cpu"))
    generator = torch.Generator().manual_seed(0)
    size, local = config.vision_config.image_size, config.local_crop_size
    batch = {
        "global_pixel_values": torch.randn(args.batch_size, config.num_global_crops, 3, size, size,
                                           generator=generator).to(device),
        "local_pixel_values": torch.randn(args.batch_size, config.num_local_crops, 3, local, local,
                                          generator=generator).to(device),
    }  # fmt: skip

    forward = forward_module(model, args)

    def step():
        with autocast(precision, device):
            with torch.no_grad():
                inputs = objective.prepare(batch, forward, ema.ema_model)
            loss = forward(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)  # DINO's clip_grad
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(model, 0.996)

    name = (f"DINO: EMA teacher on {config.num_global_crops}x{size}px, student on {config.num_global_crops}x{size} + "
            f"{config.num_local_crops}x{local}px")  # fmt: skip
    notes = [f"DINO head: {config.dino_hidden_dim} hidden, {config.dino_bottleneck_dim} bottleneck, "
             f"{config.dino_out_dim} prototypes; an image = its {config.num_global_crops + config.num_local_crops} "
             "crops"]  # fmt: skip
    owned = {name: [model, ema.ema_model, optimizer, batch]}
    return Suite({name: step}, preset, notes, owned, keys=["dino"], headline="dino")


BENCHMARKS = {
    "a_clip": aclip_benchmark,
    "attg_mae": attg_benchmark,
    "mre_mae": mre_mae_benchmark,
    "dino": dino_benchmark,
}
RESULT_KEYS = {"a_clip": ("aclip", "clip"), "attg_mae": ("attg", "vitmae")}


COMPILED = " [compiled]"


def compiled_suite(args, device, precision) -> tuple[Suite, dict[str, tuple[float, CompileStats]]]:
    """The suite built again with its models under `torch.compile` (`forward_module`), each step run once here, which
    compiles it: per step name (suffixed `COMPILED`) the seconds of that first call and what dynamo did in it."""
    args.compiled = True
    try:
        suite = BENCHMARKS[args.method](args, device, precision)
    finally:
        args.compiled = False
    suite.steps = {name + COMPILED: step for name, step in suite.steps.items()}
    suite.owned = {name + COMPILED: owned for name, owned in suite.owned.items()}
    report = {}
    for name, step in suite.steps.items():
        before = CompileStats.now()
        seconds = timed(efficient_attention(step, device, args.sdpa_any_kernel), device)
        report[name] = (seconds, CompileStats.now() - before)
    return suite, report


def efficient_attention(step: Callable[[], None], device: torch.device, any_kernel: bool) -> Callable[[], None]:
    """On CUDA (unless `any_kernel`): `step` with SDPA limited to the flash, memory-efficient and cuDNN kernels, so a
    step whose attention (e.g. MRE's float bias) would fall back to the slow math kernel fails instead."""
    if device.type != "cuda" or any_kernel:
        return step
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]

    def restricted() -> None:
        with sdpa_kernel(backends):
            step()

    return restricted


def print_table(header: str, rows: list[tuple[str, float]], flops, memory, images: int, peak: PeakFlops) -> None:
    print(header)
    print(
        f"| {'step':<59} | {'ms / step':>10} | {'img / s':>8} | {'GFLOP / step':>12} | {'time vs base':>12} | "
        f"{'MFU':>6} | {'peak MiB':>9} |"
    )
    print(f"| {'-' * 59} | {'-' * 10} | {'-' * 8} | {'-' * 12} | {'-' * 12} | {'-' * 6} | {'-' * 9} |")
    base_time = rows[0][1]
    for name, seconds in rows:
        peak_mib = f"{memory[name] / 2**20:>9.0f}" if name in memory else f"{'-':>9}"
        print(
            f"| {name:<59} | {seconds * 1e3:>10.1f} | {images / seconds:>8.1f} | {flops[name] / 1e9:>12.1f} | "
            f"{seconds / base_time:>12.3f} | {peak.mfu(flops[name] / seconds):>6.1%} | {peak_mib} |"
        )
    print(f"MFU: achieved FLOP/s over the peak of this precision here, {peak}")


def method_results(method: str, rows: list[tuple[str, float]], flops, memory, images: int) -> list[str]:
    """The method's own `RESULT key=value` lines (eager steps)."""
    if method == "mre_mae":
        (plain, plain_time), (biased, biased_time) = rows[0], rows[1]
        (enc_plain, enc_plain_time), (enc_biased, enc_biased_time) = rows[2], rows[3]
        lines = [
            f"plain_step_ms={plain_time * 1e3:.1f}",
            f"bias_step_ms={biased_time * 1e3:.1f}",
            f"bias_encoder_time_ratio={enc_biased_time / enc_plain_time:.3f}",
            f"bias_flops_ratio={flops[biased] / flops[plain]:.4f}",
        ]
        if memory:
            lines.append(f"bias_encoder_peak_memory_ratio={memory[enc_biased] / memory[enc_plain]:.3f}")
            lines.append(f"bias_peak_memory_ratio={memory[biased] / memory[plain]:.3f}")
        return [*lines, f"bias_step_time_ratio={biased_time / plain_time:.3f}"]
    if method == "dino":
        name, seconds = rows[0]
        lines = [f"dino_peak_memory_mib={memory[name] / 2**20:.0f}"] if memory else []
        return [
            *lines,
            f"dino_step_ms={seconds * 1e3:.1f}",
            f"dino_images_per_s={images / seconds:.2f}",
            f"dino_gflops_per_image={flops[name] / 1e9 / images:.2f}",
        ]
    ours, peer = RESULT_KEYS[method]
    (base_name, base_time), (name, seconds) = rows[0], rows[-1]
    return [
        f"{peer}_step_ms={base_time * 1e3:.1f}",
        f"{ours}_step_ms={seconds * 1e3:.1f}",
        f"{ours}_over_{peer}_flops={flops[name] / flops[base_name]:.4f}",
        f"{ours}_over_{peer}_step_time={seconds / base_time:.3f}",
    ]


def compile_results(suite: Suite, times: dict[str, float], report, flops, peak: PeakFlops) -> list[str]:
    """Print eager against compiled per step; the `RESULT` lines of the method's own step."""
    print(f"| {'step':<48} | {'compile s':>9} | {'graph breaks':>12} | {'eager ms':>9} | {'compiled ms':>11} | "
          f"{'compiled / eager':>16} | {'MFU eager':>9} | {'MFU compiled':>12} |")  # fmt: skip
    print(f"| {'-' * 48} | {'-' * 9} | {'-' * 12} | {'-' * 9} | {'-' * 11} | {'-' * 16} | {'-' * 9} | {'-' * 12} |")
    lines = []
    for name, key in zip(suite.steps, suite.keys):
        eager, compiled = times[name], times[name + COMPILED]
        first_call, stats = report[name + COMPILED]
        ratio, mfu_eager, mfu_compiled = (
            compiled / eager,
            peak.mfu(flops[name] / eager),
            peak.mfu(flops[name] / compiled),
        )
        print(f"| {name[:48]:<48} | {first_call:>9.1f} | {stats.graph_break_count:>12} | {eager * 1e3:>9.1f} | "
              f"{compiled * 1e3:>11.1f} | {ratio:>16.3f} | {mfu_eager:>9.1%} | {mfu_compiled:>12.1%} |")  # fmt: skip
        if stats.graph_break_count:
            print(f"  {name}: {stats}")
        if key == suite.headline:
            lines += [f"graph_breaks={stats.graph_break_count}", f"compiled_over_eager_step_time={ratio:.3f}"]
    return lines


def mfu_results(suite: Suite, times: dict[str, float], flops, peak: PeakFlops, compiled: bool) -> list[str]:
    """`mfu_<key>=…` per step (and per compiled step), then `mfu_compiled=…` and the headline `mfu=…`."""
    lines, headline = [], {}
    for name, key in zip(suite.steps, suite.keys):
        for suffix, timed_name in [("", name), ("_compiled", name + COMPILED)][: 2 if compiled else 1]:
            share = peak.mfu(flops[name] / times[timed_name])
            lines.append(f"mfu_{key}{suffix}={share:.4f}")
            if key == suite.headline:
                headline[suffix] = share
    if compiled:
        lines.append(f"mfu_compiled={headline['_compiled']:.4f}")
    return [*lines, f"mfu={headline['']:.4f}"]


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="a_clip", choices=list(BENCHMARKS))
    parser.add_argument("--preset", default=None, help="size preset (default vit-b-16; mre_mae and dino: vit-s-16)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto", choices=PRECISIONS, help="auto: bf16 only where it is fast")
    parser.add_argument("--no_memory", action="store_true", help="skip the peak-memory step")
    parser.add_argument("--compile", action="store_true", help="also time every step under torch.compile")
    parser.add_argument("--compile_backend", default="inductor", help="torch.compile backend (default: inductor)")
    parser.add_argument("--compile_mode", default=None, help="torch.compile mode (default: torch's)")
    parser.add_argument("--sdpa_any_kernel", action="store_true", help="CUDA: allow SDPA's math kernel too")
    return parser.parse_args()


def main() -> None:
    args = parse_arguments()
    device = torch.device(args.device)
    precision = choose_precision(args.dtype, device)
    torch.manual_seed(0)

    suite = BENCHMARKS[args.method](args, device, precision)
    steps = {name: efficient_attention(step, device, args.sdpa_any_kernel) for name, step in suite.steps.items()}
    flops = {name: count_flops(step) for name, step in steps.items()}
    report, owned, compile_start = {}, dict(suite.owned), CompileStats.now()
    if args.compile:
        compiled, report = compiled_suite(args, device, precision)
        steps |= {
            name: efficient_attention(step, device, args.sdpa_any_kernel) for name, step in compiled.steps.items()
        }
        flops |= {name + COMPILED: flops[name] for name in suite.steps}  # the same model FLOPs
        owned |= compiled.owned
    times = {
        name: statistics.median(values)
        for name, values in time_interleaved(steps, args.steps, args.warmup, device).items()
    }
    peak = peak_flops(device, precision.dtype)  # right after the steps, under the same load
    memory = {}
    if not args.no_memory:
        memory = {name: step_peak_bytes(step, owned.get(name, []), device) for name, step in steps.items()}
    images = suite.images_per_step or args.batch_size
    header = (
        f"device={device} precision={precision} preset={suite.preset} batch={args.batch_size} timed steps={args.steps}"
    )
    print_table(header, list(times.items()), flops, memory, images, peak)
    for note in suite.notes:
        print(note)
    lines = compile_results(suite, times, report, flops, peak) if args.compile else []
    if args.compile:  # more graphs than the first calls compiled: recompilations while timing
        first_calls = sum(stats.graphs for _, stats in report.values())
        print(f"torch.compile over the whole run: {CompileStats.now() - compile_start} ({first_calls} in first calls)")
    eager_rows = [(name, times[name]) for name in suite.steps]
    lines = [*method_results(args.method, eager_rows, flops, memory, images), *lines]
    for line in [*lines, *mfu_results(suite, times, flops, peak, args.compile)]:
        print(f"RESULT {line}")


if __name__ == "__main__":
    main()
