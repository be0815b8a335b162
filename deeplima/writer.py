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
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

import common.io
from common.errors import InputError
from common.inputs import collect_inputs, unique_stems
from common.io import (
    atomic_write_bytes,
    atomic_write_json,
    encode_png,
    os_error_reason,
    read_json,
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
    "write_image_outputs",
    "write_rendered",
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


def _finished(stem: str, sha256: str | None, *, out: Path, thresholds: dict,
              model_id: str | None) -> dict | None:
    """:func:`_done` of ``stem``'s per-image JSON in ``out`` (the loader's resume check; a
    module-level function so that worker processes can be handed it)."""
    return _done(out / "per_image" / f"{stem}.json", sha256, out, thresholds, model_id)


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
    for folder in (out, out / "per_image", *(out / sub for sub in OUTPUT_SUBDIRS)):
        for pattern in (".*.tmp", ".*.staged"):
            for tmp in folder.glob(pattern):
                try:
                    tmp.unlink()
                except OSError:
                    pass  # not ours to remove after all: harmless beside the outputs


def _input_plan(inputs: Iterable[str | Path], out: Path, stems: Sequence[str] | None
                ) -> tuple[list[str], list[str], int]:
    """(input files, their stems, number of prediction-folder PNGs left out) of a run."""
    paths = collect_inputs(inputs)
    n_ignored = 0
    if stems is None:
        kept = [p for p in paths if not is_prediction_output(p, out)]
        n_ignored = len(paths) - len(kept)
        paths = kept
        stems = unique_stems(paths)
    elif len(stems) != len(paths) or len(set(stems)) != len(stems):
        raise ValueError("stems must be unique, one per input file")
    return [str(p) for p in paths], list(stems), n_ignored


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


def _outcome(item: PreparedImage, result: ImageResult | tuple | None, out: Path,
             predictor: FindingsPredictor, rendered: Future | None = None) -> dict:
    """What one image contributes to the folder-level files, after writing its per-image files
    (a picklable dict, gathered from every rank): ``index``, ``entry`` (of ``run.json``'s
    ``inputs``), ``image`` (row of ``images.json``, None when it failed), ``results`` (COCO
    results of its masses), ``failure`` (None when it did not fail).

    ``result`` is the models' :class:`ImageResult` or the ``(reason, message)`` of their failure
    (:func:`_predict`); ``rendered``, when given, the future of its
    :func:`render_image_outputs`."""
    path, image_id = item.path, item.index + 1
    entry = {"file": path, "stem": item.stem, "sha256": item.sha256, "status": "pending"}
    outcome = {"index": item.index, "entry": entry, "image": None, "results": [], "failure": None}

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
        try:
            rec, pngs = (rendered.result() if rendered is not None else render_image_outputs(
                result, item.stem, image_id, predictor.model_id, item.sha256))
            rec = write_rendered(out, item.stem, rec, pngs)
        except OSError as e:  # full disk, read-only folder...: this image fails, the rest go on
            return fail(f"cannot write its outputs to {out} ({os_error_reason(e)})")
        except Exception as e:
            return fail(" ".join(f"unexpected {type(e).__name__}: {e}".split()))
        entry["status"] = "done"
    outcome["image"] = {"id": image_id, "file_name": path, "stem": item.stem,
                        "height": rec["height"], "width": rec["width"],
                        "json": f"per_image/{item.stem}.json"}
    outcome["results"] = [{"image_id": image_id, "category_id": 1, "bbox": m["bbox"],
                           "score": m["score"]} for m in rec.get("masses", ())]
    return outcome


def _predict_shard(predictor: FindingsPredictor, out: Path, items: Sequence[tuple[int, str, str]],
                   resume: bool, batch_size: int, workers: int, bar: tqdm) -> list[dict]:
    """Predict ``items`` (``(index, path, stem)``) and write their per-image files; returns their
    outcomes (:func:`_outcome`) in order.

    With ``workers``, K processes pre-process the next images (:func:`prepared_batches`) and K
    threads encode the outputs of the last ones (:func:`render_image_outputs`: overlays and PNG
    compression, most of the writing time on a full-field image) while the models work; this
    thread writes the files, in input order, at most ``max(batch_size, workers)`` images behind.
    """
    finished = (partial(_finished, out=out, thresholds=predictor.thresholds,
                        model_id=predictor.model_id) if resume else None)
    source = ImageSource(items, predictor.preprocessor, finished)
    outcomes: list[dict] = []
    pending: deque[tuple[PreparedImage, Any, Future | None]] = deque()  # to write, in order
    behind = max(batch_size, workers) if workers else 0

    def settle(keep: int) -> None:
        while len(pending) > keep:
            item, result, rendered = pending.popleft()
            outcomes.append(_outcome(item, result, out, predictor, rendered))
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


def _run_summary(predictor: FindingsPredictor, complete: bool, entries: list[dict],
                 failures: list[dict], n_ignored: int, t_start: float) -> dict[str, Any]:
    """``run.json``."""
    return {
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
        "seconds": round(time.time() - t_start, 2),
        "failures": [f["message"] for f in failures],
        "inputs": entries,
    }


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

    How the work runs changes nothing in the folder (only timings differ): the pre-processing of
    the next images may run in ``workers`` DataLoader processes (:mod:`deeplima.loader`) while the
    models work on ``batch_size`` images at a time (:meth:`FindingsPredictor.predict_batch`), and
    under torchrun ``ranks`` share the images (:mod:`deeplima.distributed`): rank 0 collects the
    inputs and assigns the ids (input order, before sharding), each rank predicts every
    ``world_size``-th image and writes its per-image files, and once all have handed in their
    outcomes rank 0 writes ``images.json``, ``masses_results.json``, the failure lists and
    ``run.json``. A rerun with ``resume`` (with any number of ranks) completes a run that stopped or
    lost a rank and rebuilds those files.

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

    Returns:
        summary dict (also ``run.json``), the same on every rank: n_inputs, n_done, n_skipped,
        n_failed, failures, thresholds, n_ignored_outputs, inputs, and the predictor's
        ``run_info`` (e.g. ``bundle``).

    Raises:
        InputError: the prediction folder cannot be created or its run files cannot be written (one
            line; what was written before stays, and ``resume`` picks it up).
    """
    ranks = ranks if ranks is not None else Ranks()
    out = Path(out_dir)
    t_start = time.time()

    # rank 0 fixes the input list, the stems and so the image ids, and opens the folder
    plan: tuple | str = ""
    error = None
    if ranks.is_main:
        try:
            plan = _input_plan(inputs, out, stems)
            entries = [{"file": p, "stem": s, "sha256": None, "status": "pending"}
                       for p, s in zip(*plan[:2])]
            try:
                out.mkdir(parents=True, exist_ok=True)
                _remove_stale_temporaries(out)
                # also: is the folder writable?
                atomic_write_json(out / "run.json",
                                  _run_summary(predictor, False, entries, [], plan[2], t_start))
            except OSError as e:
                raise InputError(out, f"cannot write the prediction folder ({os_error_reason(e)})"
                                 ) from None
        except ValueError as e:  # InputError included
            error, plan = e, str(e)
    plan = ranks.broadcast(plan)
    if error is not None:
        raise error
    if isinstance(plan, str):  # rank 0 could not start the run: the same line on every rank
        raise InputError(None, plan)
    paths, stems, n_ignored = plan

    owned = [(i, paths[i], stems[i]) for i in ranks.shard(len(paths))]
    desc = "deeplima predict" + (f" (rank 0 of {ranks.world_size})" if ranks.world_size > 1
                                 else "")
    with tqdm(total=len(owned), desc=desc, unit="img",
              disable=not progress or not ranks.is_main) as bar:
        outcomes = _predict_shard(predictor, out, owned, resume, batch_size, workers, bar)

    # every rank's outcomes, in input order, make the folder-level files (rank 0 writes them)
    gathered = ranks.gather(outcomes)
    final: dict | str = ""
    if ranks.is_main:
        merged = sorted((o for part in gathered for o in part), key=lambda o: o["index"])
        entries = [o["entry"] for o in merged]
        images = [o["image"] for o in merged if o["image"] is not None]
        results = [r for o in merged for r in o["results"]]
        failures = [o["failure"] for o in merged if o["failure"] is not None]
        final = _run_summary(predictor, True, entries, failures, n_ignored, t_start)
        try:
            atomic_write_json(out / "images.json", images)
            if predictor.mass is not None:
                atomic_write_json(out / "masses_results.json", results, indent=None)
            else:  # an earlier run's detections would pass for this run's
                (out / "masses_results.json").unlink(missing_ok=True)
            atomic_write_json(out / "failures.json", failures)
            atomic_write_bytes(out / "failures.txt",
                               "".join(f["message"] + "\n" for f in failures).encode())
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
