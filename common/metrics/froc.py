"""Pure FROC curve functions (second and third stage after :mod:`common.metrics.matching`).

Definitions used everywhere in DeepLIMa:

* the curve has one operating point per **distinct** prediction score t, from the highest to the
  lowest (predictions with equal scores enter together: "all predictions with score >= t are kept");
  the lowest threshold is never dropped;
* ``sensitivity(t)`` = found lesions / all lesions, a lesion being found when a hit prediction with
  score >= t finds it (it counts once);
* ``fp_per_image(t)`` = false positives with score >= t / number of images, every evaluated image
  counted, lesion-free ones included;
* ``sensitivity_at_fp[k]`` = the highest sensitivity at any threshold whose fp_per_image <= k (0
  when even the highest threshold has more than k false positives per image). No interpolation.
* ``recall`` = sensitivity with every prediction kept (the last point of the curve).

All functions take flat arrays and optional integer weights (the multiplicity of each item in a
bootstrap sample), so the exact same code computes the point estimate and every bootstrap replicate.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TypeVar

import numpy as np

from common.metrics.matching import ImageMatch

#: FP-per-image levels reported by default (the paper's Tables 1, 3 and 4: k = 1, 2, 5, 10)
DEFAULT_FPS = (1, 2, 5, 10)

_V = TypeVar("_V")


def fp_key(k: float | str) -> str:
    """The one key of an FP-per-image level in every report (``sensitivity_at_fp``, bootstrap
    intervals, operating points): ``1``, ``1.0`` and ``"1"`` -> ``"1"``; ``0.5`` and ``"0.5"`` ->
    ``"0.5"``."""
    k = float(k)
    return str(int(k)) if k.is_integer() else repr(k)


def at_fp(mapping: Mapping[str, _V], k: float | str) -> _V:
    """The value of FP-per-image level ``k`` in a mapping keyed by :func:`fp_key`.

    ``at_fp(report["sensitivity_at_fp"], 1)``, ``... 1.0)`` and ``... "1")`` read the same entry.

    Raises:
        KeyError: the level is not in ``mapping``; the message names it and the levels present
            (a level that was never computed is an error, not a sensitivity of 0).
    """
    key = fp_key(k)
    if key not in mapping:
        raise KeyError(
            f"no FP-per-image level {key} (asked for {k!r}); levels present: "
            f"{', '.join(map(str, mapping)) or 'none'}"
        )
    return mapping[key]


def froc_curve(
    pred_scores: np.ndarray,
    pred_fp: np.ndarray,
    lesion_scores: np.ndarray,
    n_images: float,
    pred_weights: np.ndarray | None = None,
    lesion_weights: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Exact FROC curve from pooled per-prediction and per-lesion arrays.

    Args:
        pred_scores: (P,) float, scores of all predictions of all images.
        pred_fp: (P,) bool, the prediction is a false positive (ignored predictions: pass False).
        lesion_scores: (L,) float, per lesion the highest score of a hit that finds it, ``-inf``
            if none.
        n_images: number of images (sum of image weights in a bootstrap replicate).
        pred_weights, lesion_weights: optional (P,) / (L,) multiplicities.

    Returns:
        dict of (T,) arrays, T = number of distinct prediction scores: ``thresholds`` (descending),
        ``fp_per_image``, ``sensitivity`` (both non-decreasing), ``n_fp``, ``n_found`` (weighted
        counts), and scalars ``n_lesions``, ``n_images``.
    """
    scores = np.asarray(pred_scores, dtype=np.float64).reshape(-1)
    fp = np.asarray(pred_fp, dtype=bool).reshape(-1)
    les = np.asarray(lesion_scores, dtype=np.float64).reshape(-1)
    pw = np.ones(len(scores)) if pred_weights is None else np.asarray(pred_weights, np.float64)
    lw = np.ones(len(les)) if lesion_weights is None else np.asarray(lesion_weights, np.float64)
    if np.isnan(scores).any() or np.isnan(les).any():
        raise ValueError("NaN score")

    order = np.argsort(-scores, kind="mergesort")
    s_sorted = scores[order]
    fp_cum = np.cumsum((fp * pw)[order])
    # last index of each group of equal scores: all predictions with score >= t are in
    last = np.flatnonzero(np.append(s_sorted[1:] != s_sorted[:-1], True)) if len(s_sorted) else []
    last = np.asarray(last, dtype=np.int64)
    thresholds = s_sorted[last]
    n_fp = fp_cum[last] if len(last) else np.zeros(0)

    # found lesions at t: weighted count of lesion_scores >= t
    l_order = np.argsort(-les, kind="mergesort")
    l_sorted = les[l_order]
    l_cum = np.concatenate([[0.0], np.cumsum(lw[l_order])])
    # number of lesions with score >= t == searchsorted on the ascending negated scores (side right)
    n_found = l_cum[np.searchsorted(-l_sorted, -thresholds, side="right")]

    n_les = float(lw.sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        sens = n_found / n_les if n_les > 0 else np.full(len(thresholds), np.nan)
    fppi = n_fp / n_images if n_images > 0 else np.full(len(thresholds), np.nan)
    return {
        "thresholds": thresholds,
        "fp_per_image": fppi,
        "sensitivity": sens,
        "n_fp": n_fp,
        "n_found": n_found,
        "n_lesions": n_les,
        "n_images": float(n_images),
    }


def sensitivity_at_fp(curve: dict, fps: Iterable[float] = DEFAULT_FPS) -> dict[str, float]:
    """Highest sensitivity at any threshold with fp_per_image <= k, for each k (keyed by fp_key).

    0.0 when no threshold qualifies (keeping no prediction gives 0 FP and 0 sensitivity); NaN when
    there is no lesion at all.
    """
    fppi = np.asarray(curve["fp_per_image"], dtype=np.float64)
    sens = np.asarray(curve["sensitivity"], dtype=np.float64)
    no_lesion = curve.get("n_lesions", 1) == 0
    out = {}
    for k in fps:
        ok = fppi <= float(k)
        if no_lesion:
            out[fp_key(k)] = float("nan")
        else:
            out[fp_key(k)] = float(sens[ok].max()) if ok.any() else 0.0
    return out


def recall_of(lesion_scores: np.ndarray, lesion_weights: np.ndarray | None = None) -> float:
    """Fraction of lesions found by at least one hit at any score (NaN when there is no lesion)."""
    les = np.asarray(lesion_scores, dtype=np.float64).reshape(-1)
    lw = np.ones(len(les)) if lesion_weights is None else np.asarray(lesion_weights, np.float64)
    total = lw.sum()
    return float((lw * np.isfinite(les)).sum() / total) if total > 0 else float("nan")


def pool_matches(
    matches: Sequence[ImageMatch], lesion_type: str | None = None
) -> dict[str, np.ndarray]:
    """Concatenate per-image matches into the flat arrays of :func:`froc_curve`.

    Args:
        lesion_type: keep only the lesions of this type (predictions and FP are unchanged: the FP
            axis of a per-type curve is the overall FP per image).

    Returns:
        dict with ``pred_scores``, ``pred_fp``, ``pred_image`` (image index of each prediction),
        ``lesion_scores``, ``lesion_image``, ``n_images``.
    """

    def cat(arrs, dtype):
        return np.concatenate([np.asarray(a, dtype) for a in arrs]) if arrs else np.zeros(0, dtype)

    les, les_img = [], []
    for i, m in enumerate(matches):
        s = m.lesion_scores
        if lesion_type is not None:
            types = m.lesion_types if m.lesion_types is not None else np.full(len(s), None, object)
            s = s[np.asarray([t == lesion_type for t in types], dtype=bool)]
        les.append(s)
        les_img.append(np.full(len(s), i))
    return {
        "pred_scores": cat([m.pred_scores for m in matches], np.float64),
        "pred_fp": cat([m.pred_fp for m in matches], bool),
        "pred_image": cat(
            [np.full(len(m.pred_scores), i) for i, m in enumerate(matches)], np.int64
        ),
        "lesion_scores": cat(les, np.float64),
        "lesion_image": cat(les_img, np.int64),
        "n_images": len(matches),
    }


def froc_from_pooled(
    pooled: dict, image_weights: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """:func:`froc_curve` of :func:`pool_matches` output, optionally with image multiplicities."""
    if image_weights is None:
        return froc_curve(
            pooled["pred_scores"], pooled["pred_fp"], pooled["lesion_scores"], pooled["n_images"]
        )
    w = np.asarray(image_weights, dtype=np.float64)
    return froc_curve(
        pooled["pred_scores"],
        pooled["pred_fp"],
        pooled["lesion_scores"],
        float(w.sum()),
        pred_weights=w[pooled["pred_image"]],
        lesion_weights=w[pooled["lesion_image"]],
    )


def curve_to_json(curve: dict) -> dict[str, list]:
    """The report form of a curve: ``thresholds``, ``fp_per_image``, ``sensitivity`` lists and the
    ``n_fp``, ``n_found`` counts (non-finite values as None)."""

    def lst(a):
        return [None if not np.isfinite(v) else float(v) for v in np.asarray(a, dtype=np.float64)]

    return {
        "thresholds": lst(curve["thresholds"]),
        "fp_per_image": lst(curve["fp_per_image"]),
        "sensitivity": lst(curve["sensitivity"]),
        "n_fp": [int(v) for v in curve["n_fp"]],
        "n_found": [int(v) for v in curve["n_found"]],
    }
