"""The prediction folder: what ``deeplima predict`` (both models), ``predict-mass`` and
``predict-calc`` (one model each) write, and what ``deeplima evaluate`` reads (other tools can
produce it too).

Layout (:func:`write_predictions`)::

    OUT/
      images.json                 [{"id", "file_name", "stem", "height", "width", "json"}], ids
                                  1.. in input order (a failed file keeps its id unused)
      masses_results.json         COCO results of EVERY mass detection (image_id from images.json,
                                  category_id 1, bbox XYWH original pixels, score) - the full FROC
                                  range; the operating threshold only marks findings in the
                                  per-image JSON
      calc_prob/<stem>.png        16-bit calcification probability (0..65535 = 0..1), original frame
      calc_mask/<stem>.png        0/255 calcification findings (components scoring >= the threshold)
      calc_labels/<stem>.png      16-bit component labels: the mask of the component with "label"
                                  k of the per-image JSON is (labels == k), findings or not
      breast_mask/<stem>.png      0/255 breast region
      overlays/<stem>.png         mass boxes (orange) and calcification outlines (cyan) with scores
                                  (:func:`deeplima.overlay.draw_findings`)
      per_image/<stem>.json       everything about one image (:func:`image_record`), with the
                                  input's SHA-256 (``source_sha256``); renamed into place last: its
                                  presence with "complete": true means the image is done
                                  (``--resume`` skips it when the input's content is unchanged)
      failures.json/.txt          files that could not be processed (or their outputs not written),
                                  with the reason
      run.json                    thresholds, counts, the models (bundle folder or weights), and
                                  ``inputs``: every input file with its stem, SHA-256 and status;
                                  ``"complete": false`` while the run goes on

A single-model run has no entries or files of the other model: no ``masses`` / ``n_mass_findings``
and no ``masses_results.json`` without a mass detector; no ``calcifications`` / ``n_calc_findings``
and no ``calc_prob`` / ``calc_mask`` / ``calc_labels`` PNGs without a calcification model.

Stems are the input file names without suffix, made unique over the run (``-2``, ``-3``..., never
another input's own stem). PNGs inside prediction folders are never collected as inputs.

For ``deeplima evaluate`` only ``images.json``, ``masses_results.json`` and ``calc_prob/<stem>.png``
are needed (stems must be the canonical dataset's stems).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from common.errors import InputError
from common.inputs import collect_inputs, unique_stems
from common.io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_png,
    os_error_reason,
    read_json,
    sha256_file,
    write_together,
)

from .overlay import draw_findings
from .pipeline import FindingsPredictor, ImageResult

__all__ = [
    "FORMAT_VERSION",
    "OUTPUT_SUBDIRS",
    "image_record",
    "is_prediction_output",
    "write_image_outputs",
    "write_predictions",
]

FORMAT_VERSION = 1

#: Sub-folders of a prediction folder holding one PNG per image.
OUTPUT_SUBDIRS = ("calc_prob", "calc_mask", "calc_labels", "breast_mask", "overlays")
#: Files of the per-image ``files`` entry: key -> sub-folder, in writing order.
_FILES = {"calc_prob": "calc_prob", "calc_mask": "calc_mask", "calc_labels": "calc_labels",
          "breast_mask": "breast_mask", "overlay": "overlays"}
_CALC_FILES = ("calc_prob", "calc_mask", "calc_labels")


# ------------------------------------------------------------------------------------------ inputs
def is_prediction_output(path: Path, out_dir: Path | None = None) -> bool:
    """True for a PNG that a prediction folder holds (``<folder>/overlays/x.png``...): ``out_dir``'s
    own, or any folder that looks like a prediction folder (``per_image/`` or ``images.json`` beside
    the sub-folder). Such files are never mammograms to predict on."""
    parent = Path(path).absolute().parent
    if parent.name not in OUTPUT_SUBDIRS:
        return False
    folder = parent.parent.resolve()
    return ((out_dir is not None and folder == Path(out_dir).resolve())
            or (folder / "per_image").is_dir() or (folder / "images.json").is_file())


def _sha256_or_none(path: Path) -> str | None:
    try:
        return sha256_file(path)
    except OSError:
        return None  # missing or unreadable: the predictor reports it


# ---------------------------------------------------------------------------------------- one image
def image_record(res: ImageResult, stem: str, image_id: int, files: dict, model_id: str | None,
                 source_sha256: str | None = None) -> dict:
    """The per-image JSON of ``res`` (original image frame throughout)."""
    rec = {
        "format": "deeplima-prediction",
        "model": model_id,
        "version": FORMAT_VERSION,
        "source": str(Path(res.source).resolve()) if res.source != "<array>" else res.source,
        "source_sha256": source_sha256,
        "stem": stem,
        "image_id": image_id,
        "height": res.shape[0],
        "width": res.shape[1],
        "frame": ("original image pixels: bbox [x, y, w, h], point [x, y], top-left origin, "
                  "x = column"),
        "thresholds": res.thresholds,
    }
    if res.masses is not None:  # a model that did not run has no entries
        rec["masses"] = res.masses
        rec["n_mass_findings"] = sum(m["finding"] for m in res.masses)
    if res.calcifications is not None:
        rec["calcifications"] = res.calcifications
        rec["n_calc_findings"] = sum(c["finding"] for c in res.calcifications)
    rec.update({
        "files": files,
        "preprocess": res.record,
        "timings_s": {k: round(v, 4) for k, v in res.timings.items()},
        "complete": True,
    })
    return rec


def _done(json_path: Path, sha256: str | None, out: Path, thresholds: dict,
          model_id: str | None = None) -> dict | None:
    """The per-image JSON of a finished image, or None when it must be (re)done.

    The input is identified by its content (``source_sha256``), not its path: a file replaced at the
    same path is done again, a file moved elsewhere is not.
    """
    if sha256 is None or not json_path.is_file():
        return None
    try:
        rec = read_json(json_path)
    except (InputError, OSError):
        return None
    if not isinstance(rec, dict) or rec.get("complete") is not True:
        return None
    if rec.get("source_sha256") != sha256:
        return None  # another file, or this path's file was replaced (or an older folder format)
    if rec.get("model") != model_id:
        return None  # made by other weights
    if {k: rec.get("thresholds", {}).get(k) for k in ("mass", "calc")} != {
            k: thresholds.get(k) for k in ("mass", "calc")}:
        return None  # other operating point: masks and overlays differ
    if not all((out / f).is_file() for f in rec.get("files", {}).values()):
        return None
    return rec


def write_image_outputs(res: ImageResult, out: Path, stem: str, image_id: int,
                        model_id: str | None = None, source_sha256: str | None = None) -> dict:
    """Write the PNGs, then the per-image JSON (last, so its presence means complete); returns the
    per-image record.

    All of them are written to temporary files first and renamed into place together
    (:func:`common.io.write_together`): a failure to write (full disk, read-only folder:
    ``OSError``) leaves this image's earlier outputs as they were.

    Raises:
        OSError: an output cannot be written.
        ValueError: more than 65535 calcification components (the labels PNG is 16-bit).
    """
    has_calc = res.calc_prob is not None
    files = {k: f"{sub}/{stem}.png" for k, sub in _FILES.items()
             if has_calc or k not in _CALC_FILES}
    masses, calcs = res.findings()
    arrays = {}
    calc_mask = None
    if has_calc:
        if res.calc_labels.max() > np.iinfo(np.uint16).max:
            raise ValueError(f"{res.source}: more than 65535 calcification components")
        calc_mask = res.calc_mask()
        arrays.update({
            "calc_prob": np.round(np.clip(res.calc_prob, 0, 1) * 65535).astype(np.uint16),
            "calc_mask": calc_mask.astype(np.uint8) * 255,
            "calc_labels": res.calc_labels.astype(np.uint16),
        })
    arrays["breast_mask"] = res.breast_mask.astype(np.uint8) * 255
    arrays["overlay"] = draw_findings(res.image, masses, calc_mask, calcs)
    rec = image_record(res, stem, image_id, files, model_id, source_sha256)
    json_path = out / "per_image" / f"{stem}.json"
    write_together(
        [(out / files[k], lambda tmp, a=a: atomic_write_png(tmp, a)) for k, a in arrays.items()]
        + [(json_path, lambda tmp: atomic_write_json(tmp, rec))],
        invalidate=[json_path],  # no "complete" record beside half-renamed PNGs
    )
    return rec


# ------------------------------------------------------------------------------------------ folder
def write_predictions(
    predictor: FindingsPredictor,
    inputs: Iterable[str | Path],
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    stems: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Run ``predictor`` over files / folders / globs and write the prediction folder (module
    docstring).

    Every file is written atomically. With ``resume``, an image whose per-image JSON is complete
    (same input CONTENT, by SHA-256, same model and thresholds, all its files present) is not
    processed again. Files that fail, including those whose outputs cannot be written (full
    disk...), are listed in ``failures.json`` / ``failures.txt`` (``"PATH: reason"``) and the run
    goes on. PNGs of prediction folders (this one's or another's, e.g. a folder inside the input
    folder) are never taken as inputs. ``run.json`` is written first with ``"complete": false`` and
    rewritten last, after ``images.json``, ``masses_results.json`` and the failure lists:
    ``"complete": true`` means those files belong to that run. Its ``inputs`` map every input file
    to its stem, SHA-256 and status.

    Args:
        predictor: a :class:`~deeplima.pipeline.FindingsPredictor` (e.g. a
            :class:`~deeplima.pipeline.Pipeline`): one or both models.
        stems: one per input FILE (e.g. the canonical dataset's stems), replacing the names derived
            from the file names.

    Returns:
        summary dict (also ``run.json``): n_inputs, n_done, n_skipped, n_failed, failures,
        thresholds, n_ignored_outputs, inputs, and the predictor's ``run_info`` (e.g. ``bundle``).

    Raises:
        InputError: the prediction folder cannot be created or its run files cannot be written (one
            line; what was written before stays, and ``resume`` picks it up).
    """
    out = Path(out_dir)
    paths = collect_inputs(inputs)
    n_ignored = 0
    if stems is None:
        kept = [p for p in paths if not is_prediction_output(p, out)]
        n_ignored = len(paths) - len(kept)
        paths = kept
        stems = unique_stems(paths)
    elif len(stems) != len(paths) or len(set(stems)) != len(stems):
        raise ValueError("stems must be unique, one per input file")
    entries = [{"file": str(p), "stem": s, "sha256": None, "status": "pending"}
               for p, s in zip(paths, stems)]
    has_mass = predictor.mass is not None
    images, results, failures = [], [], []
    n_done = n_skipped = 0
    t_start = time.time()

    def summary(complete: bool) -> dict[str, Any]:
        return {
            "format": "deeplima-run",
            "complete": complete,
            **predictor.run_info,
            "thresholds": predictor.thresholds,
            "normalize_laterality": predictor.normalize_laterality,
            "n_inputs": len(paths),
            "n_done": n_done,
            "n_skipped": n_skipped,
            "n_failed": len(failures),
            "n_ignored_outputs": n_ignored,
            "seconds": round(time.time() - t_start, 2),
            "failures": [f["message"] for f in failures],
            "inputs": entries,
        }

    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "run.json", summary(False))  # also: is the folder writable?
    except OSError as e:
        raise InputError(out, f"cannot write the prediction folder ({os_error_reason(e)})"
                         ) from None

    def fail(entry: dict, path: Path, reason: str, message: str | None = None) -> None:
        message = message or f"{path}: {reason}"
        failures.append({"file": str(path), "reason": reason, "message": message})
        entry.update(status="failed", error=message)

    bar = tqdm(list(zip(paths, stems, entries)), desc="deeplima predict", unit="img",
               disable=not progress)
    for image_id, (path, stem, entry) in enumerate(bar, start=1):
        json_path = out / "per_image" / f"{stem}.json"
        sha = entry["sha256"] = _sha256_or_none(path)
        rec = (_done(json_path, sha, out, predictor.thresholds, predictor.model_id) if resume
               else None)
        if rec is not None:
            n_skipped += 1
            entry["status"] = "skipped"
        else:
            try:
                res = predictor(path)
            except InputError as e:
                fail(entry, path, e.reason, str(e))
                continue
            except Exception as e:  # a bug rather than a bad file: report it, go on with the rest
                fail(entry, path, " ".join(f"unexpected {type(e).__name__}: {e}".split()))
                continue
            try:
                rec = write_image_outputs(res, out, stem, image_id, predictor.model_id, sha)
            except OSError as e:  # full disk, read-only folder...: this image fails, the rest go on
                fail(entry, path, f"cannot write its outputs to {out} ({os_error_reason(e)})")
                continue
            except Exception as e:
                fail(entry, path, " ".join(f"unexpected {type(e).__name__}: {e}".split()))
                continue
            n_done += 1
            entry["status"] = "done"
        images.append({"id": image_id, "file_name": str(path), "stem": stem,
                       "height": rec["height"], "width": rec["width"],
                       "json": f"per_image/{stem}.json"})
        results += [{"image_id": image_id, "category_id": 1, "bbox": m["bbox"], "score": m["score"]}
                    for m in rec.get("masses", ())]
    final = summary(True)
    try:
        atomic_write_json(out / "images.json", images)
        if has_mass:
            atomic_write_json(out / "masses_results.json", results, indent=None)
        else:  # an earlier run's detections would pass for this run's
            (out / "masses_results.json").unlink(missing_ok=True)
        atomic_write_json(out / "failures.json", failures)
        atomic_write_bytes(out / "failures.txt",
                           "".join(f["message"] + "\n" for f in failures).encode())
        atomic_write_json(out / "run.json", final)  # last: "complete" vouches for the files above
    except OSError as e:
        raise InputError(out, f"cannot write the run files ({os_error_reason(e)}); the per-image "
                              f"outputs written so far are kept (rerun with --resume)") from None
    return final
