"""Patient-level train/val/test splits (paper §3.3) and ``OUT/split.json``.

Every image of one patient lands in one split, so no woman is seen in training and evaluation; the
assignment depends only on the set of patient ids and the seed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from common.canonical import SPLITS, resolve_file
from common.io import atomic_write_json, sha256_file

DEFAULT_RATIOS = (0.6, 0.2, 0.2)  # paper §3.3: 60 / 20 / 20


def patient_split(
    patient_ids: Iterable[str], seed: int, ratios: Sequence[float] = DEFAULT_RATIOS
) -> dict[str, str]:
    """Assign every patient to one split: ``{patient_id: "train" | "val" | "test"}``.

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


def assign_splits(
    images: Sequence[dict], seed: int, ratios: Sequence[float] = DEFAULT_RATIOS
) -> None:
    """Set ``split`` on every image record from :func:`patient_split` of their ``patient_id``."""
    by_patient = patient_split([im["patient_id"] for im in images], seed, ratios)
    for im in images:
        im["split"] = by_patient[str(im["patient_id"])]


def write_split_json(
    out_dir: str | Path,
    images: Sequence[dict],
    seed: int,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    hash_files: bool = True,
) -> Path:
    """Write ``OUT/split.json`` from image records that already carry ``split`` and ``patient_id``.

    The file lists the patients per split and, per image ``file_name``, its split, patient and the
    SHA-256 of the image file (None with ``hash_files=False`` or when the file is missing). Raises
    ``ValueError`` when a patient appears in two splits.
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
    shared = (
        (patients["train"] & patients["val"])
        | (patients["train"] & patients["test"])
        | (patients["val"] & patients["test"])
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
