"""Size limits of input images, checked on headers before any pixel is decoded.

An image whose header declares more than :func:`pixel_limit` pixel values (``Rows * Columns *
SamplesPerPixel * NumberOfFrames`` for DICOM, compressed or not; width x height x channels (x pages)
for PNG/TIFF) is refused, so that a small hostile file cannot make a reader allocate gigabytes. Used by
the DICOM reader (:mod:`common.dicom`) and the PNG reader (:mod:`common.io`).
"""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from common.errors import InputError

#: Default maximum number of pixel values of one image (rows x columns x samples x frames). 100 million
#: covers every real mammography detector (the largest are below 30 MP) and digitised film with room to
#: spare; 100 MP of float32 pixels is 400 MB.
DEFAULT_MAX_PIXELS = 100_000_000
#: Environment variable overriding :data:`DEFAULT_MAX_PIXELS` (a positive integer, e.g. ``2e8``).
MAX_PIXELS_ENV = "DEEPLIMA_MAX_PIXELS"


def pixel_limit(value: int | None = None) -> int:
    """The pixel-count limit in force: ``value`` when given, else ``$DEEPLIMA_MAX_PIXELS``, else
    :data:`DEFAULT_MAX_PIXELS`. A limit that is not a positive integer raises :class:`InputError`
    (without a file name)."""
    source = "max_pixels"
    if value is None:
        env = os.environ.get(MAX_PIXELS_ENV, "").strip()
        if not env:
            return DEFAULT_MAX_PIXELS
        source = f"${MAX_PIXELS_ENV}"
        try:
            value = float(env)
        except ValueError:
            value = env
    ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
    if not ok or not np.isfinite(value) or value < 1 or float(value) != int(value):
        raise InputError(None, f"{source} must be a positive integer, got {value!r}")
    return int(value)


def check_pixel_count(
    path: str | Path | None, count: int, what: str, limit: int | None = None
) -> None:
    """Raise :class:`InputError` when a header declares more than ``limit`` pixel values.

    ``what`` describes the factors, e.g. ``"65535 x 65535 x 1 sample x 1 frame"``.
    """
    limit = pixel_limit(limit)
    if count > limit:
        raise InputError(
            path,
            f"image too large: the header declares {what} = {count:,} pixel values, more than the "
            f"limit of {limit:,} (set {MAX_PIXELS_ENV} or max_pixels to raise it)",
        )


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def raster_header_size(path: str | Path) -> tuple[int, int, int, int] | None:
    """(height, width, channels, pages) of a PNG or TIFF file from its header, without decoding.

    PNG: the IHDR chunk (first 33 bytes). TIFF: tifffile's page index (``series[0]``, what
    ``tifffile.imread`` returns). Other content (e.g. a JPEG named ``.png``): PIL's lazy header
    reader. Returns None when the header cannot be read (the decoder then reports the problem).
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(33)
    if head[:8] == _PNG_SIGNATURE and len(head) >= 26 and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        return int(height), int(width), _PNG_CHANNELS.get(head[25], 4), 1
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        try:
            with tifffile.TiffFile(path) as tf:
                shape = tuple(int(v) for v in tf.series[0].shape)
        except Exception:
            return None
        if not shape:
            return None
        # shape ends with (H, W) or (H, W, S); anything before is pages / planes
        if len(shape) >= 3 and shape[-1] <= 4:
            h, w, c, pages = shape[-3], shape[-2], shape[-1], int(np.prod(shape[:-3], dtype=object))
        else:
            h, w, c = shape[-2] if len(shape) > 1 else 1, shape[-1], 1
            pages = int(np.prod(shape[:-2], dtype=object)) if len(shape) > 2 else 1
        return int(h), int(w), int(c), int(pages)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:  # lazy: reads the header only
                w, h = im.size
                c = len(im.getbands())
                pages = int(getattr(im, "n_frames", 1) or 1)
        return int(h), int(w), int(c), pages
    except Image.DecompressionBombError as e:
        # PIL refuses to even open it: far beyond its own limit (about 179 MP)
        raise InputError(path, f"image too large ({e})") from None
    except Exception:
        return None


def check_raster_size(path: str | Path, limit: int | None = None) -> None:
    """Refuse a PNG/TIFF (or other raster) whose header declares more than :func:`pixel_limit`
    pixel values, before decoding it."""
    size = raster_header_size(path)
    if size is None:
        return
    h, w, c, pages = size
    what = f"{w} x {h} pixels x {c} channel(s)" + (f" x {pages} pages" if pages > 1 else "")
    check_pixel_count(path, h * w * c * pages, what, limit)
