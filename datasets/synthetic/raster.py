"""Small numpy/OpenCV drawing primitives shared by the anatomy and lesion models.

All arrays are (rows, cols) = (y, x); points are ``(x, y)`` float pixel coordinates.
"""

from __future__ import annotations

import cv2
import numpy as np


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise of ``shape`` scaled to unit standard deviation, float32.

    ``sigma`` is the blur in pixels (no blur at or below 0.3). Draws ``prod(shape)`` normals.
    """
    n = rng.standard_normal(shape, dtype=np.float32)
    if sigma > 0.3:
        n = cv2.GaussianBlur(n, (0, 0), sigmaX=float(sigma), borderType=cv2.BORDER_REFLECT)
    std = float(n.std())
    return n / std if std > 0 else n


def smoothstep(x: np.ndarray) -> np.ndarray:
    """Cubic Hermite step ``3x² - 2x³`` of ``x`` clipped to [0, 1] (same shape and dtype)."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def disc(d: int) -> np.ndarray:
    """Boolean (d, d) footprint of a dot of diameter ``d`` pixels (d=1: one pixel)."""
    k = np.arange(d, dtype=np.float32) - (d - 1) / 2.0
    return (k[None, :] ** 2 + k[:, None] ** 2) <= (d / 2.0) ** 2


def paste_max(canvas: np.ndarray, patch: np.ndarray, x0: int, y0: int) -> None:
    """In place: ``canvas[y0:, x0:] = max(canvas, patch)``, clipped to the canvas.

    ``canvas`` (H, W) and ``patch`` (h, w) share a dtype; ``(x0, y0)`` is the patch's top-left
    corner in canvas pixels and may lie outside the canvas.
    """
    h, w = patch.shape
    ya, xa = max(y0, 0), max(x0, 0)
    yb, xb = min(y0 + h, canvas.shape[0]), min(x0 + w, canvas.shape[1])
    if ya >= yb or xa >= xb:
        return
    sub = patch[ya - y0 : yb - y0, xa - x0 : xb - x0]
    np.maximum(canvas[ya:yb, xa:xb], sub, out=canvas[ya:yb, xa:xb])


def bezier(p0, p1, p2, n: int) -> np.ndarray:
    """(n, 2) float64 ``(x, y)`` points of the quadratic Bezier curve p0 -> p2 with control p1."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    p0, p1, p2 = (np.asarray(p, dtype=np.float64) for p in (p0, p1, p2))
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def fill_polygon(poly: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """uint8 0/1 mask of ``shape`` (H, W) inside the (N, 2) float ``(x, y)`` polygon.

    Vertices are rounded to quarter pixels (OpenCV sub-pixel ``shift=2``).
    """
    m = np.zeros(shape, np.uint8)
    cv2.fillPoly(m, [np.round(poly * 4).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=2)
    return m
