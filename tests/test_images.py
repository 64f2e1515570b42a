"""Image cells to RGB: every PIL mode, EXIF orientation, decompression bombs and the reason of every failure."""

import io
import warnings

import numpy as np
import pytest
from conftest import encoded, png_header, truncated_jpeg
from PIL import Image, ImageFile

from hf_masked_vl.data.demo import generate_example
from hf_masked_vl.data.images import SUPPORTED_MODES, BadImageError, decode_image, load_image, to_rgb
from hf_masked_vl.data.maps import decode_label_map


def pixels(image: Image.Image) -> list[tuple[int, int, int]]:
    assert image.mode == "RGB"
    return [tuple(int(v) for v in p) for p in np.asarray(image).reshape(-1, 3)]


def row(mode: str, values: list) -> Image.Image:
    """A 1-row image of `mode` holding `values` left to right."""
    image = Image.new(mode, (len(values), 1))
    for x, value in enumerate(values):
        image.putpixel((x, 0), value)
    return image


# ---- one test per mode, exact values ----
# transparency: composited over white, (c·a + 255·(255 − a)) / 255 rounded


def test_bilevel_and_grey():
    assert pixels(to_rgb(row("1", [0, 1]))) == [(0, 0, 0), (255, 255, 255)]
    assert pixels(to_rgb(row("L", [0, 77, 255]))) == [(0, 0, 0), (77, 77, 77), (255, 255, 255)]


def test_grey_with_alpha_over_white():
    # (100, 64): (100·64 + 255·191) / 255 = 216.1
    expected = [(255, 255, 255), (100, 100, 100), (127, 127, 127), (216, 216, 216)]
    assert pixels(to_rgb(row("LA", [(100, 0), (100, 255), (0, 128), (100, 64)]))) == expected
    # premultiplied: (50, 128) is L = 100 at alpha 128 → (100·128 + 255·127) / 255 = 177.2
    assert pixels(to_rgb(row("La", [(50, 128), (0, 0), (200, 255)]))) == [(177,) * 3, (255,) * 3, (200,) * 3]


def palette_row() -> Image.Image:
    image = row("P", [0, 1, 2])
    image.putpalette([10, 20, 30, 200, 100, 0, 0, 0, 0])
    return image


def test_palette_without_and_with_transparency():
    assert pixels(to_rgb(palette_row())) == [(10, 20, 30), (200, 100, 0), (0, 0, 0)]
    transparent_first = palette_row()
    transparent_first.info["transparency"] = 0
    reread = Image.open(io.BytesIO(encoded(transparent_first)))
    assert reread.mode == "P"
    assert pixels(to_rgb(reread)) == [(255, 255, 255), (200, 100, 0), (0, 0, 0)]
    # per-entry alpha (PNG tRNS): entry 1 at alpha 128, entry 2 fully transparent
    partial = palette_row()
    partial.info["transparency"] = bytes([255, 128, 0])
    reread = Image.open(io.BytesIO(encoded(partial)))
    assert pixels(to_rgb(reread)) == [(10, 20, 30), (227, 177, 127), (255, 255, 255)]
    with_alpha = row("PA", [(0, 255), (1, 128)])
    with_alpha.putpalette([10, 20, 30, 200, 100, 0])
    assert pixels(to_rgb(with_alpha)) == [(10, 20, 30), (227, 177, 127)]


def test_rgb_alpha_and_colour_key_over_white():
    rgba = row("RGBA", [(255, 0, 0, 0), (255, 0, 0, 255), (0, 0, 0, 128), (10, 200, 30, 64)])
    assert pixels(to_rgb(rgba)) == [(255, 255, 255), (255, 0, 0), (127, 127, 127), (194, 241, 199)]
    # premultiplied (100, 50, 0) at alpha 128 is (199, 99, 0)
    assert pixels(to_rgb(row("RGBa", [(100, 50, 0, 128), (0, 0, 0, 0)]))) == [(227, 177, 127), (255, 255, 255)]
    assert pixels(to_rgb(row("RGBX", [(1, 2, 3, 4)]))) == [(1, 2, 3)]
    keyed = row("RGB", [(1, 2, 3), (4, 5, 6)])
    keyed.info["transparency"] = (1, 2, 3)  # PNG tRNS colour key
    assert pixels(load_image(encoded(keyed))) == [(255, 255, 255), (4, 5, 6)]


def test_cmyk_ycbcr_lab_hsv_by_pil():
    # PIL's CMYK: (255 − C)(255 − K) / 255, no ICC profile
    cmyk = row("CMYK", [(0, 0, 0, 0), (255, 0, 0, 0), (0, 0, 0, 255), (100, 50, 0, 50)])
    assert pixels(to_rgb(cmyk)) == [(255, 255, 255), (0, 255, 255), (0, 0, 0), (125, 165, 205)]
    assert pixels(load_image(encoded(cmyk, "TIFF"))) == [(255, 255, 255), (0, 255, 255), (0, 0, 0), (125, 165, 205)]
    ycbcr = row("YCbCr", [(128, 128, 128), (76, 85, 255), (255, 128, 128)])
    assert pixels(to_rgb(ycbcr)) == [(128, 128, 128), (254, 0, 0), (255, 255, 255)]
    lab = row("LAB", [(255, 128, 128), (0, 128, 128), (136, 208, 195)])  # white, black, red (D50)
    assert pixels(to_rgb(lab)) == [(254, 255, 254), (1, 0, 1), (250, 3, 11)]
    hsv = row("HSV", [(0, 255, 255), (85, 255, 128), (0, 0, 200)])
    assert pixels(to_rgb(hsv)) == [(255, 0, 0), (0, 128, 0), (200, 200, 200)]


def test_sixteen_bit_grey_scaled_not_saturated():
    values = np.array([[0, 257, 1000, 65535, 128, 129]], dtype=np.uint16)
    expected = [(v,) * 3 for v in (0, 1, 4, 255, 0, 1)]  # value / 257, rounded
    assert pixels(to_rgb(Image.fromarray(values))) == expected  # I;16
    big_endian = Image.frombytes("I;16B", (6, 1), values.astype(">u2").tobytes())
    assert big_endian.mode == "I;16B" and pixels(to_rgb(big_endian)) == expected
    png = encoded(Image.fromarray(values))
    assert Image.open(io.BytesIO(png)).mode == "I;16"
    assert pixels(load_image(png)) == expected
    assert Image.open(io.BytesIO(png)).convert("RGB").getpixel((2, 0)) == (255, 255, 255)  # what PIL alone gives
    assert pixels(load_image(encoded(big_endian, "TIFF"))) == expected
    keyed = Image.fromarray(np.array([[5, 1000]], dtype=np.uint16))
    keyed.info["transparency"] = 5
    assert pixels(to_rgb(keyed)) == [(255, 255, 255), (4, 4, 4)]


def test_thirty_two_bit_integer_and_float():
    sixteen_bit_range = Image.fromarray(np.array([[0, 65535, 32896]], dtype=np.int32))
    assert sixteen_bit_range.mode == "I"
    assert pixels(to_rgb(sixteen_bit_range)) == [(0,) * 3, (255,) * 3, (128,) * 3]
    # outside 0..65535: min → 0, max → 255; (v + 100) · 255 / 400 rounded
    wide = Image.fromarray(np.array([[-100, 0, 100, 300]], dtype=np.int32))
    assert pixels(to_rgb(wide)) == [(0,) * 3, (64,) * 3, (128,) * 3, (255,) * 3]
    assert pixels(load_image(encoded(wide, "TIFF"))) == [(0,) * 3, (64,) * 3, (128,) * 3, (255,) * 3]
    assert pixels(to_rgb(Image.fromarray(np.array([[70000, 70000]], dtype=np.int32)))) == [(0,) * 3] * 2
    unit = Image.fromarray(np.array([[0, 0.5, 1, 0.25]], dtype=np.float32))
    assert unit.mode == "F" and pixels(to_rgb(unit)) == [(0,) * 3, (128,) * 3, (255,) * 3, (64,) * 3]
    assert pixels(load_image(encoded(unit, "TIFF"))) == [(0,) * 3, (128,) * 3, (255,) * 3, (64,) * 3]
    stretched = Image.fromarray(np.array([[-1, 0, 1, 3]], dtype=np.float32))
    assert pixels(to_rgb(stretched)) == [(0,) * 3, (64,) * 3, (128,) * 3, (255,) * 3]
    with pytest.raises(BadImageError, match=r"non-finite pixel values \(mode F\)"):
        to_rgb(Image.fromarray(np.array([[0, np.nan]], dtype=np.float32)))


def test_every_pil_mode_is_supported_and_others_are_named():
    assert set(Image.MODES) <= set(SUPPORTED_MODES)
    for mode in Image.MODES:
        assert to_rgb(Image.new(mode, (3, 2))).size == (3, 2), mode

    class Unknown:
        mode = "XYZ;7"

    with pytest.raises(BadImageError, match="unsupported image mode XYZ;7"):
        to_rgb(Unknown())


def test_exif_orientation_is_applied():
    image = row("RGB", [(255, 0, 0), (0, 0, 255)])
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: displayed turned 90° clockwise
    upright = load_image(encoded(image, exif=exif))
    assert upright.size == (1, 2) and pixels(upright) == [(255, 0, 0), (0, 0, 255)]
    assert load_image(encoded(image)).size == (2, 1)


def test_rgb_images_are_unchanged():
    """The demo's RGB images (and its 8-bit label maps) decode exactly as PIL's `convert("RGB")` did before."""
    for index in range(6):
        example = generate_example(0, "train", index, 48)
        for column in ("image", "segments"):
            data = example[column]["bytes"]
            before = Image.open(io.BytesIO(data)).convert("RGB")
            after = decode_image(example[column])
            assert after.mode == "RGB" and np.array_equal(np.asarray(after), np.asarray(before))
            assert np.array_equal(np.asarray(decode_image(data)), np.asarray(before))
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    data = encoded(photo, "JPEG", quality=90)
    assert np.array_equal(np.asarray(load_image(data)), np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    assert pixels(decode_image(photo)) == pixels(photo)  # a PIL image cell


# ---- failures and their reasons ----


@pytest.mark.parametrize(
    ("cell", "reason"),
    [
        (None, "missing image"),
        ({"bytes": None, "path": None}, "missing image"),
        (b"", "empty file"),
        ({"bytes": b"", "path": "x.jpg"}, "empty file"),
        (b"not an image", "undecodable image"),
        ({"bytes": truncated_jpeg(), "path": None}, "truncated image"),
        ("/nonexistent/picture.png", "missing file"),
        (12, "undecodable image (a int cell)"),
    ],
)
def test_reasons(cell, reason):
    with pytest.raises(BadImageError) as caught:
        load_image(cell)
    assert caught.value.reason == reason
    assert decode_image(cell) is None


def test_empty_file_on_disk(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(BadImageError, match="empty file"):
        load_image(str(tmp_path / "empty.png"))
    (tmp_path / "ok.png").write_bytes(encoded(row("L", [9])))
    assert pixels(load_image({"bytes": None, "path": str(tmp_path / "ok.png")})) == [(9, 9, 9)]


def test_decompression_bombs_refused_quietly_from_the_header(monkeypatch):
    limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # above twice the limit PIL raises DecompressionBombError; above the limit it warns
        for width, height in ((100_000, 100_000), (10_000, 10_000)):
            assert width * height > limit
            with pytest.raises(BadImageError) as error:
                load_image(png_header(width, height))
            assert error.value.reason == f"decompression bomb ({width}×{height} > {limit} pixels)"
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert Image.MAX_IMAGE_PIXELS == limit  # PIL's global setting is read, never changed

    def no_decoding(self):
        raise AssertionError("a bomb's pixels were decoded")

    small = encoded(row("L", [1] * 40))  # 40 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 30)
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(BadImageError, match=r"decompression bomb \(40×1 > 30 pixels\)"):
        load_image(small)
    # a map cell is refused the same way (the decoder reports it as malformed)
    assert decode_label_map({"bytes": small, "path": None}) is None


def test_jpeg_draft_decoding_is_opt_in_and_keeps_the_sides_at_least_the_minimum():
    """`jpeg_draft_min_side` decodes a JPEG at a reduced DCT scale (PIL's `draft`) only when asked, never below the
    minimum side; PNGs (the pinned losses' images) are decoded at full size either way."""
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    jpeg, png = encoded(photo, "JPEG"), encoded(photo, "PNG")
    assert load_image(jpeg).size == (400, 300)
    assert load_image(jpeg, jpeg_draft_min_side=100).size == (200, 150)  # 1/2: 1/4 would make 75 < 100 rows
    assert load_image(jpeg, jpeg_draft_min_side=30).size == (50, 38)  # 1/8, the strongest scale
    assert load_image(jpeg, jpeg_draft_min_side=300).size == (400, 300)
    assert load_image(png, jpeg_draft_min_side=30).size == (400, 300)


def test_the_stream_decodes_jpegs_with_the_draft_side_it_is_given():
    import datasets
    import torch

    from hf_masked_vl.data.streaming import ImageTextStream

    photo = Image.fromarray(np.random.default_rng(1).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    records = [{"image": {"bytes": encoded(photo, "JPEG"), "path": None}}]
    source = datasets.IterableDataset.from_generator(lambda: iter(records))

    def sizes(side):
        transform = lambda image, rng, maps: {"size": torch.tensor(image.size)}  # noqa: E731
        stream = ImageTextStream(source, transform, caption_column=None, shuffle_buffer=0, jpeg_draft_min_side=side)
        return [example["size"].tolist() for example in stream]

    assert sizes(None) == [[400, 300]]
    assert sizes(100) == [[200, 150]]
