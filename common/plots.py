"""Report figures (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from common.io import atomic_write_bytes


def plot_froc(
    curves: Mapping[str, Mapping],
    out_png: str | Path,
    title: str | None = None,
    fps: Iterable[float] | None = (1, 2, 5, 10),
    xlim: tuple[float, float] | None = None,
) -> Path:
    """Plot FROC curves with the paper's axes and write a PNG atomically.

    Args:
        curves: name -> froc dict with ``fp_per_image`` and ``sensitivity`` lists (the ``froc``
            entry of a report, or :func:`common.metrics.froc.froc_curve` output).
        out_png: output path.
        fps: FP-per-image levels marked with dotted vertical lines (the ``sensitivity_at_fp``
            levels).
        xlim: x-axis range; default from the data.

    The x axis is mean false positives per image on a log scale (as in the paper's Figs. 5 and 8);
    operating points with 0 FP per image cannot sit on a log axis and are drawn at the left border.
    The curve is drawn as a step function (sensitivity stays until the next operating point), which
    is what ``sensitivity_at_fp`` reads.
    """
    # matplotlib stays local: it is heavy (~0.5 s) and only drawing needs it (the evaluate command
    # imports this module even without --plot); Agg: no display needed
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.2), dpi=120)
    positive = [
        v
        for c in curves.values()
        for v in np.asarray(c["fp_per_image"], dtype=float)
        if v is not None and np.isfinite(v) and v > 0
    ]
    lo = min(positive) / 2 if positive else 0.01
    hi = max(positive) * 1.5 if positive else 10.0
    if fps:
        hi = max(hi, max(fps) * 1.5)
    if xlim is not None:
        lo, hi = xlim
    for name, c in curves.items():
        x = np.asarray([np.nan if v is None else v for v in c["fp_per_image"]], dtype=float)
        y = np.asarray([np.nan if v is None else v for v in c["sensitivity"]], dtype=float)
        if len(x) == 0:
            continue
        x = np.clip(x, lo, None)
        ax.step(x, y, where="post", label=name)
    for k in fps or ():
        ax.axvline(k, color="0.8", linestyle=":", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("False positives per image")
    ax.set_ylabel("Sensitivity")
    if title:
        ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write_bytes(out_png, buf.getvalue())
