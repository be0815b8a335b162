"""Detectron2 registration of canonical dataset folders.

A canonical folder (see :mod:`datasets.canonical`) becomes eight named datasets::

    <prefix>_mass_{train,val,test,all}   from OUT/masses.json
    <prefix>_calc_{train,val,test,all}   from OUT/calcifications.json

``all`` holds every image of the folder whatever its split: a source used entirely for training (the
paper's INbreast and BCDR, §3.3) is named as ``<prefix>_mass_all`` in ``DATASETS.TRAIN``.

:func:`load_canonical_dicts` builds Detectron2's standard dataset dicts without importing detectron2
(``bbox_mode`` is the integer value of ``BoxMode.XYWH_ABS``), so ``calc_seg`` can use it too.
:func:`register_canonical` imports detectron2 lazily and is idempotent, like the guard in
``register_coco_instances``: names that are already registered are skipped, so calling it from every
``setup()`` (and every ``launch`` worker) is safe.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from common.errors import InputError
from common.io import read_json
from datasets.canonical import SPLITS, resolve_file

BOX_MODE_XYWH_ABS = 1  # detectron2.structures.BoxMode.XYWH_ABS
KINDS = {"mass": "masses.json", "calc": "calcifications.json"}
ALL = "all"  # dataset-name suffix of every image of a folder (load_canonical_dicts(split=None))
THING_CLASSES = {"mass": ["mass"], "calc": ["calcification"]}
EVALUATOR_TYPE = "deeplima_froc"
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


def coco_path(root: str | Path, kind: str) -> Path:
    """Path of the COCO file for ``kind`` ("mass" or "calc") in a canonical folder."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    return Path(root) / KINDS[kind]


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
    path = coco_path(root, kind)
    coco = read_json(path)
    if not isinstance(coco, dict) or "images" not in coco or "annotations" not in coco:
        raise InputError(path, "not a COCO file (needs 'images' and 'annotations')")

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


def _load_registered(
    name: str, prefix: str, root: Path, kind: str, split: str | None
) -> list[dict]:
    """Loader behind a registered name: a missing folder is one error naming it and the dataset."""
    if not root.is_dir():
        raise InputError(
            root,
            f"canonical dataset folder not found (dataset '{name}' reads it); write it with a "
            f"converter (python -m datasets.<source> --root RAW --out {root}) or register "
            f"'{prefix}' with an existing canonical folder",
        )
    return load_canonical_dicts(root, kind, split)


def register_canonical(root: str | Path, prefix: str) -> list[str]:
    """Register ``<prefix>_{mass,calc}_{train,val,test,all}`` from a canonical folder.

    ``all`` is every image of the folder whatever its split. Loading is lazy: the COCO files are read
    when the dataset is first used, so a folder that does not exist yet can be registered, and using
    one of its datasets raises one :class:`~common.errors.InputError` naming the folder and the
    dataset. Metadata: ``thing_classes`` (["mass"] / ["calcification"]), ``json_file``, ``root``,
    ``evaluator_type`` "deeplima_froc".
    Names already in the catalog are left alone. Returns every name of the eight, registered now or
    before, ordered by kind then ``train, val, test, all``.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    root = Path(root).resolve()
    names = []
    for kind in KINDS:
        for split in (*SPLITS, ALL):
            name = f"{prefix}_{kind}_{split}"
            names.append(name)
            if name in DatasetCatalog.list():
                continue
            images = None if split == ALL else split
            DatasetCatalog.register(
                name,
                lambda n=name, p=prefix, r=root, k=kind, s=images: _load_registered(n, p, r, k, s),
            )
            MetadataCatalog.get(name).set(
                thing_classes=list(THING_CLASSES[kind]),
                json_file=str(coco_path(root, kind)),
                root=str(root),
                evaluator_type=EVALUATOR_TYPE,
            )
    return names


def register_all(roots: Mapping[str, str | Path]) -> list[str]:
    """Register several canonical folders, ``{prefix: root}``; returns every dataset name."""
    names = []
    for prefix, root in roots.items():
        names += register_canonical(root, prefix)
    return names
