"""The canonical dataset form that every converter and the synthetic generator write.

Layout of a canonical dataset folder ``OUT/``::

    masses.json          COCO detection file, category 1 = "mass"
    calcifications.json  COCO file, category 1 = "calcification", one annotation per 8-connected
                         component of the calcification mask, with ``calc_type`` and ``point``
    calc_masks/<stem>.png  uint8 0/255 calcification masks (same size as the image)
    split.json           patient-level train/val/test split with a SHA-256 per image file

Image records (shared by both COCO files) carry ``id``, ``file_name`` (relative to ``OUT`` or absolute),
``stem`` (unique, names masks and prediction files), ``height``, ``width``, ``patient_id``,
``laterality`` ("L"/"R"/None), ``view`` ("CC", "MLO", ...), ``pixel_spacing`` ([row_mm, col_mm] or None),
``density`` (BI-RADS 1-4 or None), ``split`` and, in ``calcifications.json``, ``mask_file``.
Boxes are ``[x, y, w, h]`` in original image pixels, top-left origin, x along columns.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from common.io import atomic_write_json, sha256_file

SPLITS = ("train", "val", "test")
DEFAULT_RATIOS = (0.6, 0.2, 0.2)  # paper §3.3: 60 / 20 / 20
CALC_TYPES = ("dot", "vessel", "large")
MASS_CATEGORIES = [{"id": 1, "name": "mass", "supercategory": "lesion"}]
CALC_CATEGORIES = [{"id": 1, "name": "calcification", "supercategory": "lesion"}]


def patient_split(
    patient_ids: Iterable[str], seed: int, ratios: Sequence[float] = DEFAULT_RATIOS
) -> dict[str, str]:
    """Assign every patient to one split.

    The unique ids are sorted, shuffled with ``numpy.random.default_rng(seed)`` and cut by ``ratios``
    (rounded, remainder to the last split), so the result depends only on the set of ids and the seed.
    """
    if len(ratios) != 3 or any(r < 0 for r in ratios) or not np.isclose(sum(ratios), 1.0):
        raise ValueError(f"ratios must be three non-negative numbers summing to 1, got {ratios}")
    ids = sorted({str(p) for p in patient_ids})
    order = np.random.default_rng(seed).permutation(len(ids))
    n_train = int(round(ratios[0] * len(ids)))
    n_val = int(round(ratios[1] * len(ids)))
    n_val = min(n_val, len(ids) - n_train)
    out = {}
    for rank, idx in enumerate(order):
        out[ids[idx]] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return out


def resolve_file(root: str | Path, file_name: str) -> Path:
    """Absolute path of an image record's ``file_name`` (relative names are relative to ``root``)."""
    p = Path(file_name)
    return p if p.is_absolute() else Path(root) / p


def write_split_json(
    out_dir: str | Path,
    images: Sequence[dict],
    seed: int,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    hash_files: bool = True,
) -> Path:
    """Write ``OUT/split.json`` from image records that already carry ``split`` and ``patient_id``.

    Raises ``ValueError`` when a patient appears in two splits.
    """
    out_dir = Path(out_dir)
    patients: dict[str, set[str]] = {s: set() for s in SPLITS}
    files = {}
    for im in images:
        patients[im["split"]].add(str(im["patient_id"]))
        path = resolve_file(out_dir, im["file_name"])
        files[im["file_name"]] = {
            "split": im["split"],
            "patient_id": str(im["patient_id"]),
            "sha256": sha256_file(path) if hash_files and path.exists() else None,
        }
    shared = (patients["train"] & patients["val"]) | (patients["train"] & patients["test"]) | (
        patients["val"] & patients["test"]
    )
    if shared:
        raise ValueError(f"patients in more than one split: {sorted(shared)[:5]}")
    return atomic_write_json(
        out_dir / "split.json",
        {
            "seed": seed,
            "ratios": list(ratios),
            "patients": {s: sorted(patients[s]) for s in SPLITS},
            "images": files,
        },
    )
