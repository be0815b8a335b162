"""Choosing a bundle's operating points on a validation split (``deeplima calibrate``, ``deeplima
bundle --calibrate-on``).

The split is predicted into a prediction folder (:func:`deeplima.writer.write_predictions`), scored
with :func:`deeplima.report.evaluate_folder` (``common.metrics``), and the thresholds are read off
the two FROC curves (:func:`deeplima.operating_point.choose_operating_points`). This module sits
above the pipeline, the writer and the report, so each of them stays free of the others' imports.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from common.canonical import load_canonical_dicts
from common.errors import InputError

from .bundle import Bundle, load_bundle, save_operating_points
from .operating_point import DEFAULT_TARGET_FPS, choose_operating_points, validation_figures
from .pipeline import FindingsPredictor, Pipeline
from .report import evaluate_folder
from .writer import write_predictions

__all__ = ["calibrate", "calibrate_bundle"]


def calibrate(
    pipeline: FindingsPredictor,
    gt_root: str | Path,
    work_dir: str | Path,
    split: str = "val",
    fps: Iterable[float] = DEFAULT_TARGET_FPS,
    default_fp: float = 1,
    progress: bool = True,
) -> dict:
    """Operating points of ``pipeline`` (both models) on the ``split`` images of a canonical
    dataset.

    Predicts the split into ``work_dir`` (a prediction folder, see :mod:`deeplima.writer`, with the
    dataset's stems), scores it with :func:`deeplima.report.evaluate_folder` (common.metrics) and
    reads the thresholds off the two FROC curves. Returns the ``operating_points.json`` content
    (store it with :func:`deeplima.bundle.save_operating_points`), with a ``validation`` entry
    holding the figures of that split (:func:`deeplima.operating_point.validation_figures`) for the
    bundle's model card.

    Raises:
        InputError: the split has no image (or the dataset's COCO file is missing).
    """
    fps = list(fps)
    dicts = load_canonical_dicts(gt_root, "mass", split)
    if not dicts:
        raise InputError(gt_root, f"no image in split {split!r} to calibrate on")
    write_predictions(pipeline, [d["file_name"] for d in dicts], work_dir, progress=progress,
                      stems=[d["stem"] for d in dicts])
    ev = evaluate_folder(work_dir, gt_root, split, fps=fps)
    ops = choose_operating_points(
        ev["mass"], ev["calc"], fps, default_fp=default_fp,
        source=f"{gt_root} split {split} ({len(dicts)} images; {ev['mass']['n_lesions']} masses, "
               f"{ev['calc']['n_lesions']} calcifications)")
    ops["validation"] = validation_figures(ev, gt_root, fps)
    return ops


def calibrate_bundle(
    bundle: Bundle | str | Path,
    gt_root: str | Path,
    split: str = "val",
    work_dir: str | Path | None = None,
    fps: Iterable[float] = DEFAULT_TARGET_FPS,
    default_fp: float = 1,
    progress: bool = True,
) -> dict:
    """Choose a bundle's operating points on a validation split and store them.

    Runs :func:`calibrate` (predictions of the split into ``work_dir``, default
    ``BUNDLE/calibration_predictions``) and :func:`deeplima.bundle.save_operating_points`
    (``operating_points.json`` and the model card's ``calibration`` with the validation figures).
    Returns the operating points.
    """
    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    # the threshold only marks findings in the validation predictions; calibration reads whole
    # curves
    ops = calibrate(Pipeline(bundle, threshold=0.5), gt_root,
                    work_dir or bundle.root / "calibration_predictions", split=split, fps=fps,
                    default_fp=default_fp, progress=progress)
    save_operating_points(bundle, ops)
    return ops
