"""The training batch: what `ImageTextCollator` returns, an `Objective.prepare` reads and the trainer moves to the
device. One documented contract instead of string keys known only to the code that writes them.

A `TypedDict` (not a dataclass): the batch stays a plain `dict` at run time, which the Trainer moves to the device and
accelerate concatenates across processes as it is; the type names every key, its shape and its dtype, so a type
checker catches a misspelt key and a reader finds here what a method's objective may read.

Shapes: B images per batch, S the view size, V the online views of an image (A-CLIP: 2), G / L the global / local
crops (DINO), K the kept patches per view, g the map grid of a view (usually the model's patch grid), T the text
length (the longest caption of the batch, at most the text context).

Per-image maps arrive under their role's name (`data.maps.MAP_ROLES`: `guidance`, `segments`, or a role a method
registers): `(B, g, g)` for one view, `(B, V + 1, g, g)` with A-CLIP's views (online views, then the EMA view), and
`global_<role>` / `local_<role>` for multi-crop views. Guidance maps are float32 in [0, 1], segment labels int64
(0 = unlabelled).
"""

from __future__ import annotations

from typing import Any, TypedDict

import torch

EMA_VIEW_ROW = -1  # A-CLIP: the row of the EMA view in `crop_boxes` and in its per-view maps (the online views first)


class TrainingExample(TypedDict, total=False):
    """One example of `ImageTextStream`: the method's views (its `transform`'s tensors, keys as in `TrainingBatch`,
    without the batch dimension) and these fields."""

    sample_seed: int  # draws the example's data-independent masks (a function of seed, content and epoch)
    caption: str  # the caption picked for this epoch, when the method reads captions
    num_skipped: int  # records skipped just before this one
    skipped_records: list[dict[str, Any]]  # those records, as plain dicts (`data.records.skipped_record`)
    stream_position: tuple[int, int, int]  # (worker, epoch, records read in the epoch): the batch's `stream_*` keys


class TrainingBatch(TypedDict, total=False):
    """A collated batch. Every key is optional: a method's views and collator decide which are present.

    Views (float32, normalised with the method's `Built.image_mean` / `image_std`):
        pixel_values: (B, 3, S, S) one view per image, or (B, V, 3, S, S) A-CLIP's online views.
        ema_pixel_values: (B, 3, S, S) A-CLIP's un-augmented view for the EMA model.
        crop_boxes: (B, V + 1, 4) (top, left, height, width) in source pixels; rows: online views, then the EMA view
            (`EMA_VIEW_ROW`).
        global_pixel_values: (B, G, 3, S, S) and local_pixel_values: (B, L, 3, s, s), DINO's multi-crop (no local
            key when L = 0).
    Maps (one per view, cut with the view's geometry):
        guidance: (B, g, g) float32 object maps in [0, 1].
        segments: (B, g, g) int64 segment labels, 0 = unlabelled; global_segments: (B, G, g, g); local_segments:
            (B, L, g', g').
    Text (methods that read captions):
        input_ids: (B, T) int64 CLIP tokens, a cut caption ends with end-of-text. attention_mask: (B, T) int64.
    Data-independent inputs (the method's `mask_generator`: `models.masking.DrawnInputs`, drawn in the DataLoader
    workers from the sample seeds):
        keep_indices: (B, K) int64 kept patch indices, ascending; (B, V, K) with A-CLIP's random masks.
        guidance: drawn instead of read for AttG's random-guidance ablation, same shape and range.
    Bookkeeping (read by the trainer, removed before the objective):
        sample_seeds: (B,) int64. num_skipped: (B,) int64 records skipped before each example.
        stream_worker / stream_epoch / stream_records: (B,) int64 where each example was read.
        skipped_records: the skipped records as plain dicts, last (accelerate reads the batch size from the first).
    """

    pixel_values: torch.Tensor
    ema_pixel_values: torch.Tensor
    crop_boxes: torch.Tensor
    global_pixel_values: torch.Tensor
    local_pixel_values: torch.Tensor
    guidance: torch.Tensor
    segments: torch.Tensor
    global_segments: torch.Tensor
    local_segments: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    keep_indices: torch.Tensor
    sample_seeds: torch.Tensor
    num_skipped: torch.Tensor
    stream_worker: torch.Tensor
    stream_epoch: torch.Tensor
    stream_records: torch.Tensor
    skipped_records: list[dict[str, Any]]


__all__ = ["EMA_VIEW_ROW", "TrainingBatch", "TrainingExample"]
