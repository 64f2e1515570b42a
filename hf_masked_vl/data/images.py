"""Image cells to RGB: every PIL mode converted by its real value range, EXIF orientation applied, decompression bombs
refused by PIL's own limit, and a named reason for every image that cannot be used.

Conversion rules (`to_rgb`):
    - `1`, `L`, `P`, `RGB`, `RGBX`, `CMYK`, `YCbCr`, `LAB`, `HSV`: PIL's own conversion to RGB (`CMYK` naively, without
      an ICC profile: (255 − C)(255 − K) / 255; `LAB` colorimetrically, D50).
    - Transparency of any kind (`RGBA`, `LA`, `PA`, premultiplied `RGBa` / `La`, a palette with transparent entries,
      a `tRNS` colour key) is composited over a **white** background: out = (c·a + 255·(255 − a)) / 255, rounded. White,
      not black, because a transparent background is what a page shows as white (logos, icons, product shots); what the
      hidden colour of a transparent pixel happens to be (often black) is not image content.
    - 16-bit grey (`I;16`, `I;16L`, `I;16B`, `I;16N`): value / 257, rounded (0 → 0, 65535 → 255).
    - 32-bit integer `I`: treated as 16-bit (value / 257) when all values lie in 0..65535 (what PNG / TIFF 16-bit files
      give); otherwise stretched min → 0, max → 255 (a constant image → 0).
    - 32-bit float `F`: value · 255 when all values lie in [0, 1]; otherwise stretched min → 0, max → 255 (a constant
      image → 0); NaN or infinite values make the image unusable.
    - Any other mode: `unsupported image mode X`.
    Grey results are repeated on the three channels. PIL itself reduces 16-bit RGB(A) PNGs to 8 bits (high byte) when
    it opens them. Multi-frame files (GIF, TIFF, APNG) give their first frame.

EXIF orientation (tags 2–8) is applied with `ImageOps.exif_transpose` before the conversion, so a photo stored sideways
with a rotation tag comes out upright (images without the tag are unchanged).

Decompression bombs: an image whose declared size exceeds `PIL.Image.MAX_IMAGE_PIXELS` (PIL's
`DecompressionBombWarning`; above twice the limit PIL raises `DecompressionBombError`) is refused from its header,
before any pixel is decoded, with the reason `decompression bomb (W×H > limit pixels)`. The global limit is read, never
changed (set it to None to disable the check); the warning is not shown for each such image.

Hostile files: an image cell that names a file is read by `read_image_file`, which opens it without blocking
(`O_NONBLOCK`: a FIFO with no writer cannot hang the open), refuses anything but a regular file (`/dev/zero`, a FIFO, a
directory, a socket: `not a regular file (character device)`, ...) and any file or in-cell encoding over `max_bytes`
(`DEFAULT_MAX_IMAGE_BYTES`, 64 MiB: `image file too large (N bytes > M)`), and reads at most `max_bytes` + 1 bytes.
Those bytes are then all that is decoded and fingerprinted: a file is read once. A decoded image with no pixel
(0 × N) is refused too (`zero-size image (W×H)`).
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from .records import BadRecordError

# modes PIL converts to RGB itself (transparency, when present, is composited over white first)
PIL_CONVERTED_MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
SUPPORTED_MODES = (*PIL_CONVERTED_MODES, *SIXTEEN_BIT_MODES, "I", "F")
BACKGROUND = (255, 255, 255)
DEFAULT_MAX_IMAGE_BYTES = 64 * 1024 * 1024  # 64 MiB: far above any photo, far below what would exhaust memory
_FILE_KINDS = (
    (stat.S_ISDIR, "directory"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISSOCK, "socket"),
)


class BadImageError(BadRecordError):
    """An image cell that cannot be used; `reason` says why (`truncated image`, `decompression bomb (...)`, ...)."""


def _bomb_reason(size: tuple[int, int] | None) -> str:
    limit = Image.MAX_IMAGE_PIXELS
    declared = f"{size[0]}×{size[1]}" if size is not None else "declared size"
    return f"decompression bomb ({declared} > {limit} pixels)"


def _declared_size(error: BaseException) -> tuple[int, int] | None:
    """The size of the image PIL was opening when it raised `error` (PIL's bomb error names pixels, not the size)."""
    trace = error.__traceback__
    while trace is not None:
        frame = trace.tb_frame
        if frame.f_globals.get("__name__", "").startswith("PIL."):
            for value in frame.f_locals.values():
                if isinstance(value, Image.Image):
                    return value.size
        trace = trace.tb_next
    return None


def _failure_reason(error: Exception) -> str:
    """`truncated image` for PIL's truncation errors (`image file is truncated`, `Truncated File Read`), else
    `undecodable image (<error type>)`."""
    if isinstance(error, OSError) and "truncated" in str(error).lower():
        return "truncated image"
    return f"undecodable image ({type(error).__name__})"


@contextmanager
def _bomb_warnings_silenced() -> Iterator[None]:
    """PIL's `DecompressionBombWarning` is not shown: the size is checked, and the image refused, by the caller."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def open_image(source: str | os.PathLike | io.IOBase, jpeg_draft_min_side: int | None = None) -> Image.Image:
    """`Image.open` + `load` that refuses decompression bombs from the header (before decoding any pixel) and names
    the reason of any failure (`BadImageError`). The caller closes the image.

    `jpeg_draft_min_side` (opt-in; None: every image at its full size): a JPEG is decoded at a reduced DCT scale
    (1/2, 1/4 or 1/8, PIL's `Image.draft`), the strongest one that keeps its width and height at least this many
    pixels. Faster for large photos cut into small views, but the pixels are not those of a full decode followed by the
    views' resize (the decoder's scaled IDCT averages differently, and the crops are drawn on the smaller size): a
    run with it is not bit-identical to one without. Other formats are decoded as always."""
    with _bomb_warnings_silenced():
        try:
            image = Image.open(source)
        except Image.DecompressionBombError as error:
            raise BadImageError(_bomb_reason(_declared_size(error))) from None
        except FileNotFoundError:
            raise BadImageError("missing file") from None
        except UnidentifiedImageError:
            raise BadImageError("undecodable image") from None
        except Exception as error:  # a plugin's own parse error (struct.error, ValueError, OSError, ...)
            raise BadImageError(_failure_reason(error)) from None
        try:
            width, height = image.size
            limit = Image.MAX_IMAGE_PIXELS
            if limit is not None and max(1, width) * max(1, height) > limit:
                raise BadImageError(_bomb_reason(image.size))
            if jpeg_draft_min_side is not None and image.format == "JPEG":
                image.draft(None, (jpeg_draft_min_side, jpeg_draft_min_side))
            image.load()
        except BadImageError:
            image.close()
            raise
        except Image.DecompressionBombError as error:  # a later frame's size (GIF, ...)
            image.close()
            raise BadImageError(_bomb_reason(_declared_size(error))) from None
        except Exception as error:
            image.close()
            raise BadImageError(_failure_reason(error)) from None
    return image


def file_kind(mode: int) -> str:
    """What a `st_mode` that is not a regular file is: `directory`, `character device`, `FIFO`, ..."""
    return next((name for test, name in _FILE_KINDS if test(mode)), "special file")


def _too_large(size: int, max_bytes: int) -> BadImageError:
    return BadImageError(f"image file too large ({size} bytes > {max_bytes})")


def _special_or_unreadable(path: str | os.PathLike, error: Exception) -> BadImageError:
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        mode = stat.S_IFREG
    if not stat.S_ISREG(mode):
        return BadImageError(f"not a regular file ({file_kind(mode)})")
    return BadImageError(f"unreadable file ({type(error).__name__})")


def read_image_file(path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> bytes:
    """The bytes of the regular file at `path`, read without ever blocking on a special file and never more than
    `max_bytes` + 1 bytes. Raises `BadImageError`: `missing file`, `not a regular file (character device)` (FIFO,
    directory, ...), `image file too large (N bytes > max_bytes)`, `empty file`, `unreadable file (PermissionError)`."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        descriptor = os.open(path, flags)
    except (FileNotFoundError, NotADirectoryError):
        raise BadImageError("missing file") from None
    except (OSError, ValueError) as error:  # a socket (ENXIO), permission, a NUL in the name, ...
        raise _special_or_unreadable(path, error) from None
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise BadImageError(f"not a regular file ({file_kind(status.st_mode)})")
        if status.st_size > max_bytes:
            raise _too_large(status.st_size, max_bytes)
        chunks, remaining = [], max_bytes + 1
        while remaining > 0 and (chunk := os.read(descriptor, min(remaining, 1 << 20))):
            chunks.append(chunk)
            remaining -= len(chunk)
    except OSError as error:
        raise BadImageError(f"unreadable file ({type(error).__name__})") from None
    finally:
        os.close(descriptor)
    data = b"".join(chunks)
    if len(data) > max_bytes:  # the file grew after fstat
        raise _too_large(len(data), max_bytes)
    if not data:
        raise BadImageError("empty file")
    return data


def encoded_image(value: Any, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> bytes | Image.Image:
    """The encoded bytes of an image cell (an undecoded `datasets` dict `{"bytes", "path"}`, bytes, or a path, read
    with `read_image_file`), or the cell itself when it is a decoded PIL image. Raises `BadImageError` (`missing
    image`, `empty file`, `image file too large (...)`, the reasons of `read_image_file`, ...)."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if data is not None:
            value = data
        elif path:
            value = path
        else:
            raise BadImageError("missing image")
    if isinstance(value, (bytes, bytearray, memoryview)):
        if len(value) == 0:
            raise BadImageError("empty file")
        if len(value) > max_bytes:
            raise _too_large(len(value), max_bytes)
        return bytes(value)
    if isinstance(value, (str, os.PathLike)):
        return read_image_file(value, max_bytes)
    if value is None:
        raise BadImageError("missing image")
    raise BadImageError(f"undecodable image (a {type(value).__name__} cell)")


def exif_upright(image: Image.Image) -> Image.Image:
    """The image turned by its EXIF orientation (tags 2–8, `ImageOps.exif_transpose`); itself when it has none (or
    an unreadable EXIF block)."""
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # malformed EXIF: the pixels are still usable, upright as stored
        return image
    if orientation in range(2, 9):
        return ImageOps.exif_transpose(image)
    return image


def _grey_to_rgb(values: np.ndarray, transparent: np.ndarray | None = None) -> Image.Image:
    grey = values.astype(np.uint8)
    if transparent is not None:
        grey[transparent] = 255
    return Image.fromarray(grey).convert("RGB")


def _stretched(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high == low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.floor((values.astype(np.float64) - low) * 255.0 / (high - low) + 0.5)


def to_rgb(image: Image.Image) -> Image.Image:
    """A new RGB image from an image of any PIL mode, by the rules of the module docstring. Raises `BadImageError`
    (`unsupported image mode X`, `non-finite pixel values (mode F)`)."""
    mode = image.mode
    if mode in SIXTEEN_BIT_MODES or mode == "I":
        values = np.asarray(image).astype(np.int64)
        key = image.info.get("transparency")
        transparent = values == key if isinstance(key, int) else None
        if values.size and values.min() >= 0 and values.max() <= 65535:
            return _grey_to_rgb((values + 128) // 257, transparent)
        return _grey_to_rgb(_stretched(values), transparent)
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if not np.isfinite(values).all():
            raise BadImageError("non-finite pixel values (mode F)")
        if values.size and values.min() >= 0.0 and values.max() <= 1.0:
            return _grey_to_rgb(np.floor(values * 255.0 + 0.5))
        return _grey_to_rgb(_stretched(values))
    if mode not in PIL_CONVERTED_MODES:
        raise BadImageError(f"unsupported image mode {mode}")
    if mode == "La":  # premultiplied: PIL converts it to LA only
        image = image.convert("LA")
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def check_size(image: Image.Image) -> Image.Image:
    """The image itself; `BadImageError` (`zero-size image (W×H)`) when it has no pixel."""
    width, height = image.size
    if width <= 0 or height <= 0:
        raise BadImageError(f"zero-size image ({width}×{height})")
    return image


def load_image(
    value: Any, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES, jpeg_draft_min_side: int | None = None
) -> Image.Image:
    """An RGB image from a `datasets` image cell (undecoded dict `{"bytes", "path"}`, PIL image, bytes or path, read
    by `encoded_image` with at most `max_bytes` bytes), upright by its EXIF orientation, converted by `to_rgb`'s rules.
    `jpeg_draft_min_side`: opt-in reduced-size decoding of JPEGs (`open_image`; changes the pixels).
    Raises `BadImageError` naming the reason: `missing image`, `empty file`, `missing file`, `not a regular file
    (...)`, `image file too large (...)`, `undecodable image`, `truncated image`, `decompression bomb (W×H > limit
    pixels)`, `unsupported image mode X`, `zero-size image (W×H)`, ..."""
    if value is None:
        raise BadImageError("missing image")
    source = encoded_image(value, max_bytes)
    image = source if isinstance(source, Image.Image) else open_image(io.BytesIO(source), jpeg_draft_min_side)
    try:
        return check_size(to_rgb(exif_upright(check_size(image))))
    except BadImageError:
        raise
    except Exception as error:  # a conversion PIL refuses, a lazily loaded PIL image that turns out broken, ...
        raise BadImageError(f"undecodable image ({type(error).__name__})") from None
    finally:
        if image is not value:
            image.close()


def decode_image(value: Any, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> Image.Image | None:
    """A PIL RGB image from a `datasets` image cell (undecoded dict, PIL image, bytes or path); None if it
    cannot be used (`load_image` says why)."""
    try:
        return load_image(value, max_bytes)
    except BadImageError:
        return None


__all__ = [
    "BadImageError",
    "DEFAULT_MAX_IMAGE_BYTES",
    "SUPPORTED_MODES",
    "check_size",
    "decode_image",
    "encoded_image",
    "exif_upright",
    "file_kind",
    "load_image",
    "open_image",
    "read_image_file",
    "to_rgb",
]
