"""Bootstrap confidence intervals of recall and sensitivity at k FP per image.

Images (or patients, when every image has a patient id) are resampled with replacement; each
replicate re-evaluates the *same* per-image matches with integer image multiplicities through
:func:`common.metrics.froc.froc_from_pooled`, so no second implementation of the metric exists. The
interval is the percentile interval of the replicates (NaN replicates, e.g. samples without any
lesion, are skipped).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from common.metrics.froc import (
    DEFAULT_FPS,
    at_fp,
    fp_key,
    froc_from_pooled,
    recall_of,
    sensitivity_at_fp,
)


def bootstrap_froc(
    pooled: dict,
    n: int,
    seed: int = 0,
    fps: Iterable[float] = DEFAULT_FPS,
    groups: Sequence | None = None,
    level: float = 0.95,
) -> dict:
    """Percentile bootstrap CIs.

    Args:
        pooled: output of :func:`common.metrics.froc.pool_matches` (its images in order).
        n: number of replicates (>= 1).
        groups: optional per-image group key (patient id); groups are resampled instead of images.
        level: coverage of the two-sided interval.

    Returns:
        ``{"n": n, "seed": seed, "unit": "image"|"patient", "level": level, "recall": [lo, hi],
        "sensitivity_at_fp": {"1": [lo, hi], ...}}``; bounds are None when no replicate is defined.
    """
    fps = list(fps)
    n_img = int(pooled["n_images"])
    if groups is not None:
        _, group_of_image = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
        n_groups = int(group_of_image.max()) + 1 if n_img else 0
    else:
        group_of_image = np.arange(n_img)
        n_groups = n_img
    rng = np.random.default_rng(seed)
    rec = np.full(n, np.nan)
    sens = np.full((n, len(fps)), np.nan)
    for b in range(n):
        draw = rng.integers(0, n_groups, size=n_groups)
        group_w = np.bincount(draw, minlength=n_groups).astype(np.float64)
        w = group_w[group_of_image]
        lw = w[pooled["lesion_image"]]
        rec[b] = recall_of(pooled["lesion_scores"], lw)
        curve = froc_from_pooled(pooled, w)
        s = sensitivity_at_fp(curve, fps)
        sens[b] = [at_fp(s, k) for k in fps]
    alpha = (1 - level) / 2

    def ci(x):
        x = x[~np.isnan(x)]
        if len(x) == 0:
            return [None, None]
        lo, hi = np.quantile(x, [alpha, 1 - alpha])
        return [float(lo), float(hi)]

    return {
        "n": int(n),
        "seed": int(seed),
        "unit": "patient" if groups is not None else "image",
        "level": level,
        "recall": ci(rec),
        "sensitivity_at_fp": {fp_key(k): ci(sens[:, j]) for j, k in enumerate(fps)},
    }
