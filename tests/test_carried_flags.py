"""The flags users carry over from transformers' `run_mae.py` / `run_clip.py` (issue 18, section 2): `--cache_dir`
and `--model_revision` reach the Hub downloads of the model, the teacher and the datasets; `--max_train_samples`
caps the records read per pass (and the logged epoch); `--max_caption_chars` reaches the training stream.

The Hub is never reached: a Hub id resolves offline from a Hub cache laid out as `huggingface_hub` writes it
(`models--ORG--NAME/refs/REVISION` → `snapshots/COMMIT/...`), which only `--cache_dir` points at."""

from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
from conftest import tiny_aclip_config, tiny_vit_kwargs
from datasets.distributed import split_dataset_by_node
from test_safety import FAST, run

import hf_masked_vl.training.run as run_module
from hf_masked_vl.training.arguments import DataArguments


def method_from(argv: list[str]):
    """The method of a command line, built by the real parser (no config overrides: what reaches the loaders)."""
    run, _ = run_module.prepare_arguments(argv)
    return run.method(run.model, run.data, run.training), run.data, run.training


def hub_cache_entry(cache: Path, repo_id: str, revisions: dict[str, callable]) -> None:
    """`repo_id` in the Hub cache `cache`: each revision (branch name → `save(folder)`) as its own snapshot."""
    root = cache / f"models--{repo_id.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    for number, (revision, save) in enumerate(revisions.items(), start=1):
        commit = f"{number:040x}"
        save(root / "snapshots" / commit)
        (root / "refs" / revision).write_text(commit)


def test_cache_dir_and_model_revision_reach_the_model_and_the_teacher(tmp_path, tokenizer):
    from transformers import CLIPConfig, CLIPModel

    from hf_masked_vl import AClipModel, MaskedViTConfig, MaskedViTModel
    from hf_masked_vl.normalization import OPENAI_CLIP_MEAN
    from hf_masked_vl.tokenization import build_image_processor

    cache = tmp_path / "hub"
    hub_cache_entry(
        cache,
        "someone/tiny-a-clip",
        {"main": AClipModel(tiny_aclip_config(projection_dim=32)).save_pretrained,
         "v2": AClipModel(tiny_aclip_config(projection_dim=16)).save_pretrained},
    )  # fmt: skip

    def clip_teacher(projection_dim: int):
        def save(folder: Path) -> None:
            text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
            vision = dict(text, image_size=32, patch_size=16)
            config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)
            CLIPModel(config).save_pretrained(folder)
            tokenizer.save_pretrained(folder)

        return save

    hub_cache_entry(cache, "someone/tiny-clip", {"main": clip_teacher(24), "v2": clip_teacher(8)})

    common = ["--output_dir", str(tmp_path / "out")]
    model_flags = ["--model_name_or_path", "someone/tiny-a-clip"]
    with pytest.raises(Exception, match="someone/tiny-a-clip"):  # the default cache does not hold it
        method_from([*common, *model_flags])[0].build_model()
    method, _, _ = method_from([*common, *model_flags, "--cache_dir", str(cache)])
    assert method.build_model().config.projection_dim == 32
    method, _, _ = method_from([*common, *model_flags, "--cache_dir", str(cache), "--model_revision", "v2"])
    assert method.planned_config().projection_dim == 16 and method.build_model().config.projection_dim == 16

    def vision_tower(hidden_size: int, mean: float):
        def save(folder: Path) -> None:
            MaskedViTModel(MaskedViTConfig(**tiny_vit_kwargs(hidden_size=hidden_size))).save_pretrained(folder)
            build_image_processor(32, (mean,) * 3, (0.5,) * 3).save_pretrained(folder)

        return save

    hub_cache_entry(cache, "someone/tiny-vit", {"main": vision_tower(64, 0.25), "v2": vision_tower(32, 0.75)})
    lit_flags = [*common, "--method", "lit", "--model_name_or_path", "someone/tiny-vit", "--cache_dir", str(cache)]
    lit = method_from([*lit_flags, "--model_revision", "v2"])[0]
    assert lit.build_model().config.vision_config.hidden_size == 32 and lit.image_statistics()[0] == (0.75,) * 3

    teacher_flags = [*common, "--method", "uta", "--teacher", "someone/tiny-clip", "--cache_dir", str(cache)]
    assert method_from(teacher_flags)[0].load_teacher().embed_dim == 24
    teacher = method_from([*teacher_flags, "--model_revision", "v2"])[0].load_teacher()
    assert teacher.embed_dim == 8 and teacher.mean == OPENAI_CLIP_MEAN and teacher.tokenizer is not None


def test_cache_dir_reaches_the_datasets_downloads(tmp_path, small_demo, monkeypatch):
    """A dataset read without streaming is prepared (Arrow files) in --cache_dir; the evaluation splits and an
    open_clip teacher are given it (their calls recorded: they download nothing here)."""
    cache = tmp_path / "datasets"
    data = DataArguments(dataset_name="parquet", data_files=small_demo.train_files[:1], streaming=False)
    run_module.training_source(data, str(cache))
    assert list(cache.glob("parquet/**/*.arrow"))

    calls = []
    recorded = run_module.load_labelled_split
    monkeypatch.setattr(
        run_module, "load_labelled_split", lambda *args, **kwargs: calls.append(kwargs) or recorded(*args, **kwargs)
    )
    labelled = DataArguments(
        dataset_name="parquet", eval_dataset_name="parquet", eval_data_files=small_demo.eval_files, eval_split="train"
    )
    run_module.evaluation_splits(labelled, str(cache))
    assert calls and all(call["cache_dir"] == str(cache) for call in calls)

    import open_clip

    from hf_masked_vl.teachers import load_teacher

    created = []
    monkeypatch.setattr(open_clip, "create_model", lambda *args, **kwargs: created.append(kwargs) or 1 / 0)
    with pytest.raises(ZeroDivisionError):
        load_teacher("open_clip:ViT-B-32@openai", cache_dir=str(cache))
    assert created == [{"pretrained": "openai", "cache_dir": str(cache)}]


def read_records(stream, epoch: int) -> list[tuple[str, int]]:
    """(file, row) of every record the training stream's source yields in pass `epoch`."""
    stream.set_epoch(epoch)
    return [(record["__file__"], record["__row__"]) for record in stream.dataset]


def test_max_train_samples_caps_the_records_read_per_pass_and_the_epoch(tmp_path, small_demo, capsys):
    data = ["--dataset_name", "parquet", "--data_files", *small_demo.train_files, "--shuffle_buffer", "4"]
    argv = ["--output_dir", str(tmp_path / "out"), *FAST, *data, "--max_train_samples", "6"]
    method, data_args, training_args = method_from(argv)
    checked = run_module.check_before_training(method, data_args, training_args)
    assert checked.records_per_epoch == 6
    stream = run_module.build_train_dataset(method, run_module.build_model(method, checked, data_args), checked,
                                            data_args, training_args)  # fmt: skip
    first, second = read_records(stream, 0), read_records(stream, 1)
    assert len(first) == len(second) == 6 and set(first) == set(second)  # the same 6 records in every pass
    assert sum(1 for _ in stream) == 6
    # several processes: the 6 records are split between them (the total, as the help says)
    per_rank = [list(split_dataset_by_node(checked.stream, rank=rank, world_size=2)) for rank in (0, 1)]
    assert sorted(len(records) for records in per_rank) == [3, 3]

    status, err = run([*argv[:-1], "2"], capsys)  # fewer records than one batch (4)
    assert status == 2 and "larger than the training data (2 records)" in err


def test_records_per_epoch_is_at_most_max_train_samples():
    def size(max_train_samples, demo=None, samples_per_epoch=None):
        data_args = SimpleNamespace(
            demo_num_train=256, max_train_samples=max_train_samples, train_split="train", dataset_name=None
        )
        data_args.data_files = None
        training_args = SimpleNamespace(samples_per_epoch=samples_per_epoch)
        return run_module.records_per_epoch(data_args, training_args, SimpleNamespace(), demo)

    assert size(None, demo=True) == 256 and size(100, demo=True) == 100 and size(1000, demo=True) == 256
    assert size(50, samples_per_epoch=80) == 50 and size(None, samples_per_epoch=80) == 80
    assert size(None) is None and size(30) == 30  # unknown length: the cap is the pass


def test_max_caption_chars_makes_a_longer_caption_a_skipped_record(tmp_path, small_demo):
    table = pq.read_table(small_demo.train_files[0])
    captions = table.column("caption").to_pylist()
    captions[0] = "a long caption, " * 20  # 319 characters once stripped
    path = tmp_path / "long-caption.parquet"
    pq.write_table(table.set_column(table.schema.get_field_index("caption"), "caption", [captions]), path)
    argv = ["--output_dir", str(tmp_path / "out"), *FAST, "--dataset_name", "parquet", "--data_files", str(path),
            "--shuffle_buffer", "0", "--max_caption_chars", "200"]  # fmt: skip
    method, data_args, training_args = method_from(argv)
    checked = run_module.check_before_training(method, data_args, training_args)
    stream = run_module.build_train_dataset(method, run_module.build_model(method, checked, data_args), checked,
                                            data_args, training_args)  # fmt: skip
    skipped = [record for example in stream for record in example["skipped_records"]]
    assert [record["reason"] for record in skipped] == ["caption too long (319 characters > 200)"]
    assert skipped[0]["row"] == 0
