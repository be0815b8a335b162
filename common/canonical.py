"""The canonical dataset: its schema and its one reader.

Every converter (``datasets/``) writes, and every trainer, evaluator and report reads, one folder layout::

    OUT/masses.json            COCO detection file of the masses (category 1 "mass")
    OUT/calcifications.json    COCO file of the calcification components (category 1 "calcification")
    OUT/calc_masks/<stem>.png  uint8 calcification mask per image (0/255), original image frame
    OUT/split.json             patient id -> "train" | "val" | "test"
    OUT/conversion_report.json what the converter skipped or fixed, with the reason

Image records carry ``id``, ``file_name`` (relative to OUT or absolute), ``height``, ``width``, ``stem``
(unique in the folder), ``patient_id``, ``laterality``, ``view``, ``pixel_spacing`` ([row_mm, col_mm] or
None), ``density`` and ``split``; calcification records add ``mask_file``. Boxes are COCO
``[x, y, w, h]`` in original image pixels (top-left origin); calcification annotations add
``calc_type`` (one of :data:`CALC_TYPES`) and ``point`` ([x, y] of a pixel inside the component).

This module depends on nothing but ``common``: the models read datasets through it, the converters in
``datasets/`` write them with the same constants.
"""

from __future__ import annotations

from pathlib import Path

from common.calcifications import CALC_TYPES
from common.errors import InputError
from common.io import read_json

__all__ = [
    "ALL",
    "BOX_MODE_XYWH_ABS",
    "CALC_CATEGORIES",
    "CALC_TYPES",
    "CANONICAL_FILES",
    "KINDS",
    "MASK_DIR",
    "MASS_CATEGORIES",
    "SPLITS",
    "THING_CLASSES",
    "coco_path",
    "load_canonical_dicts",
    "read_canonical_coco",
    "resolve_file",
    "select_split",
]

SPLITS = ("train", "val", "test")
ALL = "all"  # dataset-name suffix of every image of a folder (load_canonical_dicts(split=None))
KINDS = {"mass": "masses.json", "calc": "calcifications.json"}
MASS_CATEGORIES = [{"id": 1, "name": "mass", "supercategory": "lesion"}]
CALC_CATEGORIES = [{"id": 1, "name": "calcification", "supercategory": "lesion"}]
THING_CLASSES = {"mass": ["mass"], "calc": ["calcification"]}
CANONICAL_FILES = ("masses.json", "calcifications.json", "split.json", "conversion_report.json")
MASK_DIR = "calc_masks"
BOX_MODE_XYWH_ABS = 1  # detectron2.structures.BoxMode.XYWH_ABS, without importing detectron2

_ANNOTATION_EXTRAS = (
    "calc_type",
    "point",
    "segmentation",
    "shape",
    "margins",
    "pathology",
    "contrast",
    "contrast_level",
)
_IMAGE_KEYS = ("stem", "patient_id", "laterality", "view", "pixel_spacing", "density", "split")


def resolve_file(root: str | Path, file_name: str) -> Path:
    """Absolute path of an image record's ``file_name`` (relative names are relative to ``root``)."""
    p = Path(file_name)
    return p if p.is_absolute() else Path(root) / p


def coco_path(root: str | Path, kind: str) -> Path:
    """Path of the COCO file for ``kind`` ("mass" or "calc") in a canonical folder."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    return Path(root) / KINDS[kind]


def read_canonical_coco(path: str | Path) -> dict:
    """One canonical COCO file (``masses.json`` or ``calcifications.json``) as a dict.

    Raises:
        InputError: the file is missing, not JSON, or not a COCO file (needs ``images`` and
            ``annotations`` lists).
    """
    coco = read_json(path)
    if (
        not isinstance(coco, dict)
        or not isinstance(coco.get("images"), list)
        or not isinstance(coco.get("annotations"), list)
    ):
        raise InputError(path, "not a COCO file (needs 'images' and 'annotations' lists)")
    return coco


def select_split(coco: dict, split: str | None, image_ids=None) -> dict:
    """The COCO dict restricted to the images of ``split`` (None = all) or of ``image_ids``."""
    keep = [
        im
        for im in coco["images"]
        if (split is None or im.get("split") == split) and (image_ids is None or im["id"] in image_ids)
    ]
    ids = {im["id"] for im in keep}
    return {**coco, "images": keep,
            "annotations": [a for a in coco["annotations"] if a["image_id"] in ids]}


def load_canonical_dicts(
    root: str | Path, kind: str = "mass", split: str | None = None
) -> list[dict]:
    """Detectron2 standard dataset dicts of one kind (and optionally one split) of a canonical folder.

    Args:
        root: canonical dataset folder (holds ``masses.json`` / ``calcifications.json``).
        kind: "mass" or "calc".
        split: "train", "val", "test" or None for every image.

    Returns:
        One dict per image: ``file_name`` (absolute path of the DICOM/PNG/TIFF), ``image_id`` (the COCO
        image id), ``height``, ``width``, ``stem``, ``patient_id``, ``laterality``, ``view``,
        ``pixel_spacing``, ``density``, ``split`` (and ``pathology`` when known); for "calc" also
        ``mask_file`` (absolute path or None). ``annotations`` is a list of
        ``{"bbox": [x, y, w, h] (float, original image pixels, top-left origin), "bbox_mode": 1
        (XYWH_ABS), "category_id": 0}``; calcification annotations add ``calc_type`` and ``point``
        ([x, y] of one pixel inside the component); mass annotations keep ``segmentation`` and extras
        (shape, pathology, ...) when present.

    Raises:
        InputError: the COCO file is missing or malformed.
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    root = Path(root).resolve()
    coco = read_canonical_coco(coco_path(root, kind))

    by_image: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        out = {
            "bbox": [float(v) for v in ann["bbox"]],
            "bbox_mode": BOX_MODE_XYWH_ABS,
            # COCO category ids start at 1, detectron2's at 0
            "category_id": int(ann.get("category_id", 1)) - 1,
        }
        for key in _ANNOTATION_EXTRAS:
            if ann.get(key) is not None:
                out[key] = ann[key]
        by_image.setdefault(ann["image_id"], []).append(out)

    dicts = []
    for im in coco["images"]:
        if split is not None and im.get("split") != split:
            continue
        rec = {
            "file_name": str(resolve_file(root, im["file_name"])),
            "image_id": im["id"],
            "height": int(im["height"]),
            "width": int(im["width"]),
        }
        for key in _IMAGE_KEYS:
            rec[key] = im.get(key)
        if "pathology" in im:
            rec["pathology"] = im["pathology"]
        if kind == "calc":
            mask = im.get("mask_file")
            rec["mask_file"] = str(resolve_file(root, mask)) if mask else None
        rec["annotations"] = by_image.get(im["id"], [])
        dicts.append(rec)
    return dicts
