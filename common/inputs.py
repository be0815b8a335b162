"""Input lists for batch commands: files, folders and glob patterns, and unique output names."""

from __future__ import annotations

import glob
from collections.abc import Iterable, Sequence
from pathlib import Path

# Image files picked up when a folder is given. Files without a suffix (common for DICOM) are read
# when named directly.
IMAGE_SUFFIXES = {".dcm", ".dicom", ".png", ".tif", ".tiff", ".jpg", ".jpeg"}


def collect_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files from paths, folders (searched recursively for image suffixes, sorted) and glob patterns,
    in the order given, without duplicates. A path that does not exist and is not a glob matching
    something is kept, so that the batch command reports it as a failure."""
    out: list[Path] = []
    seen: set[Path] = set()

    def add(p: Path):
        key = p.resolve() if p.exists() else p
        if key not in seen:
            seen.add(key)
            out.append(p)

    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."):
                    add(f)
        elif not p.exists() and glob.has_magic(str(item)):
            matches = sorted(glob.glob(str(item), recursive=True))
            for m in matches:
                mp = Path(m)
                for f in collect_inputs([mp]) if mp.is_dir() else [mp]:
                    add(f)
            if not matches:
                add(p)
        else:
            add(p)
    return out


def unique_stems(paths: Sequence[Path]) -> list[str]:
    """Output names: the file stem, made unique with ``-2``, ``-3``... when two inputs share one."""
    seen: dict[str, int] = {}
    stems = []
    for p in paths:
        stem = p.stem if p.suffix.lower() in IMAGE_SUFFIXES else p.name
        n = seen.get(stem, 0) + 1
        seen[stem] = n
        stems.append(stem if n == 1 else f"{stem}-{n}")
    return stems
