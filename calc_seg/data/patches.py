"""Pre-processed image cache and the patch index (paper §4.2.1).

Pre-processing (``common.preprocess``: window, breast region, artifact removal) and label processing
(:mod:`calc_seg.data.labels`) run once per image; the results are cached as ``.npy`` files that training
memory-maps, so no DICOM is read again. The patch index lists every ``size x size`` window at ``stride``
over each image (the last window of a row/column is aligned with the image edge), drops windows whose
image content is all zero (outside the breast after pre-processing) and records for each window whether
it holds a processed (grown) calcification label and whether it touches an excluded vessel / large region.
The index is cached too, keyed by a hash of the images' cache keys and the patch parameters.

Frames: all arrays are in the original image frame, (H, W), rows = y, columns = x; patch positions are
the top-left corner ``(y, x)`` in that frame.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from calc_seg.data.labels import LabelParams, process_mask
from common.errors import InputError
from common.io import atomic_write_bytes, atomic_write_json, read_json, read_png
from common.preprocess import preprocess

CACHE_VERSION = 3  # bump when the cached arrays change meaning
_ARRAYS = ("image", "breast", "gt", "train_mask", "excluded")

PATCH_DTYPE = np.dtype(
    [("study", np.int32), ("y", np.int32), ("x", np.int32), ("positive", bool), ("excluded", bool),
     ("pos_pixels", np.int32)]
)


def hash_key(obj) -> str:
    """Short stable hash of a JSON-able object (cache keys)."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _file_sig(path: str | None) -> list | None:
    if not path:
        return None
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    return [str(Path(path).resolve()), st.st_size, int(st.st_mtime_ns)]


@dataclass
class Study:
    """One cached, pre-processed image. Arrays are memory-mapped read-only (H, W).

    image: uint8 windowed image with background / artifacts handled (``common.preprocess``).
    breast: bool breast region. gt: bool original (raw) ground truth. train_mask: bool processed labels
    (small components grown to the minimum area, ``common.calcifications``): the training target and the
    default IoP ground truth. excluded: bool pixels of vessel / large components (grown extent).
    min_area: the minimum area in pixels applied to this image.
    components: :class:`calc_seg.data.labels.ProcessedLabels` components (type, bbox, point, area).
    """

    stem: str
    folder: Path
    height: int
    width: int
    components: list
    record: dict
    min_area: int = 0

    def array(self, name: str) -> np.ndarray:
        if name not in _ARRAYS:
            raise KeyError(name)
        cache = self.__dict__.setdefault("_mmaps", {})
        if name not in cache:
            cache[name] = np.load(self.folder / f"{name}.npy", mmap_mode="r")
        return cache[name]

    def __getstate__(self):  # DataLoader workers re-open the memory maps
        state = dict(self.__dict__)
        state.pop("_mmaps", None)
        return state

    @property
    def types(self) -> list[dict]:
        """``[{"type", "point"}]`` per component, the form ``common.metrics.evaluate_masks`` takes."""
        return [{"type": c["type"], "point": c["point"]} for c in self.components]


def load_image(path: str | Path, remove_artifacts: bool = True):
    """``common.preprocess.preprocess`` of one file: (uint8 image, bool breast mask, record)."""
    p = preprocess(str(path), remove_artifacts=remove_artifacts, normalize_laterality=False)
    return np.asarray(p.image, dtype=np.uint8), np.asarray(p.breast_mask, dtype=bool), p.record


def _read_mask(path: str | None, shape: tuple[int, int]) -> np.ndarray:
    if not path:
        return np.zeros(shape, dtype=bool)
    m = read_png(path)
    if m.ndim == 3:
        m = m[..., 0]
    if m.shape != shape:
        raise InputError(path, f"mask size {m.shape} differs from the image size {shape}")
    return m > 0


def load_study(
    record: dict,
    cache_dir: str | Path,
    params: LabelParams | None = None,
    remove_artifacts: bool = True,
) -> Study:
    """Pre-process one dataset record (``common.canonical.load_canonical_dicts(root, "calc")``) or read
    it from ``cache_dir``.

    The cache entry is keyed by the image and mask files (path, size, mtime), the label parameters and
    ``remove_artifacts``; it is written atomically (arrays first, ``meta.json`` last).
    """
    params = params or LabelParams()
    key = hash_key(
        [CACHE_VERSION, _file_sig(record["file_name"]), _file_sig(record.get("mask_file")),
         asdict(params), remove_artifacts, record.get("annotations", [])]
    )
    folder = Path(cache_dir) / "studies" / f"{record['stem']}-{key}"
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        image, breast, prep_record = load_image(record["file_name"], remove_artifacts)
        gt = _read_mask(record.get("mask_file"), image.shape)
        spacing = record.get("pixel_spacing") or (prep_record.get("meta") or {}).get("pixel_spacing")
        lab = process_mask(gt, params, record.get("annotations"), pixel_spacing=spacing)
        arrays = {"image": image, "breast": breast, "gt": gt, "train_mask": lab.train_mask,
                  "excluded": lab.excluded}
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.save(buf, np.ascontiguousarray(arr))
            atomic_write_bytes(folder / f"{name}.npy", buf.getvalue())
        atomic_write_json(
            meta_path,
            {"stem": record["stem"], "height": int(image.shape[0]), "width": int(image.shape[1]),
             "components": lab.components, "min_area": lab.min_area, "preprocess": prep_record,
             "key": key},
        )
    meta = read_json(meta_path)
    rec = {k: v for k, v in record.items() if k != "annotations"}
    return Study(record["stem"], folder, meta["height"], meta["width"], meta["components"], rec,
                 int(meta.get("min_area", 0)))


def patch_starts(length: int, size: int, stride: int) -> list[int]:
    """Window starts along one axis: 0, stride, 2*stride, ... and a last one flush with the edge.

    An axis shorter than ``size`` gets the single start 0 (the patch is zero-padded).
    """
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def index_study(study: Study, study_id: int, size: int, stride: int) -> np.ndarray:
    """Patch entries (``PATCH_DTYPE``) of one study, all-zero image windows dropped.

    ``pos_pixels`` counts the processed-label pixels of the window (the training target), from which
    the trainer measures the positive-pixel fraction of its batches.
    """
    image, train, excl = study.array("image"), study.array("train_mask"), study.array("excluded")
    sat = np.pad(np.asarray(train, dtype=bool).cumsum(0, dtype=np.int64).cumsum(1), ((1, 0), (1, 0)))
    h, w = study.height, study.width
    rows = []
    for y in patch_starts(h, size, stride):
        for x in patch_starts(w, size, stride):
            win = (slice(y, y + size), slice(x, x + size))
            if not image[win].any():
                continue
            y1, x1 = min(y + size, h), min(x + size, w)
            n_pos = int(sat[y1, x1] - sat[y, x1] - sat[y1, x] + sat[y, x])
            rows.append((study_id, y, x, n_pos > 0, bool(excl[win].any()), n_pos))
    return np.array(rows, dtype=PATCH_DTYPE)


def build_patch_index(
    studies: list[Study], size: int, stride: int, cache_dir: str | Path | None = None
) -> np.ndarray:
    """Patch entries of all studies (``study`` = position in ``studies``), cached in ``cache_dir``.

    Returns a structured array with fields ``study, y, x, positive, excluded, pos_pixels`` (top-left
    corners in the original image frame). Excluded patches are kept here; :func:`select_patches` drops them for
    training and validation.
    """
    path = None
    if cache_dir is not None:
        key = hash_key([CACHE_VERSION, [s.folder.name for s in studies], size, stride])
        path = Path(cache_dir) / f"patch_index-{key}.npy"
        if path.exists():
            return np.load(path)
    parts = [index_study(s, i, size, stride) for i, s in enumerate(studies)]
    entries = np.concatenate(parts) if parts else np.zeros(0, dtype=PATCH_DTYPE)
    if path is not None:
        buf = io.BytesIO()
        np.save(buf, entries)
        atomic_write_bytes(path, buf.getvalue())
    return entries


def select_patches(entries: np.ndarray, drop_excluded: bool = True) -> np.ndarray:
    """Training / validation patches: without those touching vessel or large labels (paper §4.2.1)."""
    return entries[~entries["excluded"]] if drop_excluded else entries


def crop(array: np.ndarray, y: int, x: int, size: int) -> np.ndarray:
    """``size x size`` crop at top-left (y, x), zero-padded where it leaves the image."""
    win = np.asarray(array[y : y + size, x : x + size])
    if win.shape != (size, size):
        win = np.pad(win, ((0, size - win.shape[0]), (0, size - win.shape[1])))
    return win
