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
      per_study/<UID>.json        one per DICOM study (Study Instance UID) of the run, per breast:
                                  highest mass score with its image and box, mass findings,
                                  calcification findings (count, total area in mm², types), views,
                                  images and failed files (:func:`study_summaries`)
      failures.json/.txt          files that could not be processed (or their outputs not written),
                                  with the reason
      skipped.txt                 input files that are not mammograms to predict on (DICOM SEG, SR,
                                  FOR PROCESSING images, masks...: :func:`common.inputs.select_inputs`),
                                  ``PATH: reason`` per line; also ``skipped_inputs`` of run.json
      run.json                    thresholds, counts, the models (bundle folder or weights), and
                                  ``inputs``: every input file with its stem, SHA-256 and status;
                                  ``studies``: the per-study files; ``"complete": false`` while the
                                  run goes on

With ``dicom_out`` (``--dicom-out DIR``), each image predicted from a DICOM file also gets a DICOM
Segmentation and a Structured Report in that folder (:func:`deeplima.dicom_out.write_dicom_outputs`),
named in the per-image JSON's ``files["dicom"]`` (relative to that folder). An image whose DICOM
outputs cannot be written (a PNG source, say) keeps its other outputs and is listed in the failures.

Units: boxes and areas are in original image pixels; when the source's header gives the pixel
spacing (the per-image ``pixel_spacing``: ``spacing_mm`` [row_mm, col_mm] and its ``source``, e.g.
``PixelSpacing`` or ``ImagerPixelSpacing``), mass and calcification entries also carry ``bbox_mm``
and calcifications ``area_mm2``. Without one ``spacing_mm`` and ``source`` are null and sizes are in
pixels only.

Studies: images are grouped by the Study Instance UID of their DICOM header. Images without one
(PNG/TIFF inputs, headers without a valid UID) are in no per-study file; they are still in
``images.json`` and ``per_image/``. The per-study files are rebuilt from the images' records at the
end of every run (rank 0), so they are the same whatever the run mode, and files of studies no longer
in the run are removed.

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
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

import common.io
from common.dicom import is_uid
from common.errors import InputError
from common.inputs import (
    RASTER_SUFFIXES,
    collect_inputs,
    dicom_header,
    select_inputs,
    unique_stems,
)
from common.io import (
    atomic_write_bytes,
    atomic_write_json,
    encode_png,
    os_error_reason,
    read_json,
    remove_stale_temporaries,
    write_together,
)

from .distributed import Ranks
from .loader import ImageSource, PreparedImage, prepared_batches, worker_died
from .overlay import draw_findings
from .pipeline import FindingsPredictor, ImageResult

__all__ = [
    "FORMAT_VERSION",
    "OUTPUT_SUBDIRS",
    "image_record",
    "is_prediction_output",
    "render_image_outputs",
    "study_summaries",
    "write_image_outputs",
    "write_rendered",
    "write_predictions",
]

#: Version of the per-image JSON; 2: ``pixel_spacing``, ``study``, millimetre sizes, DICOM outputs.
#: ``--resume`` redoes an image whose record has another version.
FORMAT_VERSION = 2
#: Version of the per-study JSON.
STUDY_FORMAT_VERSION = 1

#: Sub-folders of a prediction folder holding one PNG per image.
OUTPUT_SUBDIRS = ("calc_prob", "calc_mask", "calc_labels", "breast_mask", "overlays")
#: Files of the per-image ``files`` entry: key -> sub-folder, in writing order.
_FILES = {"calc_prob": "calc_prob", "calc_mask": "calc_mask", "calc_labels": "calc_labels",
          "breast_mask": "breast_mask", "overlay": "overlays"}
_CALC_FILES = ("calc_prob", "calc_mask", "calc_labels")
#: The per-image ``study`` entry: key -> key of the pre-processing record's DICOM metadata.
_IDENTITY = ("study_instance_uid", "series_instance_uid", "sop_instance_uid",
             "frame_of_reference_uid", "modality", "laterality", "view")


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


# ---------------------------------------------------------------------------------------- one image
def _identity(record: dict | None) -> dict:
    """Who the image is, from its DICOM header (pre-processing record ``meta``): study, series, SOP
    and frame-of-reference UIDs, modality, laterality, view; None for what the input did not
    say (every entry None for PNG/TIFF inputs)."""
    meta = (record or {}).get("meta") or {}
    if not isinstance(meta, dict):
        meta = {}
    out = {}
    for key in _IDENTITY:
        value = meta.get(key)
        out[key] = (str(value).strip() or None) if value is not None else None
    return out


def study_uid(rec: dict) -> str | None:
    """The Study Instance UID of a per-image record, when it is one that can name a file."""
    uid = ((rec.get("study") or {}) if isinstance(rec, dict) else {}).get("study_instance_uid")
    return uid if is_uid(uid) else None


def image_record(res: ImageResult, stem: str, image_id: int, files: dict, model_id: str | None,
                 source_sha256: str | None = None) -> dict:
    """The per-image JSON of ``res`` (original image frame throughout; sizes also in millimetres
    when the pixel spacing is known)."""
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
                  "x = column; bbox_mm and area_mm2: the same in millimetres with pixel_spacing"),
        "pixel_spacing": res.pixel_spacing,
        "study": _identity(res.record),
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
          model_id: str | None = None, dicom: tuple[Path, bool] | None = None) -> dict | None:
    """The per-image JSON of a finished image, or None when it must be (re)done.

    The input is identified by its content (``source_sha256``), not its path: a file replaced at the
    same path is done again, a file moved elsewhere is not. A record of another
    :data:`FORMAT_VERSION` is redone. With ``dicom`` (``(dicom_out, fractional)``), an image whose
    DICOM outputs are not all in ``dicom_out`` (or were written with the other kind of SEG) is
    redone too.
    """
    if sha256 is None or not json_path.is_file():
        return None
    try:
        rec = read_json(json_path)
    except (InputError, OSError):
        return None
    if not isinstance(rec, dict) or rec.get("complete") is not True:
        return None
    if rec.get("version") != FORMAT_VERSION:
        return None  # an older folder format: redone in this one
    if rec.get("source_sha256") != sha256:
        return None  # another file, or this path's file was replaced (or an older folder format)
    if rec.get("model") != model_id:
        return None  # made by other weights
    if {k: rec.get("thresholds", {}).get(k) for k in ("mass", "calc")} != {
            k: thresholds.get(k) for k in ("mass", "calc")}:
        return None  # other operating point: masks and overlays differ
    files = rec.get("files")
    if not isinstance(files, dict):
        return None
    own = [f for k, f in files.items() if k != "dicom"]
    if not all(isinstance(f, str) and (out / f).is_file() for f in own):
        return None
    if dicom is not None:
        folder, fractional = dicom
        names = files.get("dicom")
        if (not isinstance(names, dict) or not names
                or rec.get("dicom_fractional") is not bool(fractional)
                or not all(isinstance(f, str) and (folder / f).is_file()
                           for f in names.values())):
            return None
    return rec


def _finished(stem: str, sha256: str | None, *, out: Path, thresholds: dict,
              model_id: str | None, dicom: tuple[Path, bool] | None = None) -> dict | None:
    """:func:`_done` of ``stem``'s per-image JSON in ``out`` (the loader's resume check; a
    module-level function so that worker processes can be handed it)."""
    return _done(out / "per_image" / f"{stem}.json", sha256, out, thresholds, model_id, dicom)


def render_image_outputs(res: ImageResult, stem: str, image_id: int, model_id: str | None = None,
                         source_sha256: str | None = None) -> tuple[dict, dict[str, bytes]]:
    """The per-image record of ``res`` and its PNG files, encoded but not written: ``(record,
    {path inside the folder: PNG bytes})``. Touches no file, so it may run in a thread while the
    models work on the next images (:func:`write_predictions` with ``workers``).

    Raises:
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
    return rec, {files[k]: encode_png(a) for k, a in arrays.items()}


def write_rendered(out: Path, stem: str, rec: dict, pngs: dict[str, bytes]) -> dict:
    """Write the PNGs of :func:`render_image_outputs`, then the per-image JSON ``rec`` (last, so its
    presence means complete); returns ``rec``.

    All of them are written to temporary files first and renamed into place together
    (:func:`common.io.write_together`): a failure to write (full disk, read-only folder:
    ``OSError``) leaves this image's earlier outputs as they were. Files are only ever created by
    the thread that calls this (:func:`common.io.atomic_write_bytes` reads the process umask by
    setting it, which is not thread-safe).

    Raises:
        OSError: an output cannot be written.
    """
    json_path = Path(out) / "per_image" / f"{stem}.json"
    write_together(
        [(Path(out) / name, lambda tmp, data=data: common.io.atomic_write_bytes(tmp, data))
         for name, data in pngs.items()]
        + [(json_path, lambda tmp: atomic_write_json(tmp, rec))],
        invalidate=[json_path],  # no "complete" record beside half-renamed PNGs
    )
    return rec


def write_image_outputs(res: ImageResult, out: Path, stem: str, image_id: int,
                        model_id: str | None = None, source_sha256: str | None = None) -> dict:
    """Write the PNGs, then the per-image JSON (last, so its presence means complete); returns the
    per-image record (:func:`render_image_outputs`, then :func:`write_rendered`).

    Raises:
        OSError: an output cannot be written (this image's earlier outputs stay as they were).
        ValueError: more than 65535 calcification components (the labels PNG is 16-bit).
    """
    rec, pngs = render_image_outputs(res, stem, image_id, model_id, source_sha256)
    return write_rendered(out, stem, rec, pngs)


# ------------------------------------------------------------------------------------------ folder
def _remove_stale_temporaries(out: Path) -> None:
    """Delete the hidden temporary files of atomic writes (``.NAME.*.tmp``, ``.NAME.PID.staged``)
    that a killed process left in the prediction folder. Runs before any process of this run
    writes, so none of them is another writer's file in progress."""
    for folder in (out, out / "per_image", out / "per_study",
                   *(out / sub for sub in OUTPUT_SUBDIRS)):
        remove_stale_temporaries(folder)


def _inside(path: Path, folder: Path | None) -> bool:
    """True when ``path`` is in ``folder`` (at any depth)."""
    if folder is None:
        return False
    try:
        Path(path).resolve().relative_to(Path(folder).resolve())
    except ValueError:
        return False
    return True


def _input_plan(inputs: Iterable[str | Path], out: Path, stems: Sequence[str] | None,
                dicom_out: Path | None = None) -> tuple[list[str], list[str], int, list[dict]]:
    """(input files, their stems, number of prediction-folder PNGs left out, skipped inputs
    ``{"file", "reason"}``) of a run.

    Without ``stems`` the inputs are chosen by :func:`common.inputs.select_inputs` (mammograms for
    presentation; segmentations, reports, FOR PROCESSING images, masks... skipped with a reason);
    ``stems`` come with a list of files already chosen (a canonical dataset's images), taken as
    they are. The DICOM outputs of a run (in ``dicom_out``) are left out like the PNGs of
    prediction folders, not listed as skipped.

    Raises:
        InputError: no image to predict on among the inputs.
    """
    inputs = list(inputs)
    if stems is not None:
        paths = collect_inputs(inputs)
        if len(stems) != len(paths) or len(set(stems)) != len(stems):
            raise ValueError("stems must be unique, one per input file")
        return [str(p) for p in paths], list(stems), 0, []
    selection = select_inputs(inputs)
    paths = [p for p in selection.images if not is_prediction_output(p, out)]
    skipped = [(p, r) for p, r in selection.skipped
               if not is_prediction_output(p, out) and not _inside(p, dicom_out)]
    n_ignored = (len(selection.images) - len(paths)) + (len(selection.skipped) - len(skipped))
    skipped_entries = [{"file": str(p), "reason": " ".join(str(r).split())} for p, r in skipped]
    if not paths:
        raise InputError(None, _no_images(inputs, skipped_entries, out))
    return [str(p) for p in paths], unique_stems(paths), n_ignored, skipped_entries


def _no_images(inputs: list, skipped: list[dict], out: Path) -> str:
    """The reason of a run without any image to predict on; lists the skipped files in
    ``out/skipped.txt`` when it can."""
    named = ", ".join(map(str, inputs[:3])) + (" ..." if len(inputs) > 3 else "")
    if not skipped:
        return f"no input files found in {named or 'the inputs given'}"
    reasons = Counter(e["reason"] for e in skipped)
    top = "; ".join(f"{n} x {r}" for r, n in reasons.most_common(3))
    more = "; ..." if len(reasons) > 3 else ""
    where = ""
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / "skipped.txt", _lines(skipped, "reason"))
        where = f"; see {out / 'skipped.txt'}"
    except OSError:
        pass  # the reasons are in the message
    return (f"no mammograms to predict on among {len(skipped)} input file(s) ({top}{more}): "
            f"all skipped{where}")


def _lines(entries: list[dict], key: str) -> bytes:
    """``PATH: <entry[key]>`` per entry, one a line."""
    return "".join(f"{e['file']}: {e[key]}\n" for e in entries).encode()


def _predict(predictor: FindingsPredictor, items: Sequence[PreparedImage]
             ) -> list[ImageResult | tuple[str, str | None]]:
    """The models on pre-processed items: per item an :class:`ImageResult`, or ``(reason,
    message)`` of its failure. A batch that fails is run again image by image, so that only the
    image at fault fails (as when images are predicted one by one)."""
    if not items:
        return []
    try:
        return predictor.predict_batch([it.preprocessed for it in items],
                                       [it.path for it in items], [it.seconds for it in items])
    except InputError as e:
        if len(items) == 1:
            return [(e.reason, str(e))]
    except Exception as e:  # a bug rather than a bad file: report it, go on with the rest
        if len(items) == 1:
            return [(" ".join(f"unexpected {type(e).__name__}: {e}".split()), None)]
    return [_predict(predictor, [it])[0] for it in items]


@dataclass(frozen=True)
class DicomTarget:
    """Where and how the DICOM outputs of a run go (``--dicom-out``, ``--dicom-prob``)."""

    folder: Path
    fractional: bool = False
    identity: dict = field(default_factory=dict)  # the models (bundle_identity), for the SR

    @property
    def resume_key(self) -> tuple[Path, bool]:
        return self.folder, self.fractional


def _write_dicom(result: ImageResult, rec: dict, stem: str, target: DicomTarget) -> str | None:
    """Write the DICOM SEG and SR of one image into ``target.folder`` and name them in ``rec``'s
    ``files["dicom"]``; returns None, or the reason they were not written (``rec`` then names
    none)."""
    if str(result.source) == "<array>" or Path(result.source).suffix.lower() in RASTER_SUFFIXES:
        return "no DICOM outputs: the source is not a DICOM file"
    from .dicom_out import write_dicom_outputs  # highdicom: loaded by runs that write DICOM only

    try:
        names = write_dicom_outputs(result, rec, target.folder, stem, target.identity,
                                    fractional=target.fractional)
    except OSError as e:
        return f"cannot write its DICOM outputs to {target.folder} ({os_error_reason(e)})"
    except InputError as e:
        return f"no DICOM outputs: {e.reason}"
    except Exception as e:  # the other outputs are kept whatever goes wrong here
        return " ".join(f"no DICOM outputs: unexpected {type(e).__name__}: {e}".split())
    rec["files"] = {**rec["files"], "dicom": dict(names)}
    rec["dicom_fractional"] = bool(target.fractional)
    return None


def _outcome(item: PreparedImage, result: ImageResult | tuple | None, out: Path,
             predictor: FindingsPredictor, rendered: Future | None = None,
             dicom: DicomTarget | None = None) -> dict:
    """What one image contributes to the folder-level files, after writing its per-image files
    (a picklable dict, gathered from every rank): ``index``, ``entry`` (of ``run.json``'s
    ``inputs``), ``image`` (row of ``images.json``, None when it failed), ``results`` (COCO
    results of its masses), ``summary`` (:func:`_image_summary`, None when it failed),
    ``failure`` (None when it did not fail).

    ``result`` is the models' :class:`ImageResult` or the ``(reason, message)`` of their failure
    (:func:`_predict`); ``rendered``, when given, the future of its
    :func:`render_image_outputs`. With ``dicom``, its DICOM outputs are written before its
    per-image JSON (which names them); an image whose DICOM outputs fail keeps its other outputs
    and has a ``failure`` too."""
    path, image_id = item.path, item.index + 1
    entry = {"file": path, "stem": item.stem, "sha256": item.sha256, "status": "pending"}
    outcome = {"index": item.index, "entry": entry, "image": None, "results": [], "summary": None,
               "failure": None}

    def fail(reason: str, message: str | None = None) -> dict:
        message = message or f"{path}: {reason}"
        outcome["failure"] = {"file": path, "reason": reason, "message": message}
        entry.update(status="failed", error=message)
        return outcome

    if item.error is not None:
        return fail(item.reason, item.error)
    rec = item.record
    if rec is not None:
        entry["status"] = "skipped"
    elif isinstance(result, tuple):
        return fail(*result)
    else:
        dicom_error = None
        try:
            rec, pngs = (rendered.result() if rendered is not None else render_image_outputs(
                result, item.stem, image_id, predictor.model_id, item.sha256))
            if dicom is not None:
                dicom_error = _write_dicom(result, rec, item.stem, dicom)
            rec = write_rendered(out, item.stem, rec, pngs)
        except OSError as e:  # full disk, read-only folder...: this image fails, the rest go on
            return fail(f"cannot write its outputs to {out} ({os_error_reason(e)})")
        except Exception as e:
            return fail(" ".join(f"unexpected {type(e).__name__}: {e}".split()))
        entry["status"] = "done"
        if dicom_error is not None:  # the image is done; its DICOM outputs are missing
            message = f"{path}: {dicom_error}"
            outcome["failure"] = {"file": path, "reason": dicom_error, "message": message}
            entry["error"] = message
    outcome["image"] = {"id": image_id, "file_name": path, "stem": item.stem,
                        "height": rec["height"], "width": rec["width"],
                        "json": f"per_image/{item.stem}.json"}
    outcome["results"] = [{"image_id": image_id, "category_id": 1, "bbox": m["bbox"],
                           "score": m["score"]} for m in rec.get("masses", ())]
    outcome["summary"] = _image_summary(rec, item.stem)
    return outcome


def _predict_shard(predictor: FindingsPredictor, out: Path, items: Sequence[tuple[int, str, str]],
                   resume: bool, batch_size: int, workers: int, bar: tqdm,
                   dicom: DicomTarget | None = None) -> list[dict]:
    """Predict ``items`` (``(index, path, stem)``) and write their per-image files; returns their
    outcomes (:func:`_outcome`) in order.

    With ``workers``, K processes pre-process the next images (:func:`prepared_batches`) and K
    threads encode the outputs of the last ones (:func:`render_image_outputs`: overlays and PNG
    compression, most of the writing time on a full-field image) while the models work; this
    thread writes the files, in input order, at most ``max(batch_size, workers)`` images behind.
    """
    finished = (partial(_finished, out=out, thresholds=predictor.thresholds,
                        model_id=predictor.model_id,
                        dicom=dicom.resume_key if dicom is not None else None)
                if resume else None)
    source = ImageSource(items, predictor.preprocessor, finished)
    outcomes: list[dict] = []
    pending: deque[tuple[PreparedImage, Any, Future | None]] = deque()  # to write, in order
    behind = max(batch_size, workers) if workers else 0

    def settle(keep: int) -> None:
        while len(pending) > keep:
            item, result, rendered = pending.popleft()
            outcomes.append(_outcome(item, result, out, predictor, rendered, dicom))
            bar.update(1)

    with ThreadPoolExecutor(workers) if workers else nullcontext() as encoders:
        try:
            for batch in prepared_batches(source, batch_size, workers):
                todo = [it for it in batch if it.preprocessed is not None]
                results = dict(zip((it.index for it in todo), _predict(predictor, todo)))
                for item in batch:
                    item.preprocessed = None  # the pre-processed image is in the result now
                    result = results.pop(item.index, None)
                    rendered = (encoders.submit(render_image_outputs, result, item.stem,
                                                item.index + 1, predictor.model_id, item.sha256)
                                if encoders is not None and isinstance(result, ImageResult)
                                else None)
                    pending.append((item, result, rendered))
                settle(behind)
            settle(0)
        except RuntimeError as e:  # the DataLoader's SIGCHLD handler may raise anywhere here
            raise worker_died(e) or e from None
    return outcomes


# ------------------------------------------------------------------------------------------ studies
def _image_summary(rec: dict, stem: str) -> dict | None:
    """What the per-study files need of one image's record: its study, breast, view and findings
    (None for a record too malformed to read, e.g. an edited one taken up by ``--resume``)."""
    try:
        ident = rec.get("study") or {}
        laterality = ident.get("laterality")
        view = ident.get("view")
        out: dict[str, Any] = {
            "stem": stem,
            "study_instance_uid": study_uid(rec),
            "laterality": laterality if laterality in ("L", "R") else None,
            "view": str(view) if view else None,
        }
        if "masses" in rec:
            masses = rec["masses"]
            top = max(masses, key=lambda m: float(m["score"]), default=None)  # first of ties
            out["mass"] = {"n_findings": sum(bool(m["finding"]) for m in masses), "top": None}
            if top is not None:
                out["mass"]["top"] = {
                    "stem": stem, "score": float(top["score"]), "finding": bool(top["finding"]),
                    "bbox": [float(v) for v in top["bbox"]],
                    **({"bbox_mm": [float(v) for v in top["bbox_mm"]]} if "bbox_mm" in top
                       else {})}
        if "calcifications" in rec:
            found = [c for c in rec["calcifications"] if c["finding"]]
            mm2 = [c.get("area_mm2") for c in found]
            out["calc"] = {
                "n_findings": len(found),
                "area_px": int(sum(int(c["area"]) for c in found)),
                "area_mm2": (round(sum(float(a) for a in mm2), 4)
                             if all(a is not None for a in mm2) else None),
                "types": dict(Counter(str(c.get("type")) for c in found)),
            }
        return out
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


def _header_study_uid(path: str) -> str | None:
    """The Study Instance UID in the header of a DICOM file that failed (None when there is none
    to read), so that the file is listed with its study."""
    try:
        ds = dicom_header(path)
        uid = ds.get("StudyInstanceUID") if ds is not None else None
    except Exception:  # unreadable: the failure says why; it is in no study
        return None
    uid = str(uid).strip() if uid is not None else ""
    return uid if is_uid(uid) else None


def _new_breast(kinds: dict) -> dict:
    breast: dict[str, Any] = {"images": [], "views": []}
    if "mass" in kinds:
        breast["mass"] = {"n_findings": 0, "max_score": None, "max": None}
    if "calc" in kinds:
        breast["calc"] = {"n_findings": 0, "total_area_px": 0, "total_area_mm2": 0.0,
                          "types": {}}
    return breast


def _add_image(breast: dict, s: dict) -> None:
    breast["images"].append(s["stem"])
    if s["view"] and s["view"] not in breast["views"]:
        breast["views"] = sorted([*breast["views"], s["view"]])
    mass, top = breast.get("mass"), (s.get("mass") or {}).get("top")
    if mass is not None and "mass" in s:
        mass["n_findings"] += s["mass"]["n_findings"]
        if top is not None and (mass["max_score"] is None or top["score"] > mass["max_score"]):
            mass["max_score"], mass["max"] = top["score"], top
    calc = breast.get("calc")
    if calc is not None and "calc" in s:
        c = s["calc"]
        calc["n_findings"] += c["n_findings"]
        calc["total_area_px"] += c["area_px"]
        calc["total_area_mm2"] = (None if calc["total_area_mm2"] is None or c["area_mm2"] is None
                                  else round(calc["total_area_mm2"] + c["area_mm2"], 4))
        types = Counter(calc["types"]) + Counter(c["types"])
        calc["types"] = dict(sorted(types.items()))


def study_summaries(outcomes: Sequence[dict], thresholds: dict) -> dict[str, dict]:
    """The per-study records (``per_study/<StudyInstanceUID>.json``) of a run's image outcomes, in
    input order: Study Instance UID -> record.

    A record holds the study's images (stem, laterality, view, per-image JSON) and views, its
    failed files (those whose header names the study), and per breast (``"L"``, ``"R"``;
    ``"unknown"`` without Image Laterality): its images and views; with a mass model the number of
    mass findings and the highest-scoring detection (``max_score``, ``max``: its image, score,
    box in pixels and, with the pixel spacing, in mm, and whether it is a finding); with a
    calcification model the number of calcification findings, their total area in pixels and mm²
    (null when an image of the breast has no pixel spacing) and their count per type. Images
    without a Study Instance UID are in no study.
    """
    kinds = {k: thresholds[k] for k in ("mass", "calc") if k in thresholds}
    studies: dict[str, dict] = {}
    for o in outcomes:
        s = o.get("summary")
        uid = s["study_instance_uid"] if s is not None else None
        if uid is None and s is None and o.get("failure") is not None:
            uid = _header_study_uid(o["entry"]["file"])
        if uid is None:
            continue
        st = studies.setdefault(uid, {
            "format": "deeplima-study", "version": STUDY_FORMAT_VERSION,
            "study_instance_uid": uid, "thresholds": kinds, "views": [], "images": [],
            "breasts": {}, "failed": []})
        if s is not None:
            st["images"].append({"stem": s["stem"], "laterality": s["laterality"],
                                 "view": s["view"], "json": f"per_image/{s['stem']}.json"})
            if s["view"] and s["view"] not in st["views"]:
                st["views"] = sorted([*st["views"], s["view"]])
            side = s["laterality"] or "unknown"
            _add_image(st["breasts"].setdefault(side, _new_breast(kinds)), s)
            st["breasts"] = dict(sorted(st["breasts"].items()))
        if o.get("failure") is not None:
            f = o["failure"]
            st["failed"].append({"file": f["file"], "stem": o["entry"]["stem"],
                                 "reason": f["reason"]})
    return studies


def _write_studies(out: Path, studies: dict[str, dict]) -> None:
    """Write ``per_study/<UID>.json`` of every study and remove those of studies not in the run
    (an earlier run's, which would otherwise pass for this one's)."""
    folder = out / "per_study"
    if studies:
        folder.mkdir(exist_ok=True)
    for uid, rec in studies.items():
        atomic_write_json(folder / f"{uid}.json", rec)
    if folder.is_dir():
        for old in folder.glob("*.json"):
            if old.stem not in studies and is_uid(old.stem):
                old.unlink(missing_ok=True)


def _run_summary(predictor: FindingsPredictor, complete: bool, entries: list[dict],
                 failures: list[dict], n_ignored: int, t_start: float,
                 skipped: Sequence[dict] = (), studies: dict[str, dict] | None = None,
                 dicom: DicomTarget | None = None) -> dict[str, Any]:
    """``run.json``."""
    summary = {
        "format": "deeplima-run",
        "complete": complete,
        **predictor.run_info,
        "thresholds": predictor.thresholds,
        "normalize_laterality": predictor.normalize_laterality,
        "n_inputs": len(entries),
        "n_done": sum(e["status"] == "done" for e in entries),
        "n_skipped": sum(e["status"] == "skipped" for e in entries),
        "n_failed": len(failures),
        "n_ignored_outputs": n_ignored,
        "n_skipped_inputs": len(skipped),
        "n_studies": len(studies or {}),
        "seconds": round(time.time() - t_start, 2),
        "failures": [f["message"] for f in failures],
        "skipped_inputs": list(skipped),
        "studies": [{"study_instance_uid": uid, "json": f"per_study/{uid}.json",
                     "n_images": len(st["images"]), "n_failed": len(st["failed"])}
                    for uid, st in (studies or {}).items()],
        "inputs": entries,
    }
    if dicom is not None:
        summary["dicom_out"] = str(dicom.folder.resolve())
        summary["dicom_seg"] = "FRACTIONAL" if dicom.fractional else "BINARY"
    return summary


def write_predictions(
    predictor: FindingsPredictor,
    inputs: Iterable[str | Path],
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    stems: Sequence[str] | None = None,
    *,
    batch_size: int = 1,
    workers: int = 0,
    ranks: Ranks | None = None,
    dicom_out: str | Path | None = None,
    dicom_fractional: bool = False,
) -> dict[str, Any]:
    """Run ``predictor`` over files / folders / globs and write the prediction folder (module
    docstring).

    Every file is written atomically. With ``resume``, an image whose per-image JSON is complete
    (same input CONTENT, by SHA-256, same model and thresholds, all its files present) is not
    processed again. Files that fail, including those whose outputs cannot be written (full
    disk...), are listed in ``failures.json`` / ``failures.txt`` (``"PATH: reason"``) and the run
    goes on. PNGs of prediction folders (this one's or another's, e.g. a folder inside the input
    folder) are never taken as inputs, and files that are not mammograms for presentation (DICOM
    SEG / SR, FOR PROCESSING images, masks: :func:`common.inputs.select_inputs`) are skipped and
    listed in ``skipped.txt`` and ``run.json``'s ``skipped_inputs``. ``run.json`` is written first
    with ``"complete": false`` and rewritten last, after ``images.json``, ``masses_results.json``,
    the per-study files and the failure and skipped lists: ``"complete": true`` means those files
    belong to that run. Its ``inputs`` map every input file to its stem, SHA-256 and status.

    How the work runs changes nothing in the folder (only timings differ): the pre-processing of
    the next images may run in ``workers`` DataLoader processes (:mod:`deeplima.loader`) while the
    models work on ``batch_size`` images at a time (:meth:`FindingsPredictor.predict_batch`), and
    under torchrun ``ranks`` share the images (:mod:`deeplima.distributed`): rank 0 collects the
    inputs and assigns the ids (input order, before sharding), each rank predicts every
    ``world_size``-th image and writes its per-image files, and once all have handed in their
    outcomes rank 0 writes ``images.json``, ``masses_results.json``, ``per_study/``, the failure
    and skipped lists and ``run.json``. A rerun with ``resume`` (with any number of ranks)
    completes a run that stopped or lost a rank and rebuilds those files.

    Args:
        predictor: a :class:`~deeplima.pipeline.FindingsPredictor` (e.g. a
            :class:`~deeplima.pipeline.Pipeline`): one or both models.
        stems: one per input FILE (e.g. the canonical dataset's stems), replacing the names derived
            from the file names.
        batch_size: images given to the models together (the U-Net's tiles of all of them share
            forward passes).
        workers: pre-processing worker processes, and as many threads encoding the output PNGs
            (0: all in this process, one image after the other).
        ranks: the processes of a torchrun run (:func:`deeplima.distributed.init_ranks`); None =
            this process alone.
        dicom_out: folder of the DICOM SEG and SR of every image predicted from a DICOM file
            (:func:`deeplima.dicom_out.write_dicom_outputs`); None = none. With ``resume``, an
            image whose DICOM outputs are not there is redone.
        dicom_fractional: a FRACTIONAL SEG of the calcification probability rather than the
            BINARY SEG of the findings.

    Returns:
        summary dict (also ``run.json``), the same on every rank: n_inputs, n_done, n_skipped
        (already done), n_failed (DICOM outputs not written included), failures, thresholds,
        n_ignored_outputs, n_skipped_inputs and skipped_inputs (not mammograms), n_studies and
        studies, inputs, and the predictor's ``run_info`` (e.g. ``bundle``).

    Raises:
        InputError: no mammogram to predict on among the inputs, or the prediction (or DICOM)
            folder cannot be created or its run files cannot be written (one line; what was
            written before stays, and ``resume`` picks it up).
    """
    ranks = ranks if ranks is not None else Ranks()
    out = Path(out_dir)
    t_start = time.time()

    # rank 0 fixes the input list, the stems and so the image ids, and opens the folder
    plan: tuple | str = ""
    error = None
    if ranks.is_main:
        try:
            plan = _input_plan(inputs, out, stems,
                               Path(dicom_out) if dicom_out is not None else None)
            entries = [{"file": p, "stem": s, "sha256": None, "status": "pending"}
                       for p, s in zip(*plan[:2])]
            try:
                out.mkdir(parents=True, exist_ok=True)
                _remove_stale_temporaries(out)
                # also: is the folder writable?
                atomic_write_json(out / "run.json",
                                  _run_summary(predictor, False, entries, [], plan[2], t_start,
                                               plan[3]))
            except OSError as e:
                raise InputError(out, f"cannot write the prediction folder ({os_error_reason(e)})"
                                 ) from None
            if dicom_out is not None:
                try:
                    Path(dicom_out).mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise InputError(dicom_out, f"cannot create the DICOM output folder "
                                                f"({os_error_reason(e)})") from None
        except ValueError as e:  # InputError included
            error, plan = e, str(e)
    plan = ranks.broadcast(plan)
    if error is not None:
        raise error
    if isinstance(plan, str):  # rank 0 could not start the run: the same line on every rank
        raise InputError(None, plan)
    paths, stems, n_ignored, skipped = plan
    dicom = None
    if dicom_out is not None:
        from .dicom_out import bundle_identity  # highdicom: loaded by runs that write DICOM only

        dicom = DicomTarget(Path(dicom_out), bool(dicom_fractional), bundle_identity(predictor))

    owned = [(i, paths[i], stems[i]) for i in ranks.shard(len(paths))]
    desc = "deeplima predict" + (f" (rank 0 of {ranks.world_size})" if ranks.world_size > 1
                                 else "")
    with tqdm(total=len(owned), desc=desc, unit="img",
              disable=not progress or not ranks.is_main) as bar:
        outcomes = _predict_shard(predictor, out, owned, resume, batch_size, workers, bar,
                                  dicom)

    # every rank's outcomes, in input order, make the folder-level files (rank 0 writes them)
    gathered = ranks.gather(outcomes)
    final: dict | str = ""
    if ranks.is_main:
        merged = sorted((o for part in gathered for o in part), key=lambda o: o["index"])
        entries = [o["entry"] for o in merged]
        images = [o["image"] for o in merged if o["image"] is not None]
        results = [r for o in merged for r in o["results"]]
        failures = [o["failure"] for o in merged if o["failure"] is not None]
        studies = study_summaries(merged, predictor.thresholds)
        final = _run_summary(predictor, True, entries, failures, n_ignored, t_start, skipped,
                             studies, dicom)
        try:
            atomic_write_json(out / "images.json", images)
            if predictor.mass is not None:
                atomic_write_json(out / "masses_results.json", results, indent=None)
            else:  # an earlier run's detections would pass for this run's
                (out / "masses_results.json").unlink(missing_ok=True)
            atomic_write_json(out / "failures.json", failures)
            atomic_write_bytes(out / "failures.txt",
                               "".join(f["message"] + "\n" for f in failures).encode())
            atomic_write_bytes(out / "skipped.txt", _lines(list(skipped), "reason"))
            _write_studies(out, studies)
            atomic_write_json(out / "run.json", final)  # last: "complete" vouches for the above
        except OSError as e:
            error = InputError(out, f"cannot write the run files ({os_error_reason(e)}); the "
                                    f"per-image outputs written so far are kept (rerun with "
                                    f"--resume)")
            final = str(error)
    final = ranks.broadcast(final)
    if error is not None:
        raise error
    if isinstance(final, str):
        raise InputError(None, final)
    return final
