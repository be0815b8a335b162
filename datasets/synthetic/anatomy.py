"""The normal breast: silhouette, pectoral muscle, skin, parenchymal texture and vessels.

Everything here is drawn in the *canonical frame*: the chest wall at column 0 and the nipple toward
the last column (a right breast as DICOM PS3.3 C.8.11.7 orients it; left breasts are mirrored later,
see :func:`datasets.synthetic.generation.render_image`). Signal units: 0 is the unexposed detector,
fatty tissue ~0.3, dense tissue ~0.7 (bright = more attenuation, as displayed in MONOCHROME2).
Sizes scale with the image height ``h``, so small images stay sensible.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from datasets.synthetic.constants import DENSE_FRACTION
from datasets.synthetic.raster import bezier, fill_polygon, smooth_noise, smoothstep


@dataclass
class Anatomy:
    """One normal breast in the canonical frame (chest wall at column 0), images (H, W).

    Attributes:
        signal: float32 tissue signal (fat, glandular tissue, strands, skin, muscle, vessels);
            meaningful inside ``breast`` only (the caller replaces the background).
        breast: uint8 0/1 breast region, skin line and pectoral muscle included.
        muscle: uint8 0/1 pectoral muscle (all zero on CC views).
        dist: float32 distance in pixels of every breast pixel to the skin (image borders the
            breast touches are not skin), 0 outside.
        geometry: json-able silhouette parameters (see :func:`breast_geometry`).
        pectoral: :func:`pectoral_polygon` parameters plus ``level`` (its signal), None on CC.
        fat: fat signal level; dense_amp: glandular amplitude; skin_amp: skin line amplitude.
        vessels: ``width_px``, ``amplitude`` and ``paths`` (list of (80, 2) float64 ``(x, y)``
            arrays) of the normal vessels.
    """

    signal: np.ndarray
    breast: np.ndarray
    muscle: np.ndarray
    dist: np.ndarray
    geometry: dict
    pectoral: dict | None
    fat: float
    dense_amp: float
    skin_amp: float
    vessels: dict


def breast_geometry(rng: np.random.Generator, h: int, w: int, view: str) -> dict:
    """Json-able parameters of the breast silhouette of an (h, w) image, in pixels.

    A perturbed semi-ellipse from the chest wall: ``center_y`` (row of the axis), ``depth``
    (extent from the chest wall along x), ``half_height_top``/``half_height_bottom``, ``shear``
    (MLO droop: y += shear * x) and ``harmonics`` ``[[k, amplitude, phase], ...]`` of the outline.
    """
    if view == "MLO":
        cy = h * rng.uniform(0.45, 0.55)
        b_top = cy + h * rng.uniform(0.06, 0.16)  # the axillary tail leaves the image at the top
        b_bottom = min(h * rng.uniform(0.32, 0.42), 0.96 * h - cy)
        shear = float(rng.uniform(0.05, 0.25))  # MLO breast droops: y += shear * x
        a = w * rng.uniform(0.55, 0.72)
    else:
        cy = h * rng.uniform(0.46, 0.54)
        b_top = h * rng.uniform(0.33, 0.43)
        b_bottom = h * rng.uniform(0.33, 0.43)
        shear = float(rng.uniform(-0.05, 0.05))
        a = w * rng.uniform(0.55, 0.75)
    harmonics = [
        (k, float(rng.normal(0, 0.02 / k)), float(rng.uniform(0, 2 * np.pi))) for k in (2, 3, 5)
    ]
    return {
        "center_y": round(float(cy), 2),
        "depth": round(float(a), 2),
        "half_height_top": round(float(b_top), 2),
        "half_height_bottom": round(float(b_bottom), 2),
        "shear": round(shear, 4),
        "harmonics": [[k, round(amp, 5), round(ph, 5)] for k, amp, ph in harmonics],
    }


def breast_polygon(g: dict) -> np.ndarray:
    """(721, 2) float64 ``(x, y)`` outline of the :func:`breast_geometry` ``g``, closed at x=-2."""
    theta = np.linspace(-np.pi / 2, np.pi / 2, 721)
    pert = 1.0 + sum(amp * np.sin(k * theta + ph) for k, amp, ph in g["harmonics"])
    b = np.where(theta < 0, g["half_height_top"], g["half_height_bottom"])
    x = g["depth"] * np.cos(theta) * pert
    y = g["center_y"] + b * np.sin(theta) * pert + g["shear"] * x
    x[0] = x[-1] = -2.0  # close along the chest wall
    return np.stack([x, y], axis=1)


def pectoral_polygon(rng: np.random.Generator, h: int, w: int, breast: np.ndarray) -> dict:
    """Pectoral muscle triangle in the upper chest-wall corner, with a slightly convex edge.

    ``breast`` is the uint8 (h, w) silhouette (its first row bounds the muscle width). Returns
    ``top_width`` (px along row 0), ``chest_height`` (px along column 0), ``bulge`` and
    ``polygon`` ((67, 2) float64 ``(x, y)``, not json-able).
    """
    top_cols = np.flatnonzero(breast[0])
    top_extent = int(top_cols.max()) + 1 if len(top_cols) else int(0.3 * w)
    px = float(min(rng.uniform(0.25, 0.45) * w, 0.8 * top_extent))
    py = float(rng.uniform(0.30, 0.55) * h)
    bulge = float(rng.uniform(0.0, 0.12))
    ctrl = (px / 2 + bulge * px, py / 2 + bulge * py)
    edge = bezier((px, 0.0), ctrl, (0.0, py), 64)
    poly = np.concatenate([[[-2.0, -2.0]], edge, [[-2.0, py]]], axis=0)
    return {
        "top_width": round(px, 2),
        "chest_height": round(py, 2),
        "bulge": round(bulge, 4),
        "polygon": poly,
    }


def skin_distance(mask: np.ndarray) -> np.ndarray:
    """float32 (H, W) distance (px) of every pixel of the uint8 0/1 ``mask`` to the skin.

    Image borders the breast touches are not skin (the mask is extended by replication).
    """
    pad = 8
    padded = cv2.copyMakeBorder(mask, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    d = cv2.distanceTransform(padded, cv2.DIST_L2, 3)
    return d[pad:-pad, pad:-pad]


def _glandular_fraction(
    rng: np.random.Generator, h: int, w: int, mask: np.ndarray, dist: np.ndarray, density: str
) -> np.ndarray:
    """Dense-tissue fraction G in [0, 1], float32 (h, w), thresholded to the BI-RADS density.

    Generated on a grid of at most 416 rows and upsampled, so the cost hardly grows with size.
    """
    lh = min(h, 416)
    lw = max(2, int(round(w * lh / h)))
    scale = lh / h  # low-res px per full-res px
    small = cv2.resize(mask, (lw, lh), interpolation=cv2.INTER_NEAREST).astype(bool)
    small_dist = cv2.resize(dist, (lw, lh), interpolation=cv2.INTER_LINEAR)
    field = np.zeros((lh, lw), np.float32)
    for frac, weight in ((0.006, 0.25), (0.015, 0.45), (0.035, 0.6), (0.07, 0.5)):
        field += weight * smooth_noise(rng, (lh, lw), frac * h * scale)
    # glandular tissue sits behind the nipple, away from the skin and the chest wall
    prior = smoothstep(small_dist / (0.12 * h)).astype(np.float32)
    field = field + 1.2 * prior
    inside = field[small] if small.any() else field.ravel()
    thr = float(np.quantile(inside, 1.0 - DENSE_FRACTION[density]))
    g = 1.0 / (1.0 + np.exp(-(field - thr) / 0.4))
    # fluffy texture inside the glandular tissue and a weak mottle in the fat
    fine = smooth_noise(rng, (lh, lw), 0.006 * h * scale)
    g = np.clip(g * (0.8 + 0.2 * np.tanh(fine)) + 0.03 * fine, 0.0, 1.0)
    return cv2.resize(g.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)


def _strands(rng: np.random.Generator, h: int, w: int, nipple: tuple[float, float]) -> np.ndarray:
    """Ridge (strand) texture R >= 0, float32 (h, w): ducts and Cooper's ligaments.

    Made at half resolution: ridges of noise that is smooth along the rays from the ``nipple``
    ``(x, y)`` and fine across them, so they converge on the nipple (the angle seam points away
    from the chest wall, outside the breast); plus a weaker isotropic network.
    """
    mh, mw = max(2, h // 2), max(2, w // 2)
    n_ang, n_rad = 640, 256
    polar = rng.standard_normal((n_ang, n_rad), dtype=np.float32)
    polar = cv2.GaussianBlur(polar, (0, 0), sigmaX=10.0, sigmaY=1.5, borderType=cv2.BORDER_REFLECT)
    polar /= max(float(polar.std()), 1e-6)
    yy, xx = np.mgrid[0:mh, 0:mw].astype(np.float32)
    nx, ny = nipple[0] / 2, nipple[1] / 2
    ang = (np.arctan2(yy - ny, xx - nx) + np.pi) * (n_ang / (2 * np.pi))
    rad = np.hypot(yy - ny, xx - nx) * (n_rad / max(mh, mw))
    radial = cv2.remap(polar, rad, ang, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    iso = smooth_noise(rng, (mh, mw), max(0.7, 0.0025 * h / 2))
    ridge = (
        0.75 * np.clip(1 - np.abs(radial), 0, 1) ** 4 + 0.35 * np.clip(1 - np.abs(iso), 0, 1) ** 8
    )
    return cv2.resize(ridge.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)


def parenchyma(
    rng: np.random.Generator,
    h: int,
    w: int,
    mask: np.ndarray,
    dist: np.ndarray,
    density: str,
    nipple: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """Dense-tissue fraction G in [0, 1] and ridge (strand) texture R, both (h, w) float32.

    ``mask`` is the uint8 breast, ``dist`` its :func:`skin_distance`, ``density`` the BI-RADS
    letter (A-D), ``nipple`` the ``(x, y)`` nipple position, canonical frame.
    """
    g = _glandular_fraction(rng, h, w, mask, dist, density)
    return g, _strands(rng, h, w, nipple)


def _tissue_signal(
    rng: np.random.Generator,
    h: int,
    w: int,
    dist: np.ndarray,
    g: np.ndarray,
    ridge: np.ndarray,
) -> tuple[np.ndarray, float, float, float]:
    """Fat level rising from the skin (thickness fall-off), glandular tissue, strands, skin line.

    Returns the float32 (h, w) signal and the drawn ``fat``, ``dense_amp`` and ``skin_amp``.
    """
    fall = 1.0 - (1.0 - np.clip(dist / (0.06 * w), 0.0, 1.0)) ** 2
    dense_amp = float(rng.uniform(0.30, 0.40))
    strand_amp = float(rng.uniform(0.04, 0.08))
    fat = float(rng.uniform(0.24, 0.30))
    s = fat + 0.12 * fall + fall * (dense_amp * g + strand_amp * ridge * (0.4 + 0.6 * g))
    skin_w = max(1.0, 0.0012 * h)
    skin_amp = float(rng.uniform(0.05, 0.09))
    s = s + skin_amp * np.exp(-((dist / skin_w) ** 2))
    return s, fat, dense_amp, skin_amp


def _pectoral_signal(
    rng: np.random.Generator,
    s: np.ndarray,
    muscle: np.ndarray,
    pect: dict,
    ridge: np.ndarray,
    h: int,
    w: int,
) -> np.ndarray:
    """``s`` with the (softly edged) pectoral muscle blended in; sets ``pect["level"]``."""
    soft = cv2.GaussianBlur(muscle.astype(np.float32), (0, 0), max(1.0, 0.003 * h))
    xs = np.arange(w, dtype=np.float32)[None, :] / max(pect["top_width"], 1.0)
    level = float(rng.uniform(0.58, 0.70)) * (1.05 - 0.1 * np.clip(xs, 0, 1))
    s = s * (1 - soft) + (level + 0.03 * ridge) * soft
    pect["level"] = round(float(level.max()), 4)
    return s


def _normal_vessels(
    rng: np.random.Generator, h: int, w: int, depth: float
) -> tuple[np.ndarray, dict]:
    """Faint curvilinear tubes from the chest wall toward the nipple.

    Returns the float32 (h, w) vessel signal (amplitude included) and the ``vessels`` record of
    :class:`Anatomy`. ``depth`` is the breast's extent from the chest wall (px).
    """
    vessels = np.zeros((h, w), np.float32)
    vessel_w = max(1, int(round(0.003 * h)))
    paths = []
    for _ in range(int(rng.integers(2, 5))):
        y0 = rng.uniform(0.2, 0.8) * h
        p0 = (0.0, y0)
        p2 = (depth * rng.uniform(0.5, 0.9), y0 + rng.uniform(-0.15, 0.15) * h)
        p1 = ((p0[0] + p2[0]) / 2, (p0[1] + p2[1]) / 2 + rng.uniform(-0.08, 0.08) * h)
        pts = bezier(p0, p1, p2, 80)
        cv2.polylines(
            vessels,
            [np.round(pts * 4).astype(np.int32)],
            False,
            1.0,
            vessel_w,
            cv2.LINE_AA,
            shift=2,
        )
        paths.append(pts)
    vessels = cv2.GaussianBlur(vessels, (0, 0), max(0.7, 0.4 * vessel_w))
    vessel_amp = float(rng.uniform(0.02, 0.035))
    return vessel_amp * vessels, {"width_px": vessel_w, "amplitude": vessel_amp, "paths": paths}


def draw_anatomy(rng: np.random.Generator, h: int, w: int, view: str, density: str) -> Anatomy:
    """Draw the normal breast of an (h, w) ``view`` ("CC" or "MLO") of BI-RADS ``density``.

    Canonical frame (chest wall at column 0); MLO views get a pectoral muscle.
    """
    geo = breast_geometry(rng, h, w, view)
    breast = fill_polygon(breast_polygon(geo), (h, w))
    muscle = np.zeros_like(breast)
    pect = None
    if view == "MLO":
        pect = pectoral_polygon(rng, h, w, breast)
        muscle = fill_polygon(pect["polygon"], (h, w))
        breast |= muscle
    dist = skin_distance(breast)
    nipple = (geo["depth"], geo["center_y"] + geo["shear"] * geo["depth"])  # (x, y)
    g, ridge = parenchyma(rng, h, w, breast, dist, density, nipple)
    s, fat, dense_amp, skin_amp = _tissue_signal(rng, h, w, dist, g, ridge)
    if pect is not None:
        s = _pectoral_signal(rng, s, muscle, pect, ridge, h, w)
    vessel_signal, vessels = _normal_vessels(rng, h, w, geo["depth"])
    s = s + vessel_signal
    return Anatomy(s, breast, muscle, dist, geo, pect, fat, dense_amp, skin_amp, vessels)
