#!/usr/bin/env python
"""Images per second per process of each guidance producer, in one process and under `torchrun` with several.

    python benchmarks/guidance_throughput.py                       # every producer, 1 vs 2 processes, 64 images
    python benchmarks/guidance_throughput.py --processes 4 --producers tokencut sam --num_images 1024

Each producer runs `scripts/compute_guidance.py` on the demo's training split with a tiny random backbone (a 2-layer ViT
at 32 px for tokencut / attention, a narrow ResNet-18 for gradcam, a 2-layer SAM at 256 px with 4 × 4 points for sam),
once as a plain process and once under `torchrun --standalone --nproc_per_node N`, each process mapping `--num_images`
images with `OMP_NUM_THREADS` = cores / N threads (the same work per process in both), round-robin over `--repeats`
(median). The rate is compute_guidance's own `RESULT <producer>_images_per_s_per_process` (maps per second of a rank's
shard loop: reading, mapping, writing; not the start-up). Prints a table with the ratio of the per-process rate under N
processes to the one-process rate measured in the same run (1.0: splitting costs nothing), then `RESULT
<producer>_images_per_s_per_process=…` (N processes) and `RESULT <producer>_per_process_over_one_process=…` lines, and
the MFU of each producer's N-process run: its FLOPs per image (counted once in this process with
`torch.utils.flop_counter` on the same tiny backbone) × the images/s of all processes, against a matmul probe of the
machine's fp32 peak (`RESULT mfu_<producer>=…`, `RESULT mfu=…` for sam, else the first producer). The tiny backbones
measure the pipeline around the model, so their MFU is low; real backbones (DINO ViT-B/16, SAM ViT-H) are bound by the
model on a GPU."""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from hf_masked_vl.training.flops import PeakFlops, peak_flops

ROOT = Path(__file__).resolve().parent.parent
RESULT_LINE = re.compile(r"^RESULT (\w+)=(\S+)$", re.MULTILINE)
PRODUCERS = ("tokencut", "attention", "gradcam", "sam")


def save_tiny_backbones(folder: Path) -> dict[str, list[str]]:
    """Tiny random backbones saved like Hub checkpoints; per producer, the flags that select it."""
    import timm
    import transformers as hf
    from timm.models import save_for_hf

    torch.manual_seed(0)
    vit = hf.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
    hf.ViTModel(vit, add_pooling_layer=False).save_pretrained(folder / "vit")
    hf.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder / "vit")
    resnet_args = {"num_classes": 10, "channels": (8, 16, 32, 64)}
    save_for_hf(timm.create_model("resnet18", **resnet_args).eval(), str(folder / "resnet"), model_args=resnet_args)
    vision = hf.SamVisionConfig(
        hidden_size=64, output_channels=64, num_hidden_layers=2, num_attention_heads=2, image_size=256, patch_size=16,
        window_size=4, global_attn_indexes=[1], mlp_dim=128, num_pos_feats=32,
    )  # fmt: skip
    decoder = hf.SamMaskDecoderConfig(hidden_size=64, mlp_dim=128, num_attention_heads=2, iou_head_hidden_dim=64)
    prompts = hf.SamPromptEncoderConfig(hidden_size=64, image_size=256, patch_size=16)
    sam = hf.SamModel(hf.SamConfig(vision_config=vision, prompt_encoder_config=prompts, mask_decoder_config=decoder))
    sam.save_pretrained(folder / "sam")
    hf.SamImageProcessor(
        size={"longest_edge": 256}, pad_size={"height": 256, "width": 256}, mask_size={"longest_edge": 64},
        mask_pad_size={"height": 64, "width": 64},
    ).save_pretrained(folder / "sam")  # fmt: skip
    return {
        "tokencut": ["--backbone", str(folder / "vit")],
        "attention": ["--backbone", str(folder / "vit")],
        "gradcam": ["--backbone", f"local-dir:{folder / 'resnet'}", "--grid", "7"],
        "sam": ["--backbone", str(folder / "sam"), "--points_per_side", "4", "--pred_iou_thresh", "0"],
    }


def images_per_s(producer: str, flags: list[str], processes: int, threads: int, output_dir: Path) -> float:
    """One compute_guidance run (a plain process, or torchrun with `processes`), `threads` per process; its
    per-process rate."""
    script = str(ROOT / "scripts" / "compute_guidance.py")
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    command = [*launcher, script, "--producer", producer, *flags, "--output_dir", str(output_dir), "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return float(dict(RESULT_LINE.findall(result.stdout))[f"{producer}_images_per_s_per_process"])


def flops_per_image(producer: str, flags: list[str], images: list) -> float:
    """FLOPs one image costs `producer` built as `flags` select it (`torch.utils.flop_counter`, in this process; the
    backward of Grad-CAM included)."""
    from hf_masked_vl.guidance.producers import DEFAULT_GRID, PRODUCERS, build_producer
    from hf_masked_vl.training.flops import count_flops

    values = {flag.removeprefix("--"): value for flag, value in zip(flags[::2], flags[1::2])}
    backbone, grid = values.pop("backbone"), int(values.pop("grid", DEFAULT_GRID))
    options = {name: PRODUCERS[producer].options[name].get("type", str)(value) for name, value in values.items()}
    built = build_producer(producer, backbone, grid, "cpu", **options)
    with torch.no_grad():  # as the shard writer runs a producer (Grad-CAM enables its own gradients)
        return count_flops(lambda: built(images)) / len(images)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--producers", nargs="+", choices=PRODUCERS, default=list(PRODUCERS))
    parser.add_argument("--processes", type=int, default=2, help="processes of the torchrun runs")
    parser.add_argument("--num_images", type=int, default=64, help="demo images mapped per process")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each (producer, processes), median")
    args = parser.parse_args(argv)
    from hf_masked_vl.data.demo import ensure_demo_dataset

    demo = ensure_demo_dataset()
    data = ["--dataset_name", "parquet", "--data_files", *demo.train_files, "--disable_tqdm"]
    data += ["--batch_size", str(args.batch_size), "--shard_size", str(args.num_images), "--num_overlays", "0"]
    threads = max(1, (os.cpu_count() or 1) // args.processes)
    rates: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        backbones = save_tiny_backbones(Path(scratch))
        for repeat in range(args.repeats):
            for producer in args.producers:
                for processes in (1, args.processes):  # the same images and threads per process
                    output = Path(scratch) / f"{producer}-{processes}-{repeat}"
                    images = ["--max_samples", str(args.num_images * processes)]
                    flags = [*backbones[producer], *data, *images]
                    rate = images_per_s(producer, flags, processes, threads, output)
                    rates.setdefault((producer, processes), []).append(rate)
        images = demo_images(demo.train_files, args.batch_size)
        flops = {producer: flops_per_image(producer, backbones[producer], images) for producer in args.producers}
    return report(rates, args.producers, args.processes, flops, peak_flops("cpu"))


def demo_images(files: list[str], count: int) -> list:
    """The first `count` demo training images (PIL)."""
    import datasets

    return datasets.load_dataset("parquet", data_files=files, split="train").select(range(count))["image"]


def report(
    rates: dict[tuple[str, int], list[float]],
    producers: list[str],
    processes: int,
    flops: dict[str, float],
    peak: PeakFlops,
) -> dict[str, float]:
    """The table, then the `RESULT` lines. MFU: FLOPs per image × the images/s of all processes together, as a share
    of the machine's fp32 peak (`peak`, a matmul probe on every core)."""
    cores = os.cpu_count()
    print(f"images/s per process, median; {cores} cores, OMP_NUM_THREADS = cores / {processes} in every run")
    print(f"MFU: FLOPs per image × images/s of all processes, against {peak}")
    print(f"{'producer':<10} {'1 process':>10} {f'{processes} processes':>12} {'total':>8} {'ratio':>6} "
          f"{'MFLOP/image':>12} {'MFU':>7}")  # fmt: skip
    results: dict[str, float] = {}
    for producer in producers:
        one, many = (statistics.median(rates[(producer, n)]) for n in (1, processes))
        mfu = peak.mfu(flops[producer] * many * processes)
        print(f"{producer:<10} {one:>10.1f} {many:>12.1f} {many * processes:>8.1f} {many / one:>6.2f} "
              f"{flops[producer] / 1e6:>12.1f} {mfu:>7.2%}")  # fmt: skip
        results[f"{producer}_images_per_s_per_process"] = many
        results[f"{producer}_per_process_over_one_process"] = many / one
        results[f"mfu_{producer}"] = mfu
    results["mfu"] = results[f"mfu_{'sam' if 'sam' in producers else producers[0]}"]
    for key, value in results.items():
        print(f"RESULT {key}={value:.4f}" if key.startswith("mfu") else f"RESULT {key}={value:.3f}")
    return results


if __name__ == "__main__":
    main()
