"""Input lists for batch commands: files, folders and glob patterns, the mammograms among them, and
unique output names.

Two ways to list inputs:

* :func:`collect_inputs`: the files, as given or found in folders (no header is read);
* :func:`select_inputs`: the same files split into the images to predict on and the files skipped,
  each with a one-line reason (DICOM SEG, SR, FOR PROCESSING mammograms, ROI masks and lesion
  crops stored as Secondary Capture, other modalities...; rule in
  :func:`common.dicom.mammogram_skip_reason`).

DICOM files are recognised by their content (128-byte preamble then ``DICM``), whatever their
suffix, so that a folder of suffix-less DICOM files (as PACS exports often are) is found. Folders
are searched recursively for DICOM files and for files with an image suffix
(:data:`IMAGE_SUFFIXES`); hidden files are left out. Callers that write PNG files of their own
beside the inputs leave those out themselves (``deeplima.writer`` does).

:func:`group_by_study` groups DICOM files by Study Instance UID with each image's laterality and view.
"""

from __future__ import annotations

import glob
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.dicom import image_identity, mammogram_skip_reason, read_dicom_header, sop_class_uid
from common.errors import InputError

# Image files picked up in a folder by their suffix; DICOM files are also picked up by content.
IMAGE_SUFFIXES = {".dcm", ".dicom", ".png", ".tif", ".tiff", ".jpg", ".jpeg"}
#: Suffixes of plain raster images (processed when found or given; no header to select on).
RASTER_SUFFIXES = IMAGE_SUFFIXES - {".dcm", ".dicom"}
#: DICOM Part 10 files start with a 128-byte preamble followed by these four bytes.
DICOM_MAGIC_OFFSET, DICOM_MAGIC = 128, b"DICM"


def is_dicom_file(path: str | Path) -> bool:
    """True when the file starts like a DICOM Part 10 file (128-byte preamble, then ``DICM``);
    False for anything else, unreadable files included."""
    try:
        with open(path, "rb") as f:
            head = f.read(DICOM_MAGIC_OFFSET + len(DICOM_MAGIC))
    except OSError:
        return False
    return head[DICOM_MAGIC_OFFSET:] == DICOM_MAGIC


def _folder_files(folder: Path) -> list[Path]:
    """Files of a folder tree (sorted) with an image suffix or DICOM content; hidden files and
    files inside hidden folders are left out."""
    found = []
    for f in sorted(folder.rglob("*")):
        rel = f.relative_to(folder).parts
        if any(part.startswith(".") for part in rel) or not f.is_file():
            continue
        if f.suffix.lower() in IMAGE_SUFFIXES or is_dicom_file(f):
            found.append(f)
    return found


def collect_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files from paths, folders (searched recursively for image suffixes and DICOM content,
    sorted) and glob patterns, in the order given, without duplicates. A path that does not exist
    and is not a glob matching something is kept, so that the batch command reports it as a
    failure."""
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
            for f in _folder_files(p):
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


@dataclass
class InputSelection:
    """What :func:`select_inputs` found: ``images`` to process, in input order, and ``skipped``
    files with a one-line reason each."""

    images: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def dicom_header(path: str | Path) -> Any | None:
    """The header of a DICOM file (recognised by content; pixel data not read, pydicom's warnings
    silenced), or None for anything else: a raster suffix, a missing file, other content, a header
    that cannot be read."""
    path = Path(path)
    if path.suffix.lower() in RASTER_SUFFIXES or not path.is_file() or not is_dicom_file(path):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return read_dicom_header(path)
    except InputError:
        return None


def skip_reason(path: str | Path) -> str | None:
    """Why a file is not an image to process (one line), or None when it is one.

    Only DICOM files (by content) are ever skipped, from their header alone (pixel data is not
    read): see :func:`common.dicom.mammogram_skip_reason`. Everything else is processed: PNG, TIFF
    and JPEG files, missing files, and files that claim to be DICOM but whose header cannot be read,
    so that the batch command reports those as failures with their reason instead of dropping them.
    A DICOM header without a SOP Class UID counts as unreadable.
    """
    ds = dicom_header(path)
    if ds is None:
        return None  # not DICOM, or a broken DICOM file: reading it for prediction reports why
    if sop_class_uid(ds) is None:
        return None  # a header that does not say what it is: broken, reported by the reader
    try:
        return mammogram_skip_reason(ds)
    except Exception:  # a header value of the wrong type: the reader reports it
        return None


def select_inputs(inputs: Iterable[str | Path]) -> InputSelection:
    """The files of :func:`collect_inputs`, split into images to process and skipped files.

    Processed: DICOM mammograms for presentation (Modality MG, Digital Mammography X-Ray Image -
    For Presentation) and Secondary Capture MG full mammograms (CBIS-DDSM); PNG/TIFF/JPEG files;
    missing or unreadable files (reported as failures by whoever reads them). Skipped, with the
    reason: every other DICOM file (FOR PROCESSING mammograms, ROI masks, lesion crops, other
    secondary captures, SEG, SR, other modalities; :func:`skip_reason`).
    """
    selection = InputSelection()
    for path in collect_inputs(inputs):
        reason = skip_reason(path)
        if reason is None:
            selection.images.append(path)
        else:
            selection.skipped.append((path, reason))
    return selection


def group_by_study(paths: Iterable[str | Path]) -> dict[str | None, list[dict[str, Any]]]:
    """DICOM files grouped by Study Instance UID, in input order.

    Each entry is ``{"path": Path, **image_identity}`` (see :func:`common.dicom.image_identity`:
    laterality from ImageLaterality or Laterality, view from ViewPosition or ViewCodeSequence,
    series / SOP / frame-of-reference UIDs, modality, SOP class, patient ID). Only headers are read.
    Files without a Study Instance UID (PNG/TIFF, unreadable or missing files, headers without one)
    are under the key None.
    """
    groups: dict[str | None, list[dict[str, Any]]] = {}
    for path in paths:
        path = Path(path)
        ds = dicom_header(path)
        identity: dict[str, Any] = image_identity(ds) if ds is not None else {}
        entry = {"path": path, **identity}
        groups.setdefault(identity.get("study_instance_uid"), []).append(entry)
    return groups


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
