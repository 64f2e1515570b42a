"""Data file patterns: brace ranges and lists expanded as webdataset / open_clip (`braceexpand`) expand them, checked
up front and read by training."""

import io
import tarfile

import pytest
from conftest import encoded
from PIL import Image
from test_training import TINY_OVERRIDES

import hf_masked_vl
from hf_masked_vl.data.files import check_data_files, expand_braces, expand_data_files
from hf_masked_vl.data.streaming import load_stream
from hf_masked_vl.errors import UsageError


@pytest.mark.parametrize(
    "pattern, names",
    [
        ("shards/{00000..00002}.tar", ["shards/00000.tar", "shards/00001.tar", "shards/00002.tar"]),
        ("{8..11}", ["8", "9", "10", "11"]),
        ("{08..10}", ["08", "09", "10"]),
        ("{3..1}", ["3", "2", "1"]),
        ("{0..10..5}", ["0", "5", "10"]),
        ("{a..c}", ["a", "b", "c"]),
        ("{train,val}/{0..1}.tar", ["train/0.tar", "train/1.tar", "val/0.tar", "val/1.tar"]),
        ("{a,b{1,2}}.tar", ["a.tar", "b1.tar", "b2.tar"]),
        ("{x}/{0..1}", ["{x}/0", "{x}/1"]),
        ("photos/**", ["photos/**"]),
        ("odd{.tar", ["odd{.tar"]),
    ],
)
def test_expand_braces_as_braceexpand(pattern, names):
    assert expand_braces(pattern) == names


def test_expand_data_files_keeps_the_shape_datasets_takes():
    assert expand_data_files("a.tar") == "a.tar"
    assert expand_data_files("{0..1}.tar") == ["0.tar", "1.tar"]
    assert expand_data_files({"train": ["{0..1}.tar", "0.tar"], "test": "t.tar"}) == {
        "train": ["0.tar", "1.tar"],
        "test": "t.tar",
    }


def write_shards(folder, shards: int, samples: int) -> None:
    """webdataset shards `folder/0000N.tar`, each holding `samples` pairs of `<key>.png` + `<key>.txt`."""
    folder.mkdir()
    for shard in range(shards):
        with tarfile.open(folder / f"{shard:05d}.tar", "w") as tar:
            for index in range(samples):
                colour = (40 * shard, 20 * index, 200)
                files = {
                    "png": encoded(Image.new("RGB", (40, 40), colour)),
                    "txt": f"shard {shard} image {index}".encode(),
                }
                for extension, data in files.items():
                    info = tarfile.TarInfo(f"s{shard}-{index:03d}.{extension}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def test_a_brace_range_of_webdataset_shards_is_checked_read_and_trained_on(tmp_path, monkeypatch):
    write_shards(tmp_path / "shards", shards=3, samples=4)
    monkeypatch.chdir(tmp_path)
    pattern = "shards/{00000..00002}.tar"
    assert len(check_data_files([pattern], "--data_files")) == 3
    with pytest.raises(UsageError, match=r"'shards/\{00000..00003\}.tar' names 'shards/00003.tar', which matches no"):
        check_data_files(["shards/{00000..00003}.tar"], "--data_files")
    records = list(load_stream("webdataset", [pattern]))
    assert sorted(record["txt"] for record in records) == sorted(
        f"shard {s} image {i}" for s in range(3) for i in range(4)
    )
    result = hf_masked_vl.train(
        output_dir="run", dataset_name="webdataset", data_files=[pattern], image_column="png", caption_column="txt",
        max_steps=3, per_device_train_batch_size=4, dataloader_num_workers=0, disable_tqdm=True, report_to="none",
        save_strategy="no", config_overrides=TINY_OVERRIDES,
    )  # fmt: skip
    assert result.output_dir == "run" and (tmp_path / "run" / "model.safetensors").is_file()
    assert "webdataset (shards/{00000..00002}.tar)" in (tmp_path / "run" / "README.md").read_text()
