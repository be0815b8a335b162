"""Register the canonical dataset folders named in ``cfg.DATASETS.CANONICAL.ROOTS``."""

from __future__ import annotations

from datasets.register import register_canonical

from ..config import parse_canonical_roots

__all__ = ["register_mass_datasets"]


def register_mass_datasets(cfg) -> list[str]:
    """Register ``<prefix>_{mass,calc}_{train,val,test,all}`` for every ``prefix=path`` entry.

    ``<prefix>_mass_all`` is every image of the folder whatever its split, for a source used entirely
    for training (``DATASETS.TRAIN: ("cbis_ddsm_mass_train", "inbreast_mass_all", ...)``). A folder
    that does not exist is registered all the same; using one of its datasets raises one
    :class:`~common.errors.InputError` naming it. Idempotent (names already in the catalog are kept), so it is safe in every ``setup()``, including
    each worker started by ``detectron2.engine.launch``. Returns the registered names.
    """
    names: list[str] = []
    for prefix, root in parse_canonical_roots(cfg.DATASETS.CANONICAL.ROOTS):
        names += register_canonical(root, prefix)
    return names
