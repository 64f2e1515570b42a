"""No stall at epoch boundaries: the trainer's DataLoader keeps its worker across epochs (the stream rolls into the
next epoch in it), and the records of every epoch are those a fresh iteration after `set_epoch` gives."""

import os

import torch
from transformers import TrainingArguments

from hf_masked_vl.data.streaming import ImageTextStream, load_stream
from hf_masked_vl.training.trainer import MaskedVLTrainer, _EpochDataLoader

BATCH = 32


def _no_views(image, rng, maps) -> dict[str, torch.Tensor]:
    return {}


def _records(examples: list[dict]) -> dict[str, torch.Tensor]:
    """What identifies each example (its record and epoch, its place in the stream), and the process that made it."""
    return {
        "seed": torch.tensor([example["sample_seed"] for example in examples]),
        "position": torch.tensor([example["stream_position"] for example in examples]),
        "pid": torch.full((len(examples),), os.getpid()),
    }


def _stream(small_demo) -> ImageTextStream:
    source = load_stream("parquet", small_demo.train_files, record_locations=True)
    return ImageTextStream(source, _no_views, caption_column=None, seed=3, shuffle_buffer=64)


def _todays(small_demo, epochs: int) -> list[list[tuple]]:
    """Each epoch's (seed, position) as today's trainer loader gave them: `set_epoch`, then a worker started anew."""
    loader = _EpochDataLoader(_stream(small_demo), BATCH, num_workers=1, collate_fn=_records)
    return [[(record["seed"], record["position"]) for record in _epoch(loader, epoch)] for epoch in range(epochs)]


def _train_loader(small_demo, tmp_path):
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=BATCH, dataloader_num_workers=1, report_to="none",
        use_cpu=True, max_steps=100, remove_unused_columns=False,
    )  # fmt: skip
    trainer = MaskedVLTrainer(
        model=torch.nn.Linear(1, 1),
        args=args,
        train_dataset=_stream(small_demo),
        data_collator=_records,
        objective=None,
    )
    return trainer.get_train_dataloader()


def _epoch(loader, epoch: int, batches: int | None = None) -> list[dict]:
    """As the Trainer runs an epoch: `set_epoch`, a new iterator, its batches (the first `batches` only, if given)."""
    loader.set_epoch(epoch)
    records = []
    for index, batch in enumerate(loader):
        if batches is not None and index == batches:
            break
        records.extend(
            {"seed": seed, "position": tuple(position), "pid": pid}
            for seed, position, pid in zip(batch["seed"].tolist(), batch["position"].tolist(), batch["pid"].tolist())
        )
    return records


def test_worker_is_not_restarted_and_epochs_are_todays(small_demo, tmp_path):
    loader = _train_loader(small_demo, tmp_path)
    epochs = [_epoch(loader, epoch) for epoch in range(2)]
    assert len({record["pid"] for records in epochs for record in records}) == 1  # one worker, never restarted
    assert epochs[0][0]["pid"] != os.getpid()
    seen = [[(record["seed"], record["position"]) for record in records] for records in epochs]
    assert seen == _todays(small_demo, 2)
    assert seen[0][-1][1] == (0, 1, 0) and seen[1][0][1][1] == 1  # the last example hands over to epoch 1


def test_an_abandoned_epoch_does_not_shift_the_next(small_demo, tmp_path):
    loader = _train_loader(small_demo, tmp_path)
    _epoch(loader, 0, batches=2)  # e.g. a callback's should_epoch_stop
    seen = [(record["seed"], record["position"]) for record in _epoch(loader, 1)]
    assert seen == _todays(small_demo, 2)[1]
