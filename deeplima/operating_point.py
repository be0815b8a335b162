"""Operating points: the score threshold that gives K false positives per image on a validation set.

The FROC curve comes from :mod:`common.metrics` (``evaluate_boxes`` for masses, ``evaluate_masks``
for calcifications), so the threshold is read off exactly the curve that the reports show; nothing
here counts hits or false positives itself. The validation run that produces those curves is
:func:`deeplima.calibration.calibrate`'s; this module only reads thresholds off them.

``operating_points.json`` (stored in the model bundle)::

    {
      "source": "validation set description",
      "mass": {"1": {"threshold": 0.43, "fp_per_image": 0.9, "sensitivity": 0.6}, "2": {...}, ...},
      "calc": {"1": {...}, ...},
      "default_fp": "1",         # used by ``predict`` without --threshold or --target-fp
      "validation": {...}        # figures of the calibration split (``validation_figures``; also in
                                 # the model card of ``bundle.json``)
    }
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from common.errors import InputError
from common.io import finite_or_none
from common.metrics.froc import fp_key

__all__ = [
    "DEFAULT_TARGET_FPS",
    "OperatingPointError",
    "check_operating_points",
    "choose_operating_points",
    "resolve_thresholds",
    "threshold_at_fp",
    "validation_figures",
]

DEFAULT_TARGET_FPS = (0.25, 0.5, 1, 2, 5, 10)


class OperatingPointError(ValueError):
    """An operating point that the bundle was not calibrated for."""


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _non_finite(obj, where: str = "") -> str | None:
    """Key path of the first NaN / infinite number inside ``obj`` (None when all are finite)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return where or "(top level)"
    if isinstance(obj, Mapping):
        items = obj.items()
    elif isinstance(obj, list | tuple):
        items = enumerate(obj)
    else:
        return None
    for k, v in items:
        found = _non_finite(v, f"{where}.{k}" if where else str(k))
        if found:
            return found
    return None


def check_operating_points(ops, path=None) -> dict:
    """Validate the content of ``operating_points.json``; returns it unchanged.

    Expected (see the module docstring): an object; ``mass`` / ``calc`` objects mapping FP/image
    levels (positive numbers as strings) to ``{"threshold": finite number, "fp_per_image",
    "sensitivity" (finite numbers or null)}``; ``default_fp`` null or a positive level; ``source`` a
    string; no NaN or infinite number anywhere.

    Raises:
        common.errors.InputError: one line naming ``path`` and what is wrong.
    """
    def bad(reason: str):
        return InputError(path, f"not a valid operating points file: {reason}")

    if not isinstance(ops, Mapping):
        raise bad(f"a JSON object is expected, got {type(ops).__name__}")
    where = _non_finite(ops)
    if where:
        raise bad(f"non-finite number at {where}")
    for kind in ("mass", "calc"):
        table = ops.get(kind)
        if table is None:
            continue
        if not isinstance(table, Mapping):
            raise bad(f"{kind} must be an object of FP/image levels, got {type(table).__name__}")
        for level, point in table.items():
            try:
                ok = float(level) > 0
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise bad(f"{kind} level {level!r} is not a positive number of FP/image")
            if not isinstance(point, Mapping) or not _is_number(point.get("threshold")):
                raise bad(f"{kind}.{level}.threshold must be a finite number")
            for field in ("fp_per_image", "sensitivity"):
                if point.get(field) is not None and not _is_number(point[field]):
                    raise bad(f"{kind}.{level}.{field} must be a finite number or null")
    default = ops.get("default_fp")
    if default is not None:
        try:
            ok = not isinstance(default, bool) and isinstance(default, str | int | float) and (
                math.isfinite(float(default)) and float(default) > 0)
        except ValueError:
            ok = False
        if not ok:
            raise bad(f"default_fp {default!r} is not a positive number of FP/image")
    if ops.get("source") is not None and not isinstance(ops["source"], str):
        raise bad("source must be a string")
    if ops.get("validation") is not None and not isinstance(ops["validation"], Mapping):
        raise bad("validation must be an object")
    return ops


def threshold_at_fp(froc: Mapping, k: float) -> dict:
    """Score threshold reaching the highest sensitivity with at most ``k`` false positives per
    image.

    Args:
        froc: a ``froc`` entry of a ``common.metrics`` report: ``thresholds`` (descending),
            ``fp_per_image`` and ``sensitivity`` (both non-decreasing as the threshold falls).
        k: allowed false positives per image.

    Returns:
        ``{"threshold", "fp_per_image", "sensitivity"}``: among the curve's thresholds with
        ``fp_per_image <= k``, the highest one that already has the best sensitivity (fewer false
        positives for the same sensitivity). When no threshold within ``k`` finds a lesion (even the
        highest exceeds ``k``, or the curve is empty), the threshold lies just above the top score:
        nothing is kept, 0 FP, 0 sensitivity. The sensitivity is None when the validation set has no
        lesion.
    """
    thr = np.asarray(froc.get("thresholds", []), dtype=np.float64)
    fppi = np.asarray([np.nan if v is None else v for v in froc.get("fp_per_image", [])],
                      np.float64)
    sens = np.asarray([np.nan if v is None else v for v in froc.get("sensitivity", [])],
                      np.float64)
    no_lesion = bool(len(sens)) and bool(np.isnan(sens).all())
    # the curve starts with "keep nothing" (threshold just above the top score: 0 FP, 0
    # sensitivity), the right choice when no threshold within k FP finds anything
    top = float(thr[0]) if len(thr) else 1.0
    thr = np.concatenate([[np.nextafter(top, np.inf)], thr])
    fppi = np.concatenate([[0.0], fppi])
    sens = np.concatenate([[np.nan if no_lesion else 0.0], sens])
    ok = np.flatnonzero(fppi <= float(k))
    s = np.nan_to_num(sens[ok], nan=-1.0)
    # the first (= highest) threshold that reaches the best sensitivity
    best = ok[int(np.argmax(s >= s.max()))]
    return {
        "threshold": float(thr[best]),
        "fp_per_image": float(fppi[best]),
        "sensitivity": None if math.isnan(sens[best]) else float(sens[best]),
    }


def choose_operating_points(
    mass_report: Mapping | None,
    calc_report: Mapping | None,
    fps: Iterable[float] = DEFAULT_TARGET_FPS,
    source: str = "",
    default_fp: float = 1,
) -> dict:
    """``operating_points.json`` content from validation reports of ``evaluate_boxes`` (masses) and
    ``evaluate_masks`` (calcifications); either report may be None."""
    out: dict = {"source": source, "default_fp": fp_key(default_fp)}
    for name, report in (("mass", mass_report), ("calc", calc_report)):
        if report is None:
            continue
        out[name] = {fp_key(k): threshold_at_fp(report["froc"], k) for k in fps}
    return out


def resolve_thresholds(
    operating_points: Mapping,
    threshold: float | None = None,
    target_fp: float | None = None,
    fallback: float = 0.5,
) -> dict:
    """Thresholds of a prediction run: ``{"mass": t, "calc": t, "source": "..."}``.

    ``threshold`` wins; else ``target_fp`` K reads ``operating_points[kind][K]``
    (OperatingPointError with the available levels when K was not calibrated); else the bundle's
    ``default_fp``; else ``fallback``.
    """
    if threshold is not None:
        return {"mass": float(threshold), "calc": float(threshold),
                "source": f"--threshold {threshold}"}
    key = None
    if target_fp is not None:
        key = fp_key(target_fp)
    elif operating_points.get("default_fp") is not None:
        key = fp_key(float(operating_points["default_fp"]))  # "1", 1 and 1.0 alike
    out: dict = {}
    for kind in ("mass", "calc"):
        table = operating_points.get(kind) or {}
        if key is not None and key in table:
            out[kind] = float(table[key]["threshold"])
        elif target_fp is not None:
            levels = ", ".join(sorted(table, key=float)) or "none"
            raise OperatingPointError(
                f"the bundle has no {kind} operating point for {key} FP/image "
                f"(calibrated: {levels})"
            )
        else:
            out[kind] = float(fallback)
    calibrated = key is not None and "mass" in operating_points
    out["source"] = (f"operating point {key} FP/image" if calibrated
                     else f"default threshold {fallback}")
    return out


def validation_figures(ev: Mapping, gt_root, fps: Iterable[float]) -> dict:
    """The figures of a validation run worth keeping with the models (JSON-ready, NaN -> None).

    Args:
        ev: the result of :func:`deeplima.report.evaluate_folder` on the validation split
            (:func:`deeplima.calibration.calibrate`).

    Returns:
        ``{"data_root", "split", "n_images", "fps", "mass": {"n_lesions", "recall",
        "sensitivity_at_fp", "ap50_coco"}, "calc": {"n_lesions", "recall", "sensitivity_at_fp"
        (lesion recall of the IoP FROC), "gt_labels", "per_type": {type: {"n_lesions",
        "recall"}}}}``; ``sensitivity_at_fp`` keys are :func:`common.metrics.froc.fp_key` levels.
    """
    m, c = ev["mass"], ev["calc"]
    out = {
        "data_root": str(Path(gt_root).resolve()),
        "split": ev.get("split"),
        "n_images": ev.get("n_images"),
        "fps": [float(k) for k in fps],
        "mass": {"n_lesions": m["n_lesions"], "recall": m["recall"],
                 "sensitivity_at_fp": m["sensitivity_at_fp"], "ap50_coco": m.get("ap50_coco")},
        "calc": {"n_lesions": c["n_lesions"], "recall": c["recall"],
                 "sensitivity_at_fp": c["sensitivity_at_fp"], "gt_labels": c.get("gt_labels"),
                 "per_type": {t: {"n_lesions": s["n_lesions"], "recall": s["recall"]}
                              for t, s in (c.get("per_type") or {}).items()}},
    }
    return finite_or_none(out)


