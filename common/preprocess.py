"""The paper's pre-processing chain (Sec. 2.2.1), used by converters, training and prediction alike.

    read (DICOM + Modality LUT | PNG | TIFF) -> window (uint8, tissue bright, background 0)
    -> breast region (largest non-zero component; the rest set to 0) -> artifact columns (Eq. 5)
    -> optional laterality normalisation (chest wall on the left)

Command line::

    python -m common.preprocess FILE... --out DIR [--no-artifacts] [--normalize-laterality]

writes ``DIR/<stem>.png`` (uint8 result), ``DIR/<stem>_breast.png`` (mask, 0/255) and ``DIR/<stem>.json``
(the record: window used, artifact columns, warnings, metadata) for every good file, lists the files
that failed and exits with status 1 when any did (2: the output folder cannot be written, one
``error:`` line). Stems are the file names without suffix, made unique over every output name of the
run (``-2``, ``-3``...; see :func:`common.inputs.unique_output_stems`), so no input's outputs overwrite another's;
``DIR/stems.json`` maps each input file to its stem, with its status.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from common import artifacts
from common.breast import extract_breast
from common.dicom import LoadedImage, check_not_constant, load_image, raster_meta, window_image
from common.errors import InputError
from common.inputs import base_stem, unique_output_stems
from common.io import atomic_write_json, atomic_write_png, os_error_reason, write_together
from common.laterality import normalize_laterality as _normalize_laterality


@dataclass
class Preprocessed:
    """Result of :func:`preprocess`.

    Attributes:
        image: uint8 (H, W), windowed, non-breast pixels 0, artifact columns repaired. Original frame
            unless ``record["flipped"]`` (then flipped left-right; see :mod:`common.laterality`).
        breast_mask: bool (H, W), same frame as ``image``.
        record: json-able dict: source, shape [H, W], window {center, width, source, invert, ...},
            artifact_columns [x, ...] (original frame), artifact_details, warnings [...],
            meta {pixel_spacing, laterality, view, photometric, presentation_intent, rows, cols, ...},
            breast_fraction, flipped.
    """

    image: np.ndarray
    breast_mask: np.ndarray
    record: dict[str, Any]


def _load(source: str | Path | np.ndarray) -> LoadedImage:
    if isinstance(source, np.ndarray):
        arr = np.asarray(source)
        if arr.ndim != 2:
            raise InputError("<array>", f"expected a 2-D greyscale array, got shape {arr.shape}")
        pixels = arr.astype(np.float32)
        check_not_constant(pixels, "<array>")
        return LoadedImage(pixels=pixels, meta=raster_meta("<array>", pixels.shape))
    return load_image(source)


def preprocess(
    source: str | Path | np.ndarray,
    remove_artifacts: bool = True,
    normalize_laterality: bool = False,
    window: tuple[float, float] | None = None,
    breast_kwargs: dict | None = None,
    artifact_kwargs: dict | None = None,
) -> Preprocessed:
    """Run the whole chain on a DICOM/PNG/TIFF path or a 2-D array.

    Args:
        source: file path, or an (H, W) array of raw (Modality-LUT) values, treated as MONOCHROME2
            without window tags.
        remove_artifacts: run the Eq. 5 line-artifact detector and repair.
        normalize_laterality: flip left-right when needed so the chest wall is on the left.
        window: (center, width) overriding the file's window.
        breast_kwargs / artifact_kwargs: passed to :func:`common.breast.breast_mask` /
            :func:`common.artifacts.find_artifact_columns`.

    Raises:
        InputError: unreadable, unsupported or unusable input (one line naming the file).
    """
    loaded = _load(source)
    meta = loaded.meta
    name = meta["source"]
    windowed, window_rec = window_image(loaded, window)
    warns = list(window_rec.pop("warnings"))
    del loaded  # the float32 pixels are no longer needed

    image, mask = extract_breast(windowed, **(breast_kwargs or {}))
    if not mask.any():
        raise InputError(
            name, "no non-zero pixel after windowing (the window hides the whole image)"
        )

    columns: list[int] = []
    details: dict[str, Any] = {}
    if remove_artifacts:
        image, columns, details = artifacts.remove_artifacts(image, mask, **(artifact_kwargs or {}))
        if columns:
            warns.append(f"line artifact repaired on column(s) {columns}")

    flipped = False
    if normalize_laterality:
        image, mask, flipped = _normalize_laterality(image, mask)

    record = {
        "source": name,
        "shape": [int(image.shape[0]), int(image.shape[1])],
        "window": window_rec,
        "artifact_columns": columns,
        "artifact_details": details,
        "warnings": warns,
        "meta": meta,
        "breast_fraction": float(mask.mean()),
        "flipped": flipped,
    }
    return Preprocessed(image=image, breast_mask=mask, record=record)


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------
#: The map input file -> output stem of the last run, written into the output folder.
STEMS_FILE = "stems.json"


def output_names(stem: str) -> tuple[str, str, str]:
    """The files :func:`write_outputs` writes for ``stem``."""
    return f"{stem}.png", f"{stem}_breast.png", f"{stem}.json"


def _unique_stems(paths: Sequence[Path], reserved: Iterable[str] = ()) -> list[str]:
    """Stems of the command line's inputs: unique over every output name (:func:`output_names`)."""
    return unique_output_stems(paths, output_names, {STEMS_FILE, *reserved})


def write_outputs(result: Preprocessed, out_dir: Path, stem: str) -> list[Path]:
    """Write ``<stem>.png``, ``<stem>_breast.png`` and ``<stem>.json`` into ``out_dir``, atomically and
    as a set (:func:`common.io.write_together`): a write that fails leaves the earlier set as it was."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / name for name in output_names(stem)]
    return write_together([
        (paths[0], lambda tmp: atomic_write_png(tmp, result.image)),
        (paths[1], lambda tmp: atomic_write_png(tmp, result.breast_mask.astype(np.uint8) * 255)),
        (paths[2], lambda tmp: atomic_write_json(tmp, result.record)),
    ])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m common.preprocess",
        description="Window, breast-region extraction and artifact removal (DeepLIMa Sec. 2.2.1).",
    )
    parser.add_argument("files", nargs="+", type=Path, help="DICOM, PNG or TIFF files")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--no-artifacts", action="store_true", help="skip the line-artifact removal"
    )
    parser.add_argument(
        "--normalize-laterality", action="store_true", help="flip so the chest wall is on the left"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out: Path = args.out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"error: {out}: cannot create the output folder ({os_error_reason(e)})",
              file=sys.stderr)
        return 2
    # an input inside the output folder is never overwritten: its name is taken
    out_real = out.resolve()
    inputs_here = [p.name for p in args.files if p.parent.resolve() == out_real]
    stems = _unique_stems(args.files, inputs_here)
    entries = [{"file": str(p), "stem": s, "outputs": list(output_names(s)), "status": "pending"}
               for p, s in zip(args.files, stems)]

    def write_map() -> None:
        atomic_write_json(out / STEMS_FILE, {"format": "preprocess-stems", "inputs": entries})

    try:
        write_map()  # first: the output folder must be writable, and the map exists from the start
    except OSError as e:
        print(f"error: {out}: cannot write into the output folder ({os_error_reason(e)})",
              file=sys.stderr)
        return 2
    failures: list[str] = []
    done = 0
    for path, stem, entry in tqdm(
        list(zip(args.files, stems, entries)),
        desc="preprocess",
        unit="img",
        disable=args.quiet,
        file=sys.stderr,
    ):
        try:
            result = preprocess(
                path,
                remove_artifacts=not args.no_artifacts,
                normalize_laterality=args.normalize_laterality,
            )
            write_outputs(result, out, stem)
            done += 1
            entry["status"] = "done"
            continue
        except InputError as e:
            message = str(e)
        except OSError as e:  # the output folder: read-only, full...
            message = f"{path}: cannot write its outputs to {out} ({os_error_reason(e)})"
        except Exception as e:
            # A bug rather than a bad file: still report it and carry on with the other files.
            message = " ".join(f"{path}: unexpected {type(e).__name__}: {e}".split())
        failures.append(message)
        entry.update(status="failed", error=message)
    print(f"{done} of {len(args.files)} file(s) pre-processed into {out}")
    renamed = sum(s != base_stem(p) for p, s in zip(args.files, stems))
    if renamed:
        print(f"note: {renamed} output name(s) changed to stay unique; the map input -> name is "
              f"{out / STEMS_FILE}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} file(s) failed:", file=sys.stderr)
        for line in failures:
            print(f"  {line}", file=sys.stderr)
    try:
        write_map()
    except OSError as e:
        print(f"error: {out / STEMS_FILE}: cannot write ({os_error_reason(e)})", file=sys.stderr)
        return 2
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
