"""Checks of untrusted evaluation input: arguments, JSON fields, stems, spacings, probability maps.

Every check raises :class:`common.errors.InputError` naming the source (file or argument) for bad
input and :class:`ValueError` for a bad argument of the API, so that the command line
(:mod:`common.evaluate`) can turn either into one ``error: ...`` line. Used by
:mod:`common.metrics.evaluation` and :mod:`common.metrics.io`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import InputError

#: probabilities this far outside [0, 1] (float rounding of blended sliding windows) are clipped,
#: not refused
PROB_TOL = 1e-5


def is_number(v: Any) -> bool:
    """A real number from JSON or numpy; ``True``/``False`` and strings are not numbers."""
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)


def is_id(v: Any) -> bool:
    """An image or category id: an integer or a string (``True`` is not the id 1)."""
    return isinstance(v, int | str | np.integer) and not isinstance(v, bool)


def check_threshold(name: str, value: Any) -> float:
    """A threshold in (0, 1]; ValueError otherwise (NaN, inf, 0 and booleans included)."""
    if not is_number(value) or not 0 < float(value) <= 1:
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
    return float(value)


def check_run_args(fps: Iterable, bootstrap: Any, seed: Any) -> list[float]:
    """The FP-per-image levels as a list; ValueError for a level that is not a finite number >= 0
    or a ``bootstrap``/``seed`` that is not an integer >= 0."""
    fps = list(fps)
    if not all(is_number(v) and math.isfinite(float(v)) and v >= 0 for v in fps):
        raise ValueError(f"fps must be finite numbers >= 0, got {fps!r}")
    for name, v in (("bootstrap", bootstrap), ("seed", seed)):
        if not isinstance(v, int | np.integer) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
    return fps


def check_box(src: str, what: str, bbox: Any) -> list[float]:
    """A COCO ``bbox`` -> ``[x, y, w, h]`` floats (XYWH, image pixels); InputError unless it is 4
    finite numbers with ``w, h >= 0``."""
    if not isinstance(bbox, list | tuple | np.ndarray) or not all(is_number(v) for v in bbox):
        raise InputError(src, f"{what}: bad bbox {bbox!r} (need a list of 4 numbers [x, y, w, h])")
    b = [float(v) for v in bbox]
    if len(b) != 4 or not all(math.isfinite(v) for v in b) or b[2] < 0 or b[3] < 0:
        raise InputError(
            src, f"{what}: bad bbox {bbox!r} (need finite [x, y, w, h] with w, h >= 0)"
        )
    return b


def check_canonical_stems(coco: dict, src: str, split: str | None = None) -> dict[str, dict]:
    """stem -> image record of a canonical dataset; InputError for a missing or shared stem."""
    if not isinstance(coco.get("images"), list) or not isinstance(coco.get("annotations"), list):
        raise InputError(src, "'images' and 'annotations' must be lists")
    return stems_of(coco["images"], src, split)


def stems_of(images: list, src: str, split: str | None = None,
             file_name_stems: bool = False) -> dict[str, dict]:
    """stem -> image record of the ``images`` of ``split`` (all when None); InputError for an image
    without a stem (``file_name_stems``: the stem of ``file_name`` stands in) or two sharing one."""
    by_stem: dict[str, dict] = {}
    for i, im in enumerate(images):
        if not isinstance(im, Mapping) or not is_id(im.get("id")):
            raise InputError(src, f"images[{i}]: not an object with an integer or string 'id'")
        if split is not None and im.get("split") != split:
            continue
        stem = im.get("stem")
        file_name = im.get("file_name")
        if file_name_stems and not (isinstance(stem, str) and stem) and isinstance(file_name, str) \
                and file_name:
            stem = Path(file_name).stem
        if not isinstance(stem, str) or not stem:
            raise InputError(src, f"image {im.get('id')!r} has no 'stem' (or it is not a string)"
                             + (" nor a 'file_name'" if file_name_stems else ""))
        if stem in by_stem:
            first = by_stem[stem]

            def name(r):
                return f"image {r.get('id')!r} ({r.get('mask_file') or 'no mask_file'})"

            raise InputError(
                src, f"two images share the stem {stem!r}: {name(first)} and {name(im)}"
            )
        by_stem[stem] = im
    return by_stem


def check_types(types: Mapping, src: str) -> None:
    """Every entry must be ``{"type": str, "point": [x, y]}`` with finite coordinates."""
    for stem, points in types.items():
        if not isinstance(points, list | tuple):
            raise InputError(src, f"{stem}: expected a list of {{type, point}} records")
        for i, p in enumerate(points):
            pt = p.get("point") if isinstance(p, Mapping) else None
            ok = isinstance(p, Mapping) and isinstance(p.get("type"), str)
            ok = ok and isinstance(pt, list | tuple) and len(pt) == 2
            if ok:
                ok = all(is_number(v) and math.isfinite(float(v)) for v in pt)
            if not ok:
                raise InputError(
                    src, f"{stem}[{i}]: expected {{\"type\": str, \"point\": [x, y]}}, got {p!r}"
                )


def spacing_of(spacing: Any, stem: str) -> tuple[float, float] | None:
    """(row_mm, col_mm) or None from a float, a pair, or a dict stem -> pair."""
    if spacing is None:
        return None
    if isinstance(spacing, Mapping):
        return spacing_of(spacing.get(stem), stem)
    if is_number(spacing):
        pair = (float(spacing), float(spacing))
    elif (
        isinstance(spacing, list | tuple | np.ndarray)
        and len(spacing) == 2
        and all(is_number(v) for v in spacing)
    ):
        pair = (float(spacing[0]), float(spacing[1]))
    else:
        raise InputError(
            stem, f"pixel spacing {spacing!r} is not a number or a [row_mm, col_mm] pair"
        )
    if not all(math.isfinite(v) and v > 0 for v in pair):
        raise InputError(stem, f"pixel spacing {spacing!r} must be finite and > 0")
    return pair


def check_prob(stem: str, prob: Any, shape: tuple[int, int],
               gt_src: str = "the GT mask") -> np.ndarray:
    """A probability map -> (H, W) float array in [0, 1], the GT's pixel frame.

    Values within :data:`PROB_TOL` outside [0, 1] are clipped; InputError for another shape than
    ``shape`` (H, W), a non-float dtype, NaN/inf or values further outside [0, 1].
    """
    prob = np.asarray(prob)
    if prob.ndim != 2:
        raise InputError(stem, f"probability map must be 2-D, got shape {prob.shape}")
    if prob.shape != tuple(shape):
        raise InputError(
            stem,
            f"probability map is {prob.shape[1]}x{prob.shape[0]} (WxH) but the GT "
            f"{gt_src} is {shape[1]}x{shape[0]} (WxH)",
        )
    if not np.issubdtype(prob.dtype, np.floating):
        raise InputError(stem, f"probability map must be float in [0, 1], got {prob.dtype}")
    if not np.isfinite(prob).all():
        raise InputError(stem, "probability map contains NaN or inf")
    if prob.size:
        lo, hi = float(prob.min()), float(prob.max())
        if lo < -PROB_TOL or hi > 1 + PROB_TOL:
            raise InputError(stem, f"probabilities outside [0, 1] (min {lo}, max {hi})")
        if lo < 0 or hi > 1:  # rounding of blended windows; harmless
            prob = np.clip(prob, 0, 1)
    return prob
