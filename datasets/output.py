"""Writing a canonical folder: the COCO files, ``split.json``, ``conversion_report.json``, and the
staged output that makes a conversion all-or-nothing.

Output folder rules (every converter): ``--out`` must be missing or empty unless ``--overwrite`` is
given; a conversion is written into a hidden staging folder next to ``OUT`` and only moved into place
when it succeeded, so a failed conversion never touches ``OUT``; with ``--overwrite`` only the files the
canonical layout owns (:func:`owned_files`) are replaced or removed, anything else in ``OUT`` stays.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from common.canonical import (
    CALC_CATEGORIES,
    CALC_TYPES,
    CANONICAL_FILES,
    MASK_DIR,
    MASS_CATEGORIES,
    SPLITS,
)
from common.errors import InputError
from common.io import atomic_write_json
from datasets.splits import DEFAULT_RATIOS, write_split_json
from datasets.tables import ConversionReport


def build_coco(images: Sequence[dict], annotations: Sequence[dict], categories: list[dict]) -> dict:
    """COCO dict with annotation ids 1..N (annotations need ``image_id``, ``bbox``; ``area`` optional,
    else the box area). Every annotation gets ``category_id`` 1 and ``iscrowd`` 0."""
    anns = []
    for i, a in enumerate(annotations, start=1):
        ann = {"id": i, "image_id": a["image_id"], "category_id": 1, "iscrowd": 0}
        ann.update({k: v for k, v in a.items() if k not in ("id", "image_id")})
        ann["bbox"] = [float(v) for v in ann["bbox"]]
        ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))
        anns.append(ann)
    return {"images": list(images), "annotations": anns, "categories": categories}


def write_canonical(
    out_dir: str | Path,
    images: Sequence[dict],
    mass_annotations: Sequence[dict],
    calc_annotations: Sequence[dict],
    seed: int,
    report: ConversionReport | None = None,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    hash_files: bool = True,
    info: dict | None = None,
    prune_masks: bool = True,
) -> dict:
    """Write masses.json, calcifications.json, split.json (and conversion_report.json).

    With ``prune_masks``, PNGs under ``OUT/calc_masks`` that no image references (left by an earlier
    run into the same folder) are deleted, so the folder always describes one conversion. (The
    converters write into a fresh staging folder, see :func:`staged_output`, so for them there is
    nothing to prune.)

    ``images`` are full image records (``id``, ``file_name``, ``stem``, ``height``, ``width``,
    ``patient_id``, ``split``, ... and ``mask_file`` or None); ``mass_annotations`` /
    ``calc_annotations`` reference them by ``image_id``. Calcification records keep ``mask_file``; the
    mass file's records leave it out. Returns a summary dict.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = list(images)
    for im in images:
        if im.get("split") not in SPLITS:
            raise ValueError(f"image {im.get('stem')} has no valid split")
    calc_images = [{**im, "mask_file": im.get("mask_file")} for im in images]
    mass_images = [{k: v for k, v in im.items() if k != "mask_file"} for im in images]
    masses = build_coco(mass_images, mass_annotations, MASS_CATEGORIES)
    calcs = build_coco(calc_images, calc_annotations, CALC_CATEGORIES)
    if info:
        masses["info"] = calcs["info"] = info
    if prune_masks:  # masks left by an earlier conversion into the same folder
        keep = {Path(im["mask_file"]).name for im in images if im.get("mask_file")}
        for old in (out_dir / MASK_DIR).glob("*.png"):
            if old.name not in keep:
                old.unlink()
    atomic_write_json(out_dir / "masses.json", masses)
    atomic_write_json(out_dir / "calcifications.json", calcs)
    write_split_json(out_dir, images, seed, ratios, hash_files=hash_files)

    summary = {
        "out": str(out_dir),
        "images": len(images),
        "patients": len({im["patient_id"] for im in images}),
        "mass_annotations": len(masses["annotations"]),
        "calc_annotations": len(calcs["annotations"]),
        "images_with_masses": len({a["image_id"] for a in masses["annotations"]}),
        "images_with_calc_masks": sum(im.get("mask_file") is not None for im in images),
        "split_images": {s: sum(im["split"] == s for im in images) for s in SPLITS},
        "calc_types": {
            t: sum(a["calc_type"] == t for a in calcs["annotations"]) for t in CALC_TYPES
        },
    }
    if report is not None:
        report.save(out_dir)
        summary["dataset"] = report.dataset
        summary["problems"] = report.counts()
    return summary


# --------------------------------------------------------------------------------------------------
# The output folder


def _inside(top: Path, rel: str) -> Path | None:
    """``top / rel`` when ``rel`` is a relative path that stays inside ``top`` (lexically), else None."""
    if not rel or Path(rel).is_absolute():
        return None
    path = Path(os.path.normpath(top / rel))
    return path if os.path.commonpath([str(top), str(path)]) == str(top) and path != top else None


def owned_files(out: str | Path) -> set[Path]:
    """Files of an existing folder that the canonical layout owns (what ``--overwrite`` may replace).

    These are the four JSON files (:data:`CANONICAL_FILES`), the PNGs directly under ``calc_masks/``
    and the files the folder's COCO files reference by a relative path inside the folder (images and
    masks written into it by a converter or the synthetic generator). Absolute references (the raw
    download) and anything else in the folder are never included.
    """
    out = Path(os.path.abspath(out))
    files = {out / name for name in CANONICAL_FILES}
    if (out / MASK_DIR).is_dir() and not (out / MASK_DIR).is_symlink():
        files |= set((out / MASK_DIR).glob("*.png"))
    for name in ("masses.json", "calcifications.json"):
        try:
            coco = json.loads((out / name).read_text(encoding="utf-8"))
            records = coco["images"]
        except Exception:  # missing or not ours: it references nothing we may delete
            continue
        for im in records if isinstance(records, list) else []:
            if not isinstance(im, dict):
                continue
            for key in ("file_name", "mask_file"):
                path = _inside(out, im.get(key)) if isinstance(im.get(key), str) else None
                if path is not None:
                    files.add(path)
    real = os.path.realpath(out)

    def in_out(f: Path) -> bool:
        """Removing ``f`` only changes a folder inside OUT (not one reached through a symlink)."""
        parent = os.path.realpath(f.parent)
        return os.path.commonpath([real, parent]) == real

    return {f for f in files if (f.is_symlink() or f.is_file()) and in_out(f)}


def check_out(out: str | Path, root: str | Path | None = None, overwrite: bool = False) -> Path:
    """``out`` as a Path after the output folder rules; :class:`InputError` naming it otherwise.

    ``out`` must not exist, or be an empty folder, or (with ``overwrite``) a folder; it must not be
    the download folder ``root`` or a folder holding it.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    if root is not None:
        top, src = os.path.abspath(out), os.path.abspath(root)
        if os.path.commonpath([top, src]) == top:
            raise InputError(out, f"output folder is or holds the download folder {root}")
    if out.is_dir() and not overwrite:
        entries = sorted(p.name for p in out.iterdir())
        if entries:
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise InputError(
                out,
                f"output folder is not empty ({len(entries)} entries: {shown}); choose a new folder"
                " or pass --overwrite to replace the canonical dataset files in it",
            )
    return out


def _publish(work: Path, out: Path) -> None:
    """Move the finished conversion in ``work`` to ``out`` (see :func:`staged_output`)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(work, 0o777 & ~umask)  # mkdtemp made it 0700
    if not out.exists() or (out.is_dir() and not out.is_symlink() and not any(out.iterdir())):
        try:
            os.replace(work, out)  # atomic: OUT appears complete
            return
        except OSError:  # e.g. OUT is a mount point: move file by file below
            pass
    out.mkdir(parents=True, exist_ok=True)
    new = sorted(p.relative_to(work) for p in work.rglob("*") if p.is_file())
    for rel in new:  # check everything before moving anything
        dest = out / rel
        if dest.is_symlink() or (dest.exists() and not dest.is_file()):
            raise InputError(dest, "is not a plain file; the conversion will not replace it")
        for parent in rel.parents:
            if parent != Path(".") and (out / parent).exists() and not (out / parent).is_dir():
                raise InputError(out / parent, "is a file where the conversion needs a folder")
    stale = owned_files(out) - {Path(os.path.abspath(out / rel)) for rel in new}
    last = {"split.json": 2}  # data files first, then the JSON files, split.json last
    order = sorted(new, key=lambda r: (last.get(str(r), 1 if r.suffix == ".json" else 0), str(r)))
    for rel in order:
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(work / rel), str(dest))
    for path in stale:  # earlier canonical files the new dataset does not reference
        path.unlink(missing_ok=True)


@contextmanager
def staged_output(
    out: str | Path, root: str | Path | None = None, overwrite: bool = False
) -> Iterator[Path]:
    """Context of one conversion: yields a fresh staging folder to write the whole dataset into.

    Checks ``out`` first (:func:`check_out`). The staging folder is hidden next to ``out`` (same file
    system); when the block ends without an exception its content is moved to ``out`` (a rename of the
    whole folder when ``out`` does not exist yet); with ``overwrite``, files of ``out`` that the
    canonical layout owns (:func:`owned_files`) and the new dataset does not rewrite are removed, and
    nothing else in ``out`` is touched. On an exception ``out`` is left as it was. The staging folder is
    always removed.

    Image records must name files written into the staging folder by a path relative to it
    (``images/<stem>.png``), so they stay right after the move.
    """
    target = Path(os.path.abspath(check_out(out, root, overwrite)))
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(
        tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".converting", dir=target.parent)
    )
    try:
        yield work
        _publish(work, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
