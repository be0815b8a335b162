"""Vertical-line artifact localisation and removal (Sec. 2.2.1, "Artifact Removal", Eq. 5).

Detector artifacts are 1-pixel bright and dark dots along one image column. For every pixel the
smallest absolute difference to its 8 neighbours is large only for such isolated 1-pixel dots, so the
column sums of that quantity,

    h(x) = sum_y min_{j in N8(x, y)} |u(x, y) - u_j|                                          (Eq. 5)

show a pulse at an artifact column. ``h`` minus its running median ``h_hat`` removes the contribution
of the anatomy; columns whose excess is above a robust threshold are artifact columns, and each pixel
on them is replaced by the median of its 8 neighbours. No other pixel changes.

The paper leaves the threshold open. Ours (see :func:`find_artifact_columns` and
:func:`remove_artifacts`): the excess must beat 10 robust standard deviations of ``h - h_hat`` and an
absolute floor; the pulse must be at most 2 columns wide and 4 times above its neighbouring columns;
and the column must hold at least 8 isolated dots. Isolated or clustered calcifications, vertical
tissue or film edges fail at least one of these.

Where ``h`` is computed: on the windowed uint8 image after breast extraction (background and burned-in
text already 0, so they add nothing), over all rows. Image border pixels take their missing neighbours
by edge replication, so their minimum is 0; the first and last column therefore cannot be detected.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

#: Offsets (dy, dx) of the 8-neighbourhood.
NEIGHBOURS_8 = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def min_neighbour_difference(u: np.ndarray) -> np.ndarray:
    """``min_j |u(x, y) - u_j|`` over the 8 neighbours, per pixel.

    Args:
        u: uint8 (H, W) image.
    Returns:
        uint8 (H, W); border pixels use edge-replicated neighbours (so they are 0).
    """
    u = np.ascontiguousarray(u, dtype=np.uint8)
    p = cv2.copyMakeBorder(u, 1, 1, 1, 1, cv2.BORDER_REPLICATE)
    h, w = u.shape
    out = None
    for dy, dx in NEIGHBOURS_8:
        d = cv2.absdiff(u, p[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w])
        out = d if out is None else cv2.min(out, d, dst=out)
    return out


def artifact_profile(u: np.ndarray) -> np.ndarray:
    """``h(x)`` of Eq. 5: float64 (W,), the column sums of :func:`min_neighbour_difference`."""
    d = min_neighbour_difference(u)
    return cv2.reduce(d, 0, cv2.REDUCE_SUM, dtype=cv2.CV_64F).ravel()


def find_artifact_columns(
    h: np.ndarray,
    median_width: int = 15,
    k_spread: float = 10.0,
    min_excess: float = 400.0,
    max_run: int = 2,
    sharpness: float = 4.0,
    max_columns: int = 8,
) -> tuple[list[int], dict]:
    """Artifact columns from the profile ``h`` (Eq. 5).

    Args:
        h: float (W,) profile from :func:`artifact_profile`.
        median_width: width of the median filter giving ``h_hat`` (odd; 15 columns: wide enough that a
            1- or 2-column pulse does not move the median, narrow enough to follow the breast outline).
        k_spread: the excess ``r = h - h_hat`` must exceed ``k_spread`` robust standard deviations of r
            (1.4826 x its median absolute deviation), so textured or noisy images need a larger pulse.
        min_excess: and it must exceed this absolute floor, in grey levels summed over the column
            (400: e.g. 8 dots of contrast 50; on synthetic images the highest non-artifact excess
            seen, calcification clusters included, is about 200, a real artifact column 2500 and more
            at 512 rows). An isolated calcification dot adds at most 255.
        max_run: runs of more than ``max_run`` adjacent candidate columns are dropped: the artifact is
            a 1-pixel line, a wider band is an edge or a structure (e.g. the film edge of a scan).
        sharpness: a run must stand ``sharpness`` times above the excess of the columns either side
            of it: next to a 1-pixel dot line the neighbouring columns see normal texture (on synthetic
            images the ratio is 85 or more), while a strong vertical edge raises them too.
        max_columns: more candidate columns than this means the image is not a line-artifact case
            (e.g. a periodic texture); nothing is reported then.

    Returns:
        (sorted column indices, details {"threshold", "spread", "excess" of the found columns}).
    """
    h = np.asarray(h, dtype=np.float64)
    if h.size < 3:
        return [], {"threshold": None, "spread": 0.0, "excess": []}
    h_hat = ndimage.median_filter(h, size=median_width, mode="nearest")
    r = h - h_hat
    spread = 1.4826 * float(np.median(np.abs(r - np.median(r))))
    threshold = max(k_spread * spread, float(min_excess))
    cols = np.flatnonzero(r > threshold)
    cols = cols[(cols > 0) & (cols < h.size - 1)]  # border columns carry no signal (see module doc)
    if cols.size:
        runs = np.split(cols, np.flatnonzero(np.diff(cols) > 1) + 1)
        kept = []
        for run in runs:
            shoulder = max(r[run[0] - 1], r[run[-1] + 1], 0.0)
            if run.size <= max_run and r[run].min() >= sharpness * shoulder:
                kept.append(run)
        cols = np.concatenate(kept) if kept else cols[:0]
    if cols.size > max_columns:
        cols = cols[:0]
    details = {
        "threshold": threshold,
        "spread": spread,
        "excess": [float(r[c]) for c in cols],
    }
    return [int(c) for c in cols], details


def remove_artifact_columns(
    u: np.ndarray, columns: list[int] | np.ndarray, mask: np.ndarray | None = None
) -> np.ndarray:
    """Replace every pixel on ``columns`` by the median of its 8 neighbours; nothing else changes.

    The median of 8 values is the mean of the 4th and 5th smallest, rounded half up. Neighbours outside
    the image are mirrored (``np.pad`` mode "reflect"). All columns are repaired from the input image,
    so two adjacent artifact columns do not feed each other's repair.

    Args:
        u: uint8 (H, W) image.
        columns: column indices (x) to repair.
        mask: optional bool (H, W); only pixels inside it are replaced (keeps the background exactly 0).
    Returns:
        uint8 (H, W), a new array.
    """
    u = np.asarray(u)
    out = u.copy()
    h, w = u.shape
    for x in sorted({int(c) for c in columns}):
        if not 0 <= x < w:
            raise ValueError(f"column {x} outside an image of width {w}")
        lo, hi = max(0, x - 2), min(w, x + 3)
        strip = np.pad(
            u[:, lo:hi].astype(np.int16), 1, mode="reflect" if min(h, hi - lo) > 1 else "edge"
        )
        cx = x - lo + 1
        neigh = np.stack([strip[1 + dy : 1 + dy + h, cx + dx] for dy, dx in NEIGHBOURS_8])
        neigh.sort(axis=0)
        med = (neigh[3] + neigh[4] + 1) // 2
        if mask is None:
            out[:, x] = med.astype(np.uint8)
        else:
            m = np.asarray(mask[:, x], dtype=bool)
            out[m, x] = med[m].astype(np.uint8)
    return out


def remove_artifacts(
    u: np.ndarray,
    mask: np.ndarray | None = None,
    min_dots: int = 8,
    dot_contrast: int = 16,
    **find_kwargs,
) -> tuple[np.ndarray, list[int], dict]:
    """Eq. 5 end to end: (repaired uint8 (H, W), artifact columns, details).

    Columns found by :func:`find_artifact_columns` on ``h`` are kept only when they hold at least
    ``min_dots`` isolated dots, i.e. pixels whose smallest difference to their 8 neighbours is at least
    ``dot_contrast`` grey levels: the artifact is a line of many dots, while a few aligned
    calcifications can add up to a similar excess of ``h`` but not to that many dots.
    ``find_kwargs`` go to :func:`find_artifact_columns`; ``mask`` to :func:`remove_artifact_columns`.
    """
    u = np.asarray(u)
    d = min_neighbour_difference(u)
    h = cv2.reduce(d, 0, cv2.REDUCE_SUM, dtype=cv2.CV_64F).ravel()
    cols, details = find_artifact_columns(h, **find_kwargs)
    if cols:
        dots = (d[:, cols] >= dot_contrast).sum(axis=0)
        details["dots"] = [int(n) for n in dots]
        details["excess"] = [e for e, n in zip(details["excess"], dots) if n >= min_dots]
        cols = [c for c, n in zip(cols, dots) if n >= min_dots]
    if not cols:
        return u.copy(), [], details
    return remove_artifact_columns(u, cols, mask), cols, details
