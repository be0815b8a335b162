"""Detectron2 registration of canonical dataset folders (:mod:`common.canonical`).

A canonical folder becomes eight named datasets::

    <prefix>_mass_{train,val,test,all}   from OUT/masses.json
    <prefix>_calc_{train,val,test,all}   from OUT/calcifications.json

``all`` holds every image of the folder whatever its split: a source used entirely for training (the
paper's INbreast and BCDR, §3.3) is named as ``<prefix>_mass_all`` in ``DATASETS.TRAIN``.
Registration is idempotent, like the guard in ``register_coco_instances``: names that are already
registered are skipped, so calling it from every ``setup()`` (and every ``launch`` worker) is safe.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from detectron2.data import DatasetCatalog, MetadataCatalog

from common.canonical import ALL, KINDS, SPLITS, THING_CLASSES, coco_path, load_canonical_dicts
from common.errors import InputError

from ..config import parse_canonical_roots

__all__ = ["EVALUATOR_TYPE", "register_all", "register_canonical", "register_mass_datasets"]

EVALUATOR_TYPE = "deeplima_froc"


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


def register_mass_datasets(cfg) -> list[str]:
    """Register ``<prefix>_{mass,calc}_{train,val,test,all}`` for every ``prefix=path`` entry.

    ``<prefix>_mass_all`` is every image of the folder whatever its split, for a source used entirely
    for training (``DATASETS.TRAIN: ("cbis_ddsm_mass_train", "inbreast_mass_all", ...)``). A folder
    that does not exist is registered all the same; using one of its datasets raises one
    :class:`~common.errors.InputError` naming it. Idempotent (names already in the catalog are kept),
    so it is safe in every ``setup()``, including each worker started by
    ``detectron2.engine.launch``. Returns the registered names.
    """
    return register_all(dict(parse_canonical_roots(cfg.DATASETS.CANONICAL.ROOTS)))
