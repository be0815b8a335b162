"""Readers of the evaluation's files: GT masks, probability maps, prediction folders, COCO GT.

Probability PNGs are read as value / 255 (8-bit) or value / 65535 (16-bit); ``.npy`` files hold
float probabilities. A PNG holding only the values 0 and 1 (8 or 16 bit) or 0 and 255 (16 bit) is
most likely a binary mask saved without scaling (it reads as p <= 0.004, below any binarisation
threshold): it is read as it is, with a warning. Images larger than ``$DEEPLIMA_MAX_PIXELS`` pixel
values are refused from their header (:mod:`common.limits`).

Masks and maps are (H, W) arrays in the original image frame (row = y, column = x, top-left origin),
keyed by the image's stem; :class:`LazyFiles` reads them one at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from common.canonical import read_canonical_coco, resolve_file
from common.errors import InputError
from common.io import read_json, read_png
from common.limits import check_pixel_count
from common.metrics.validation import stems_of

__all__ = [
    "LazyFiles",
    "gt_masks_from_canonical",
    "gt_masks_from_dir",
    "load_gt_coco",
    "prob_map_files",
    "read_box_inputs",
    "read_gt_mask",
    "read_prob_map",
]

logger = logging.getLogger(__name__)

#: (dtype, top value) of PNGs that look like unscaled binary masks rather than probability maps
_MASK_LIKE = {np.dtype(np.uint8): (1,), np.dtype(np.uint16): (1, 255)}


class LazyFiles(Mapping):
    """Read-on-access mapping stem -> array (keeps one image in memory at a time).

    Args:
        files: stem -> whatever ``reader`` takes (a path, an image record, ...).
        reader: entry -> array.
        name: entry -> the file name shown in error messages (default ``str``).
    """

    def __init__(self, files: dict[str, Any], reader: Callable[[Any], np.ndarray],
                 name: Callable[[Any], str] | None = None):
        self._files = files
        self._reader = reader
        self._name = name or str

    def source(self, stem: str) -> str:
        """The file behind ``stem`` (for error messages)."""
        return self._name(self._files[stem])

    def __getitem__(self, stem: str) -> np.ndarray:
        return self._reader(self._files[stem])

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)


def read_gt_mask(path: str | Path) -> np.ndarray:
    """GT mask PNG -> (H, W) bool, non-zero = lesion (any channel of a colour PNG).

    A PNG whose header declares more than ``$DEEPLIMA_MAX_PIXELS`` pixel values is refused before
    decoding (:func:`common.io.read_png`).
    """
    a = read_png(path)
    return (a != 0).any(axis=2) if a.ndim == 3 else a != 0


def _warn_if_binary(path: Path, a: np.ndarray) -> None:
    """Warn about a PNG holding only {0, m}, m = 1 (8/16-bit) or 255 (16-bit): an unscaled mask."""
    tops = _MASK_LIKE.get(a.dtype, ())
    if not a.size or not tops:
        return
    top = int(a.max())
    if top in tops and not np.any((a != 0) & (a != top)):
        full = np.iinfo(a.dtype).max
        logger.warning(
            "%s: looks like a binary mask, not a probability map: a %d-bit PNG with only the "
            "values 0 and %d, read as p = %d/%d = %.4g; save masks as 0/%d or probabilities as "
            ".npy floats",
            path, a.dtype.itemsize * 8, top, top, full, top / full, full,
        )


def read_prob_map(path: str | Path) -> np.ndarray:
    """Probability map -> (H, W) float32 in [0, 1] (``.npy``: its float dtype as stored).

    ``.npy``: float array as is; 16-bit PNG: value / 65535; 8-bit PNG: value / 255. A PNG with only
    the values {0, 1} (8 or 16 bit) or {0, 255} (16 bit) is read the same way, with a warning that
    it looks like an unscaled binary mask. Images larger than ``$DEEPLIMA_MAX_PIXELS`` pixel values
    are refused from their header.
    """
    path = Path(path)
    if path.suffix.lower() == ".npy":
        try:
            a = np.load(path, allow_pickle=False, mmap_mode="r")  # header only, no allocation yet
        except (OSError, ValueError) as e:
            raise InputError(path, f"unreadable .npy ({e})") from None
        if not np.issubdtype(a.dtype, np.floating):
            raise InputError(path, f".npy probability map must be float, got {a.dtype}")
        check_pixel_count(path, int(a.size), "x".join(str(v) for v in a.shape) + " values")
        a = np.array(a)
    else:
        a = read_png(path)
        if a.ndim != 2:
            raise InputError(path, f"probability PNG must be single-channel, got shape {a.shape}")
        if a.dtype not in (np.uint8, np.uint16):
            raise InputError(path, f"unsupported PNG dtype {a.dtype}")
        _warn_if_binary(path, a)
        a = a.astype(np.float32) / float(np.iinfo(a.dtype).max)
    if a.ndim != 2:
        raise InputError(path, f"probability map must be 2-D, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise InputError(path, "probability map contains NaN or inf")
    return a


def prob_map_files(pred_dir: Path) -> dict[str, Path]:
    """stem -> ``<stem>.png`` or ``<stem>.npy`` of a prediction folder (other files are ignored).

    Raises:
        InputError: no such folder, or two files for one stem.
    """
    if not pred_dir.is_dir():
        raise InputError(pred_dir, "prediction folder not found")
    files: dict[str, Path] = {}
    for p in sorted(pred_dir.iterdir()):
        if p.suffix.lower() not in (".png", ".npy"):
            continue
        if p.stem in files:
            raise InputError(p, f"two prediction files for stem {p.stem!r} ({files[p.stem].name})")
        files[p.stem] = p
    return files


def gt_masks_from_dir(gt_dir: Path) -> LazyFiles:
    """stem -> (H, W) bool GT mask of every ``<stem>.png`` in ``gt_dir`` (read on access).

    Raises:
        InputError: no such folder, no PNG in it, or two PNGs sharing a stem.
    """
    if not gt_dir.is_dir():
        raise InputError(gt_dir, "GT folder not found")
    files: dict[str, Path] = {}
    for p in sorted(gt_dir.iterdir()):
        if p.suffix.lower() != ".png" or p.name.startswith("."):
            continue
        if p.stem in files:
            raise InputError(
                gt_dir, f"two GT masks share the stem {p.stem!r}: {files[p.stem].name} and {p.name}"
            )
        files[p.stem] = p
    if not files:
        raise InputError(gt_dir, "no GT mask PNG in folder")
    return LazyFiles(files, read_gt_mask)


def gt_masks_from_canonical(gt_json: Path, split: str | None) -> tuple[LazyFiles, dict]:
    """GT masks of a canonical ``calcifications.json`` (all its images, or those of ``split``).

    Returns:
        (stem -> (H, W) bool mask read on access, the COCO dict). An image whose ``mask_file`` is
        null is a lesion-free image: an all-False mask of its ``height`` x ``width``; relative mask
        files are relative to the JSON's folder.

    Raises:
        InputError: not a COCO file, an image without a usable stem, ``mask_file``, height or width,
            an image larger than ``$DEEPLIMA_MAX_PIXELS``, no image (in the split), or (on access) a
            mask of another size than its image record.
    """
    coco = read_canonical_coco(gt_json)
    root = gt_json.parent
    entries: dict[str, Any] = {}
    for stem, im in stems_of(coco["images"], str(gt_json), split).items():
        mf = im.get("mask_file")
        if mf is not None and (not isinstance(mf, str) or not mf):
            raise InputError(
                gt_json, f"image {im.get('id')!r}: mask_file {mf!r} is not a file name"
            )
        h, w = im.get("height"), im.get("width")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (h, w)):
            raise InputError(
                gt_json,
                f"image {im.get('id')!r}: height/width {h!r}/{w!r} are not positive integers",
            )
        check_pixel_count(f"{gt_json}: image {im.get('id')!r}", h * w, f"{w} x {h} pixels")
        entries[stem] = (resolve_file(root, mf) if mf else None, im)
    if not entries:
        raise InputError(gt_json, f"no image{'' if split is None else f' in split {split!r}'}")

    def read(entry):
        path, im = entry
        if path is None:
            return np.zeros((int(im["height"]), int(im["width"])), bool)
        m = read_gt_mask(path)
        if m.shape != (int(im["height"]), int(im["width"])):
            raise InputError(
                path,
                f"mask is {m.shape[1]}x{m.shape[0]} (WxH) but the image record says "
                f"{im['width']}x{im['height']}",
            )
        return m

    return LazyFiles(
        entries, read, name=lambda e: str(e[0] or f"{gt_json}: image {e[1].get('id')}")
    ), coco


def load_gt_coco(gt_coco: dict | str | Path) -> tuple[dict, str]:
    """(COCO ground truth dict, its name for messages) from a dict or a JSON path.

    Only the ``images`` list is required here (a detection GT may have no annotation at all);
    :func:`common.metrics.evaluate_boxes` checks every field.
    """
    if isinstance(gt_coco, str | Path):
        src = str(gt_coco)
        gt = read_json(gt_coco)
    else:
        src, gt = "ground truth", gt_coco
    if not isinstance(gt, dict) or not isinstance(gt.get("images"), list):
        raise InputError(src, "not a COCO dataset (no 'images' list)")
    return gt, src


def read_box_inputs(gt_path: Path, pred_path: Path, images_path: Path | None = None,
                    split: str | None = None) -> tuple[dict | Path, list | Path]:
    """GT and predictions of a box evaluation, with prediction image ids mapped to the GT's by stem.

    A deeplima prediction folder numbers its images 1..N in its ``images.json`` (``[{id, stem}]``),
    ids that would otherwise silently meet unrelated GT images; ``images_path`` defaults to the
    ``images.json`` beside ``pred_path`` when there is one. GT stems are the images' ``stem``, or
    the stem of their ``file_name``. With ``split`` the GT is cut to that split (canonical
    ``masses.json``) and predictions of other images are dropped.

    Returns:
        ``(gt_path, pred_path)`` unchanged when there is neither a stem mapping nor a split (plain
        COCO results: the ids are the GT's own), else ``(gt dict, predictions list)`` with the GT's
        image ids.

    Raises:
        InputError: ``split`` without ``images.json``; a split without image; a malformed
            ``images.json``; a prediction id missing from it; without ``split``, a prediction for a
            stem the GT does not hold.
    """
    if images_path is None and (pred_path.parent / "images.json").is_file():
        images_path = pred_path.parent / "images.json"
    if images_path is None and split is None:
        return gt_path, pred_path  # plain COCO results: ids are the GT's own
    gt, src = load_gt_coco(gt_path)
    predictions = read_json(pred_path)
    if images_path is None:
        raise InputError(pred_path, "--split needs the predictions' images.json (--pred-images) "
                                    "to tell which predictions belong to the split")
    by_stem = stems_of(gt["images"], src, split, file_name_stems=True)
    if split is not None:
        if not by_stem:
            raise InputError(src, f"no image of split {split!r}")
        keep = {im["id"] for im in by_stem.values()}
        gt = {**gt, "images": list(by_stem.values()),
              "annotations": [a for a in gt.get("annotations", []) if isinstance(a, dict)
                              and a.get("image_id") in keep]}
    entries = read_json(images_path)
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise InputError(images_path, "not an images.json list of {id, stem} objects")
    stem_of = {e.get("id"): e.get("stem") for e in entries}
    if not isinstance(predictions, list):
        raise InputError(pred_path, "not a COCO results list")
    mapped = []
    for p in predictions:
        pid = p.get("image_id") if isinstance(p, dict) else None
        if pid not in stem_of:
            raise InputError(pred_path, f"prediction image_id {pid!r} is not in {images_path}")
        stem = stem_of[pid]
        if stem not in by_stem:
            if split is not None:
                continue  # an image of another split
            raise InputError(pred_path, f"prediction for {stem!r} ({images_path}), an image the "
                                        "GT does not hold (--split to score one split of a shared "
                                        "folder)")
        mapped.append({**p, "image_id": by_stem[stem]["id"]})
    return gt, mapped
