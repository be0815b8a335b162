"""Input lists for batch commands: files, folders and glob patterns, and unique output names."""

from __future__ import annotations

import glob
from collections.abc import Callable, Iterable, Sequence
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
    """Output names: the file stem, made unique with ``-2``, ``-3``... (never another input's stem,
    compared case-insensitively); see :func:`unique_output_stems`."""
    return unique_output_stems([Path(p) for p in paths])


def base_stem(path: Path) -> str:
    """The file name without an image suffix (the whole name for other suffixes)."""
    return path.stem if path.suffix.lower() in IMAGE_SUFFIXES else path.name


def unique_output_stems(
    paths: Sequence[Path],
    outputs: Callable[[str], Sequence[str]] = lambda stem: (stem,),
    reserved: Iterable[str] = (),
) -> list[str]:
    """One output stem per input, such that no two inputs share an output file name.

    ``outputs(stem)`` lists the names written for a stem in one folder (e.g. ``x.png``,
    ``x_breast.png``, ``x.json``): the namespace is those names, not the stems, so ``foo.dcm`` and
    ``foo_breast.dcm`` cannot overwrite each other's files. Names are compared case-insensitively (as
    on macOS and Windows file systems) and ``reserved`` names are never produced. Every input whose
    own stem (file name without an image suffix) is still free keeps it, in input order; the others
    get the first free ``<stem>-2``, ``<stem>-3``..., which therefore never takes the name of another
    input (``a/x.dcm``, ``b/x.dcm``, ``c/x-2.dcm`` -> ``x``, ``x-3``, ``x-2``).
    """
    claimed = {name.casefold() for name in reserved}

    def take(stem: str) -> bool:
        names = [name.casefold() for name in outputs(stem)]
        if len(set(names)) != len(names) or any(name in claimed for name in names):
            return False
        claimed.update(names)
        return True

    bases = [base_stem(Path(p)) for p in paths]
    stems: list[str | None] = [b if take(b) else None for b in bases]
    for i, base in enumerate(bases):
        n = 2
        while stems[i] is None:
            if take(f"{base}-{n}"):
                stems[i] = f"{base}-{n}"
            n += 1
    return stems  # type: ignore[return-value]
