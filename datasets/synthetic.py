"""Synthetic DICOM mammograms with exact ground truth.

The embedded default data for the demo and the tests, since no real mammography dataset can be downloaded
in every environment. ``generate()`` (or ``python -m datasets.synthetic --out DIR --n N --seed S``) writes
a canonical dataset folder (see :mod:`datasets.canonical`)::

    OUT/
      images/<stem>.dcm        DICOM, Digital Mammography X-Ray Image Storage - For Presentation
      masses.json              COCO boxes of the masses
      calcifications.json      COCO, one annotation per 8-connected component of the calcification mask
      calc_masks/<stem>.png    uint8 0/255 calcification mask (written for every image: the synthetic
                               annotation is exhaustive, so an empty mask is a true "no calcification")
      breast_masks/<stem>.png  uint8 0/255 true breast region (skin line and pectoral muscle included)
      split.json               patient-level split (datasets.canonical.write_split_json)
      manifest.json            every generation parameter, per image

Studies. One study is one patient: the CC and the MLO view of one breast (laterality drawn per patient,
density shared by the two views; lesions are drawn independently per view). The stem is
``<patient_id>_<laterality>_<view>``, e.g. ``S0P0003_L_MLO``.

Image model. Everything is built in a "signal" unit ``s`` where 0 is the unexposed-detector
background, fatty tissue is ~0.3, dense tissue ~0.7 and calcifications ~1 (bright = more attenuation,
as displayed in MONOCHROME2). The breast is a perturbed semi-ellipse from the chest wall (R breasts have
the chest wall at column 0, L breasts at the last column, as DICOM PS3.3 C.8.11.7 orients them) with a
thickness fall-off and a skin line; parenchymal texture is filtered noise at several scales, generated
on a coarse grid and upsampled, thresholded to the BI-RADS density fraction (A-D); faint vessels;
MLO views have a pectoral muscle triangle. Anatomy, lesion and text sizes scale with the image height,
so small test images (e.g. 512x416) stay sensible; the pixel spacing scales too (a smaller image stands
for the same field of view).

Acquisition, drawn per image (``generate`` can force each): BitsStored 12/14/16; MONOCHROME1 (stored
inverted, tissue dark) or MONOCHROME2; RescaleSlope/Intercept, sometimes non-trivial; a window that
displays the breast (background below ``c - w/2``, calcifications near ``c + w/2``), given once, as the
first of two values, or absent. Burned-in view label, laterality marker and acquisition text lie in the
background on the nipple side, at least ~1 % of the height away from the breast. In ~30 % of images, the
detector artifact of the paper (Fig. 2): isolated 1-pixel bright and dark dots on one column.

Lesions (none in ~25 % of images), all inside the breast, off the pectoral muscle and apart from each
other:

* masses: round, oval, irregular or spiculated; diameter 2-6 % of the image height; soft margins;
  contrast 0.1-0.28 signal units, or 0.05-0.09 ("low") in most masses of dense (C/D) breasts. The box
  is the tight box of the footprint ``r <= R(theta)`` (spicules, drawn below half the contrast, are not
  part of it).
* calcifications, as a pixel mask typed per 8-connected component: ``dot`` (dots of 0.1-1 mm, i.e.
  1-12 px at 85 µm, mostly small; single (20 %) or in clusters of 5-30, each dot its own component; the
  mask is the dot pixels), ``vessel`` (tram-track dots along a
  curved vessel; the mask is one elongated band along the vessel) and ``large`` (crowded 1-4 px dots;
  the mask is their convex hull, slightly dilated: the region a radiologist would outline).

Cost: about 1-2 s per full-field 3328x2560 image on one core (vectorised numpy/OpenCV).

Ground truth frames: all boxes ``[x, y, w, h]`` and points ``[x, y]`` are in original DICOM pixel
coordinates (top-left origin, x along columns), i.e. after the laterality flip.

Same seed, same bytes: every random draw comes from ``numpy.random.default_rng`` seeded by
``(seed, patient, view)``; UIDs are hashes of the seed and the image identity; no timestamps are written.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from common.io import atomic_write_bytes, atomic_write_json, atomic_write_png
from datasets.canonical import (
    DEFAULT_RATIOS,
    calc_components,
    mask_bbox,
    mask_polygons,
    patient_split,
    write_canonical,
)

GENERATOR_VERSION = "1.0"
FULL_FIELD = (3328, 2560)  # rows, cols of a typical full-field digital mammogram
MG_FOR_PRESENTATION = (
    "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray Image Storage - For Pres.
)
VIEWS = ("CC", "MLO")
DENSITIES = ("A", "B", "C", "D")
DENSE_FRACTION = {
    "A": 0.12,
    "B": 0.32,
    "C": 0.58,
    "D": 0.82,
}  # share of the breast that is fibroglandular
MASS_SHAPES = ("round", "oval", "irregular", "spiculated")
WINDOW_MODES = ("single", "multi", "absent")
S_MAX = 1.25  # largest signal the stored range must hold (calcification on dense tissue, text)
CALC_TYPE_CODE = {"dot": 1, "vessel": 2, "large": 3}  # canonical codes (datasets.canonical)
# DICOM Patient Orientation (row direction, column direction) per laterality and view.
PATIENT_ORIENTATION = {
    ("R", "CC"): ["A", "R"],
    ("L", "CC"): ["P", "L"],
    ("R", "MLO"): ["A", "FR"],
    ("L", "MLO"): ["P", "FL"],
}


# ----------------------------------------------------------------------------------------------------
# small helpers


def _uid(*parts: object) -> str:
    """A deterministic DICOM UID in the UUID-derived ``2.25.`` root (hash of ``parts``)."""
    digest = hashlib.sha256(
        "/".join(str(p) for p in ("deeplima-synthetic",) + parts).encode()
    ).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters)."""
    for digits in range(12, 4, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    raise ValueError(f"{value} does not fit a decimal string")


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise scaled to unit standard deviation, float32."""
    n = rng.standard_normal(shape, dtype=np.float32)
    if sigma > 0.3:
        n = cv2.GaussianBlur(n, (0, 0), sigmaX=float(sigma), borderType=cv2.BORDER_REFLECT)
    std = float(n.std())
    return n / std if std > 0 else n


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _disc(d: int) -> np.ndarray:
    """Boolean (d, d) footprint of a dot of diameter ``d`` pixels (d=1: one pixel)."""
    k = np.arange(d, dtype=np.float32) - (d - 1) / 2.0
    return (k[None, :] ** 2 + k[:, None] ** 2) <= (d / 2.0) ** 2


def _paste_max(canvas: np.ndarray, patch: np.ndarray, x0: int, y0: int) -> None:
    """``canvas[y0:, x0:] = max(canvas, patch)`` clipped to the canvas."""
    h, w = patch.shape
    ya, xa = max(y0, 0), max(x0, 0)
    yb, xb = min(y0 + h, canvas.shape[0]), min(x0 + w, canvas.shape[1])
    if ya >= yb or xa >= xb:
        return
    sub = patch[ya - y0 : yb - y0, xa - x0 : xb - x0]
    np.maximum(canvas[ya:yb, xa:xb], sub, out=canvas[ya:yb, xa:xb])


def _bezier(p0, p1, p2, n: int) -> np.ndarray:
    """(n, 2) float points of a quadratic Bezier curve."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    p0, p1, p2 = (np.asarray(p, dtype=np.float64) for p in (p0, p1, p2))
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


# ----------------------------------------------------------------------------------------------------
# per-image parameters


def _draw_image_params(rng: np.random.Generator) -> dict:
    """Acquisition parameters of one image (pixel module, window, rescale, artifact)."""
    bits = int(rng.choice([12, 14, 16], p=[0.35, 0.35, 0.30]))
    maxv = (1 << bits) - 1
    base = float(rng.uniform(0.0, 0.06)) * maxv  # stored value of the background signal s=0
    span = (maxv - base) / S_MAX * float(rng.uniform(0.6, 1.0))  # stored units per unit of signal
    slope, intercept = [(1.0, 0.0), (1.0, 0.0), (1.0, -1000.0), (0.5, 0.0), (2.0, -512.0)][
        int(rng.integers(5))
    ]
    return {
        "bits_stored": bits,
        "photometric": "MONOCHROME1" if rng.random() < 0.35 else "MONOCHROME2",
        "window_mode": str(rng.choice(WINDOW_MODES, p=[0.45, 0.30, 0.25])),
        "rescale_slope": slope,
        "rescale_intercept": intercept,
        "raw_base": round(base, 3),
        "raw_span": round(span, 3),
        # signal values the window maps to 0 and 255: just above the background, and calcification level
        "window_signal": [
            round(float(rng.uniform(0.10, 0.16)), 4),
            round(float(rng.uniform(0.95, 1.1)), 4),
        ],
        "background_signal": round(float(rng.uniform(0.0, 0.04)), 4),
        "noise_sigma": round(float(rng.uniform(0.004, 0.010)), 5),
        "artifact": bool(rng.random() < 0.3),
    }


# ----------------------------------------------------------------------------------------------------
# anatomy (canonical frame: chest wall at column 0)


def _breast_geometry(rng: np.random.Generator, h: int, w: int, view: str) -> dict:
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


def _breast_polygon(g: dict) -> np.ndarray:
    theta = np.linspace(-np.pi / 2, np.pi / 2, 721)
    pert = 1.0 + sum(amp * np.sin(k * theta + ph) for k, amp, ph in g["harmonics"])
    b = np.where(theta < 0, g["half_height_top"], g["half_height_bottom"])
    x = g["depth"] * np.cos(theta) * pert
    y = g["center_y"] + b * np.sin(theta) * pert + g["shear"] * x
    x[0] = x[-1] = -2.0  # close along the chest wall
    return np.stack([x, y], axis=1)


def _pectoral_polygon(rng: np.random.Generator, h: int, w: int, breast: np.ndarray) -> dict:
    """Pectoral muscle triangle in the upper chest-wall corner, with a slightly convex edge."""
    top_cols = np.flatnonzero(breast[0])
    top_extent = int(top_cols.max()) + 1 if len(top_cols) else int(0.3 * w)
    px = float(min(rng.uniform(0.25, 0.45) * w, 0.8 * top_extent))
    py = float(rng.uniform(0.30, 0.55) * h)
    bulge = float(rng.uniform(0.0, 0.12))
    ctrl = (px / 2 + bulge * px, py / 2 + bulge * py)
    edge = _bezier((px, 0.0), ctrl, (0.0, py), 64)
    poly = np.concatenate([[[-2.0, -2.0]], edge, [[-2.0, py]]], axis=0)
    return {
        "top_width": round(px, 2),
        "chest_height": round(py, 2),
        "bulge": round(bulge, 4),
        "polygon": poly,
    }


def _fill(poly: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    cv2.fillPoly(m, [np.round(poly * 4).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=2)
    return m


def _skin_distance(mask: np.ndarray) -> np.ndarray:
    """Distance (px) of every breast pixel to the skin; image borders the breast touches are not skin."""
    pad = 8
    padded = cv2.copyMakeBorder(mask, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    d = cv2.distanceTransform(padded, cv2.DIST_L2, 3)
    return d[pad:-pad, pad:-pad]


def _parenchyma(
    rng: np.random.Generator,
    h: int,
    w: int,
    mask: np.ndarray,
    dist: np.ndarray,
    density: str,
    nipple: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """Dense-tissue fraction G in [0, 1] and ridge (strand) texture R, both (h, w) float32.

    Coarse structure is generated on a grid of at most 416 rows and upsampled, so the cost hardly
    grows with image size.
    """
    lh = min(h, 416)
    lw = max(2, int(round(w * lh / h)))
    scale = lh / h  # low-res px per full-res px
    small = cv2.resize(mask, (lw, lh), interpolation=cv2.INTER_NEAREST).astype(bool)
    small_dist = cv2.resize(dist, (lw, lh), interpolation=cv2.INTER_LINEAR)
    field = np.zeros((lh, lw), np.float32)
    for frac, weight in ((0.006, 0.25), (0.015, 0.45), (0.035, 0.6), (0.07, 0.5)):
        field += weight * _smooth_noise(rng, (lh, lw), frac * h * scale)
    # glandular tissue sits behind the nipple, away from the skin and the chest wall
    prior = _smoothstep(small_dist / (0.12 * h)).astype(np.float32)
    field = field + 1.2 * prior
    inside = field[small] if small.any() else field.ravel()
    thr = float(np.quantile(inside, 1.0 - DENSE_FRACTION[density]))
    g = 1.0 / (1.0 + np.exp(-(field - thr) / 0.4))
    # fluffy texture inside the glandular tissue and a weak mottle in the fat
    fine = _smooth_noise(rng, (lh, lw), 0.006 * h * scale)
    g = np.clip(g * (0.8 + 0.2 * np.tanh(fine)) + 0.03 * fine, 0.0, 1.0)
    g = cv2.resize(g.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    # strands (ducts, Cooper's ligaments) at half resolution: ridges of noise that is smooth along
    # the rays from the nipple and fine across them, so they converge on the nipple (the angle seam
    # points away from the chest wall, outside the breast); plus a weaker isotropic network
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
    iso = _smooth_noise(rng, (mh, mw), max(0.7, 0.0025 * h / 2))
    ridge = (
        0.75 * np.clip(1 - np.abs(radial), 0, 1) ** 4 + 0.35 * np.clip(1 - np.abs(iso), 0, 1) ** 8
    )
    ridge = cv2.resize(ridge.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    return g, ridge


# ----------------------------------------------------------------------------------------------------
# lesions (canonical frame)


class _Placer:
    """Rejection sampling of lesion centres.

    The disc of ``radius`` around a centre lies inside the breast, off the pectoral muscle, and apart
    from every lesion placed before.
    """

    def __init__(self, rng, room: np.ndarray, h: int):
        self.rng = rng
        self.step = max(1, h // 256)  # candidate grid; the exact check below is at full resolution
        self.dist = room  # (H, W) px of free space around each pixel (skin, muscle)
        self.placed: list[tuple[float, float, float]] = []
        self.gap = max(4.0, 0.01 * h)

    def place(self, radius: float, tries: int = 60) -> tuple[int, int] | None:
        s = self.step
        grid = self.dist[::s, ::s] >= radius + 2
        cand = np.flatnonzero(grid)
        if len(cand) == 0:
            return None
        for _ in range(tries):
            k = int(cand[self.rng.integers(len(cand))])
            y, x = divmod(k, grid.shape[1])
            y, x = y * s, x * s
            if self.dist[y, x] < radius + 2:
                continue
            if all(
                math.hypot(x - px, y - py) >= radius + pr + self.gap for px, py, pr in self.placed
            ):
                self.placed.append((x, y, radius))
                return int(x), int(y)
        return None


def _render_mass(rng: np.random.Generator, h: int, shape: str, density: str) -> dict:
    """A mass on a local patch: intensity (float32), footprint (bool), extent radius."""
    r0 = 0.5 * h * rng.uniform(0.02, 0.06)  # diameter 2-6 % of the image height
    m = r0 * rng.uniform(0.08, 0.25)  # margin softness (px)
    dense = density in ("C", "D")
    low = dense and rng.random() < 0.6  # low-contrast masses hide in dense breasts
    contrast = float(rng.uniform(0.05, 0.09) if low else rng.uniform(0.1, 0.28))
    spic_len = r0 * 1.6 if shape == "spiculated" else 0.0
    ext = r0 * 1.45 + 3 * m + spic_len  # every pixel the mass touches lies within ext of the centre
    half = int(math.ceil(ext)) + 2
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    r = np.hypot(xx, yy)
    th = np.arctan2(yy, xx)
    params: dict = {"radius_px": round(float(r0), 2), "margin_px": round(float(m), 2)}
    if shape == "round":
        rad = np.full_like(r, r0 * (1 + 0.04 * np.sin(2 * th)))
    elif shape == "oval":
        ratio, rot = float(rng.uniform(0.5, 0.8)), float(rng.uniform(0, np.pi))
        a_ax, b_ax = r0 / math.sqrt(ratio), r0 * math.sqrt(ratio)
        rad = a_ax * b_ax / np.sqrt((b_ax * np.cos(th - rot)) ** 2 + (a_ax * np.sin(th - rot)) ** 2)
        params.update(axis_ratio=round(ratio, 4), rotation_rad=round(rot, 4))
    else:
        rad = np.full_like(r, r0)
        terms = []
        for k in range(2, 8):
            amp, ph = float(rng.normal(0, 0.16 / k**0.7)), float(rng.uniform(0, 2 * np.pi))
            rad = rad + r0 * amp * np.sin(k * th + ph)
            terms.append([k, round(amp, 5), round(ph, 5)])
        rad = np.clip(rad, 0.55 * r0, 1.45 * r0)
        params["harmonics"] = terms
    q = r - rad  # ~ signed distance to the margin, negative inside
    footprint = q <= 0
    inten = 0.5 * (1.0 - np.tanh(q / m)) * (0.85 + 0.15 * np.clip(1 - (r / rad) ** 2, 0, 1))
    if shape == "spiculated":
        n_sp = int(rng.integers(8, 20))
        spic = np.zeros_like(r)
        thick = max(1, int(round(0.0012 * h)))
        for ang in rng.uniform(0, 2 * np.pi, n_sp):
            length = r0 * rng.uniform(0.6, 1.6)
            p0 = (half + 0.6 * r0 * math.cos(ang), half + 0.6 * r0 * math.sin(ang))
            p1 = (half + (r0 + length) * math.cos(ang), half + (r0 + length) * math.sin(ang))
            cv2.line(
                spic,
                (int(round(p0[0] * 4)), int(round(p0[1] * 4))),
                (int(round(p1[0] * 4)), int(round(p1[1] * 4))),
                1.0,
                thick,
                cv2.LINE_AA,
                shift=2,
            )
        spic = cv2.GaussianBlur(spic, (0, 0), max(0.5, 0.3 * thick))
        # spicules stay below half the mass contrast: outside the footprint by construction
        taper = np.clip(1.0 - (r - 0.6 * r0) / (2.2 * r0), 0.0, 1.0)  # spicules fade outward
        inten = np.maximum(inten, 0.4 * np.clip(spic, 0, 1) * taper * (r > 0.5 * r0))
        params["spicules"] = n_sp
    params["contrast"] = round(contrast, 5)
    params["contrast_level"] = "low" if contrast < 0.1 else "medium" if contrast < 0.18 else "high"
    return {
        "intensity": (contrast * inten).astype(np.float32),
        "footprint": footprint,
        "half": half,
        "extent": float(ext),
        "params": params,
    }


def _dot_layer(
    canvas: np.ndarray,
    owner: np.ndarray,
    record: int,
    x: int,
    y: int,
    d: int,
    amp: float,
    mask: np.ndarray | None = None,
) -> None:
    foot = _disc(d)
    x0, y0 = x - (d - 1) // 2, y - (d - 1) // 2
    _paste_max(canvas, foot.astype(np.float32) * amp, x0, y0)
    if mask is not None:
        _paste_max(mask, foot.astype(np.uint8), x0, y0)
        sub = owner[y0 : y0 + d, x0 : x0 + d]
        sub[foot[: sub.shape[0], : sub.shape[1]]] = record


def _dot_diameter(
    rng: np.random.Generator, spacing_mm: float, lo_mm: float = 0.1, hi_mm: float = 1.0
) -> int:
    """Diameter in pixels of a dot of ``lo_mm``-``hi_mm`` (mostly small), at least 1 px."""
    d_mm = lo_mm + (hi_mm - lo_mm) * rng.random() ** 2.2
    return max(1, int(round(d_mm / spacing_mm)))


def _place_dots(
    rng,
    n: int,
    radius: float,
    cx: int,
    cy: int,
    sizes: Sequence[int],
    gap: float,
    ecc: tuple[float, float, float] = (1.0, 1.0, 0.0),
) -> list[tuple[int, int, int]]:
    """Dot centres in an ellipse; ``gap`` > 0 keeps every dot a separate 8-connected component."""
    ax, ay, rot = ecc
    out: list[tuple[int, int, int]] = []
    for d in sizes[:n]:
        for _ in range(40):
            rr = radius * math.sqrt(rng.random())
            t = rng.uniform(0, 2 * np.pi)
            u, v = rr * ax * math.cos(t), rr * ay * math.sin(t)
            x = int(round(cx + u * math.cos(rot) - v * math.sin(rot)))
            y = int(round(cy + u * math.sin(rot) + v * math.cos(rot)))
            if gap <= 0 or all(
                math.hypot(x - ox, y - oy) >= (d + od) / 2 + gap for ox, oy, od in out
            ):
                out.append((x, y, d))
                break
    return out


# ----------------------------------------------------------------------------------------------------
# one image


def render_image(
    seed: int,
    patient: int,
    view_index: int,
    height: int,
    width: int,
    laterality: str,
    density: str,
    view: str,
    artifact: bool | None = None,
    pixel_spacing_mm: float = 0.085,
) -> dict:
    """Draw one synthetic mammogram.

    Returns a dict with ``signal`` (float32 (H, W), 0 = background, canonical "bright = dense"),
    ``breast`` (uint8 0/1), ``calc_mask`` (uint8 0/1), ``calc_owner`` (int32 record index per calc
    pixel, -1 elsewhere), ``calc_records``, ``masses`` (with footprints), ``params`` (json-able)
    and ``text_boxes``. Coordinates are in the final (laterality-flipped) frame. ``artifact`` forces the
    column artifact on or off (None: drawn); its dots come from their own random stream, so forcing it
    changes nothing else.
    """
    h, w = height, width
    rng = np.random.default_rng([seed, patient, view_index, 1])
    params = _draw_image_params(rng)
    params["pixel_spacing_mm"] = pixel_spacing_mm
    geo = _breast_geometry(rng, h, w, view)
    breast = _fill(_breast_polygon(geo), (h, w))
    muscle = np.zeros_like(breast)
    pect = None
    if view == "MLO":
        pect = _pectoral_polygon(rng, h, w, breast)
        muscle = _fill(pect["polygon"], (h, w))
        breast |= muscle
    dist = _skin_distance(breast)
    nipple = (
        geo["depth"],
        geo["center_y"] + geo["shear"] * geo["depth"],
    )  # (x, y), canonical frame
    g, ridge = _parenchyma(rng, h, w, breast, dist, density, nipple)

    # tissue signal: fat level rising from the skin (thickness fall-off), plus glandular tissue
    fall = 1.0 - (1.0 - np.clip(dist / (0.06 * w), 0.0, 1.0)) ** 2
    dense_amp = float(rng.uniform(0.30, 0.40))
    strand_amp = float(rng.uniform(0.04, 0.08))
    fat = float(rng.uniform(0.24, 0.30))
    s = fat + 0.12 * fall + fall * (dense_amp * g + strand_amp * ridge * (0.4 + 0.6 * g))
    skin_w = max(1.0, 0.0012 * h)
    skin_amp = float(rng.uniform(0.05, 0.09))
    s = s + skin_amp * np.exp(-((dist / skin_w) ** 2))
    if pect is not None:
        soft = cv2.GaussianBlur(muscle.astype(np.float32), (0, 0), max(1.0, 0.003 * h))
        xs = np.arange(w, dtype=np.float32)[None, :] / max(pect["top_width"], 1.0)
        level = float(rng.uniform(0.58, 0.70)) * (1.05 - 0.1 * np.clip(xs, 0, 1))
        s = s * (1 - soft) + (level + 0.03 * ridge) * soft
        pect["level"] = round(float(level.max()), 4)

    # normal vessels: faint curvilinear tubes from the chest wall toward the nipple
    vessels = np.zeros((h, w), np.float32)
    vessel_w = max(1, int(round(0.003 * h)))
    vessel_paths = []
    for _ in range(int(rng.integers(2, 5))):
        y0 = rng.uniform(0.2, 0.8) * h
        p0 = (0.0, y0)
        p2 = (geo["depth"] * rng.uniform(0.5, 0.9), y0 + rng.uniform(-0.15, 0.15) * h)
        p1 = ((p0[0] + p2[0]) / 2, (p0[1] + p2[1]) / 2 + rng.uniform(-0.08, 0.08) * h)
        pts = _bezier(p0, p1, p2, 80)
        cv2.polylines(
            vessels,
            [np.round(pts * 4).astype(np.int32)],
            False,
            1.0,
            vessel_w,
            cv2.LINE_AA,
            shift=2,
        )
        vessel_paths.append(pts)
    vessels = cv2.GaussianBlur(vessels, (0, 0), max(0.7, 0.4 * vessel_w))
    vessel_amp = float(rng.uniform(0.02, 0.035))
    s = s + vessel_amp * vessels

    # lesions
    # free distance around a lesion centre: to the skin, the image border and, on MLO, the pectoral muscle
    ys, xs = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    room = np.minimum(dist, np.minimum(np.minimum(ys, h - 1 - ys), np.minimum(xs, w - 1 - xs)))
    if pect is not None:
        to_muscle = cv2.distanceTransform((1 - muscle).astype(np.uint8), cv2.DIST_L2, 3)
        room = np.minimum(room, to_muscle - 0.01 * h)
    placer = _Placer(rng, room, h)
    lesion_free = rng.random() < 0.25
    n_mass = 0 if lesion_free else int(rng.choice([0, 1, 1, 2]))
    n_calc = 0 if lesion_free else int(rng.choice([0, 1, 2, 3], p=[0.2, 0.4, 0.25, 0.15]))
    if not lesion_free and n_mass == 0 and n_calc == 0:
        n_calc = 1
    mass_layer = np.zeros((h, w), np.float32)
    masses = []
    for _ in range(n_mass):
        shape = str(rng.choice(MASS_SHAPES))
        mass = _render_mass(rng, h, shape, density)
        c = placer.place(mass["extent"])
        if c is None:
            continue
        half = mass["half"]
        x0, y0 = c[0] - half, c[1] - half
        patch = np.zeros((h, w), bool)  # full footprint, canonical frame
        fp = mass["footprint"]
        ya, xa = max(y0, 0), max(x0, 0)
        yb, xb = min(y0 + fp.shape[0], h), min(x0 + fp.shape[1], w)
        patch[ya:yb, xa:xb] = fp[ya - y0 : yb - y0, xa - x0 : xb - x0]
        sub = mass_layer[ya:yb, xa:xb]
        sub += mass["intensity"][ya - y0 : yb - y0, xa - x0 : xb - x0]
        masses.append(
            {"shape": shape, "center": [c[0], c[1]], "footprint": patch, **mass["params"]}
        )
    s = s + mass_layer * breast

    calc_layer = np.zeros((h, w), np.float32)
    calc_mask = np.zeros((h, w), np.uint8)
    owner = np.full((h, w), -1, np.int32)
    records = []
    calc_types = [str(rng.choice(["dot", "dot", "vessel", "large"])) for _ in range(n_calc)]
    for ctype in calc_types:
        idx = len(records)
        amp_lo = 0.22 if density in ("A", "B") else 0.28
        if ctype == "dot":
            n = 1 if rng.random() < 0.2 else int(rng.integers(5, 31))
            sizes = [_dot_diameter(rng, pixel_spacing_mm) for _ in range(n)]
            radius = max(0.006 * h * rng.uniform(1, 3), 2.2 * math.sqrt(n) * (max(sizes) + 2) / 2)
            c = placer.place(radius + max(sizes))
            if c is None:
                continue
            dots = _place_dots(rng, n, radius, c[0], c[1], sizes, gap=3.0)
            for x, y, d in dots:
                _dot_layer(
                    calc_layer, owner, idx, x, y, d, float(rng.uniform(amp_lo, 0.45)), calc_mask
                )
            records.append(
                {
                    "type": "dot",
                    "center": list(c),
                    "cluster_radius_px": round(radius, 2),
                    "dots": [[x, y, d] for x, y, d in dots],
                }
            )
        elif ctype == "vessel":
            length = h * rng.uniform(0.06, 0.15)
            ang = rng.uniform(-0.6, 0.6)  # vessels run roughly from the chest wall to the nipple
            bend = rng.uniform(-0.25, 0.25) * length
            vw = max(2, int(round(0.004 * h)))  # vessel lumen width
            c = placer.place(length / 2 + abs(bend) / 2 + vw + 6)
            if c is None:
                continue
            d = np.array([math.cos(ang), math.sin(ang)]) * length / 2
            nrm = np.array([-d[1], d[0]]) / (length / 2)
            pts = _bezier(np.array(c) - d, np.array(c) + nrm * bend, np.array(c) + d, 200)
            tube = np.zeros((h, w), np.float32)
            cv2.polylines(
                tube, [np.round(pts * 4).astype(np.int32)], False, 1.0, vw, cv2.LINE_AA, shift=2
            )
            s = s + 0.05 * cv2.GaussianBlur(tube, (0, 0), 0.7)
            tangent = np.gradient(pts, axis=0)
            tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
            normals = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
            # tram-track calcifications: dots on the two vessel walls
            step = max(2.0, vw * rng.uniform(0.8, 2.0))
            arc = np.concatenate([[0], np.cumsum(np.hypot(*np.diff(pts, axis=0).T))])
            dots = []
            for a in np.arange(0, arc[-1], step):
                if rng.random() < 0.25:
                    continue
                i = int(np.searchsorted(arc, a).clip(0, len(pts) - 1))
                side = rng.choice([-1, 1])
                p = pts[i] + normals[i] * side * vw / 2 * rng.uniform(0.5, 1.0)
                dots.append(
                    (int(round(p[0])), int(round(p[1])), int(rng.integers(1, min(4, vw) + 1)))
                )
            amp = float(rng.uniform(amp_lo, 0.45))
            region = np.zeros((h, w), np.uint8)
            cv2.polylines(region, [np.round(pts).astype(np.int32)], False, 1, vw + 4, cv2.LINE_8)
            wall = np.zeros((h, w), np.float32)  # faintly calcified walls: two thin parallel lines
            walls = [np.round((pts + sd * normals * vw / 2) * 4).astype(np.int32) for sd in (-1, 1)]
            cv2.polylines(wall, walls, False, 1.0, max(1, vw // 5), cv2.LINE_AA, shift=2)
            np.maximum(calc_layer, 0.4 * amp * wall, out=calc_layer)
            for x, y, dd in dots:
                _dot_layer(calc_layer, owner, idx, x, y, dd, amp * rng.uniform(0.8, 1.0), region)
            calc_mask |= region
            owner[region > 0] = idx
            records.append(
                {
                    "type": "vessel",
                    "center": list(c),
                    "length_px": round(float(length), 2),
                    "width_px": vw,
                    "path": np.round(pts[::10], 2).tolist(),
                    "n_dots": len(dots),
                }
            )
        else:  # large region: crowded dots annotated as one region (their convex hull)
            radius = h * rng.uniform(0.015, 0.04)
            c = placer.place(radius * 1.3 + 6 + 0.002 * h)
            if c is None:
                continue
            ecc = (
                float(rng.uniform(1.0, 1.3)),
                float(rng.uniform(0.6, 1.0)),
                float(rng.uniform(0, np.pi)),
            )
            n = int(np.clip(radius**2 * rng.uniform(0.02, 0.06), 15, 150))
            sizes = [min(4, _dot_diameter(rng, pixel_spacing_mm, hi_mm=0.35)) for _ in range(n)]
            dots = _place_dots(rng, n, radius, c[0], c[1], sizes, gap=0, ecc=ecc)
            dot_mask = np.zeros((h, w), np.uint8)
            for x, y, d in dots:
                _dot_layer(
                    calc_layer, owner, idx, x, y, d, float(rng.uniform(amp_lo, 0.45)), dot_mask
                )
            ys, xs = np.nonzero(dot_mask)
            hull = cv2.convexHull(np.stack([xs, ys], axis=1).astype(np.int32))
            region = np.zeros((h, w), np.uint8)
            cv2.fillConvexPoly(region, hull, 1)
            region = cv2.dilate(
                region, np.ones((3, 3), np.uint8), iterations=max(1, int(0.002 * h))
            )
            haze = cv2.GaussianBlur(region.astype(np.float32), (0, 0), max(1.0, 0.1 * radius))
            s = s + 0.04 * haze
            calc_mask |= region
            owner[region > 0] = idx
            records.append(
                {
                    "type": "large",
                    "center": list(c),
                    "radius_px": round(float(radius), 2),
                    "ellipse": [round(v, 4) for v in ecc],
                    "n_dots": len(dots),
                }
            )
    # a faint halo keeps dots from being single-value steps; the mask pixels keep their full amplitude
    calc_layer = np.maximum(calc_layer, 0.6 * cv2.GaussianBlur(calc_layer, (0, 0), 0.8))
    s = s + calc_layer * breast
    calc_mask &= breast

    noise = rng.standard_normal((h, w), dtype=np.float32) * params["noise_sigma"]
    s = np.where(breast > 0, s + noise, params["background_signal"] + 0.25 * noise)

    # laterality: R keeps the chest wall at column 0, L is mirrored
    flip = laterality == "L"
    if flip:
        s, breast, calc_mask, owner = (
            np.ascontiguousarray(a[:, ::-1]) for a in (s, breast, calc_mask, owner)
        )
        for m in masses:
            m["footprint"] = np.ascontiguousarray(m["footprint"][:, ::-1])
            m["center"][0] = w - 1 - m["center"][0]
        for rec in records:
            rec["center"][0] = w - 1 - rec["center"][0]
            if "dots" in rec:
                rec["dots"] = [[w - 1 - x, y, d] for x, y, d in rec["dots"]]
            if "path" in rec:
                rec["path"] = [[round(w - 1 - x, 2), y] for x, y in rec["path"]]
        vessel_paths = [np.stack([w - 1 - p[:, 0], p[:, 1]], axis=1) for p in vessel_paths]

    text_boxes = _burn_text(rng, s, breast, laterality, view, h, w)
    if artifact is not None:
        params["artifact"] = bool(artifact)
    artifact = None
    if params["artifact"]:
        art_rng = np.random.default_rng([seed, patient, view_index, 2])
        artifact = _add_column_artifact(art_rng, s, calc_mask, text_boxes, h, w)
    s = np.clip(s, 0.0, S_MAX)

    geo["pectoral"] = None if pect is None else {k: v for k, v in pect.items() if k != "polygon"}
    params.update(
        density=density,
        view=view,
        laterality=laterality,
        breast=geo,  # silhouette and muscle parameters in the chest-wall-at-column-0 frame
        normal_vessels={
            "width_px": vessel_w,
            "amplitude": round(vessel_amp, 4),
            "paths": [np.round(p[::10], 2).tolist() for p in vessel_paths],
        },
        fat_signal=round(fat, 4),
        dense_amplitude=round(dense_amp, 4),
        skin_amplitude=round(skin_amp, 4),
        lesion_free=bool(not masses and not records),
        lesions_requested={"masses": n_mass, "calcifications": calc_types},
        artifact_columns=[] if artifact is None else [artifact["column"]],
        artifact_detail=artifact,
    )
    return {
        "signal": s.astype(np.float32),
        "breast": breast,
        "calc_mask": calc_mask,
        "calc_owner": owner,
        "calc_records": records,
        "masses": masses,
        "params": params,
        "text_boxes": text_boxes,
    }


def _burn_text(
    rng, s: np.ndarray, breast: np.ndarray, laterality: str, view: str, h: int, w: int
) -> list:
    """Burn a view label, a laterality marker and acquisition text into the background.

    Each item goes to the first candidate position (corners on the nipple side) whose box, grown by a
    gap, misses the breast; items that fit nowhere are skipped. Returns the boxes drawn.
    """
    scale = h / 1000.0  # cv2 Hershey font units: ~22 px cap height at scale 1
    thickness = max(1, int(round(1.6 * scale)))
    gap = max(4, int(0.012 * h))
    value = float(rng.uniform(1.0, S_MAX))
    items = [
        ("label", f"{laterality}{view}", scale * 1.4),
        ("marker", laterality, scale * 1.2),
        ("text", f"kVp {int(rng.integers(24, 34))} mAs {int(rng.integers(40, 160))}", scale * 0.8),
        ("text", "DEEPLIMA SYNTHETIC", scale * 0.7),
    ]
    nipple_right = laterality == "R"  # chest wall on the left: free background on the right
    grown = cv2.dilate(breast, np.ones((3, 3), np.uint8), iterations=gap)
    occupied = grown.astype(bool).copy()
    boxes = []
    font = cv2.FONT_HERSHEY_SIMPLEX
    for kind, text, fs in items:
        fs = max(fs, 0.3)
        (tw, th), base = cv2.getTextSize(text, font, fs, thickness)
        pad = max(2, int(0.25 * th)) if kind == "marker" else 0
        bw, bh = tw + 2 * pad, th + base + 2 * pad
        for fy in (0.02, 0.08, 0.86, 0.92, 0.14, 0.80):
            y = int(fy * h)
            x = w - gap - bw if nipple_right else gap
            if x < 0 or y + bh >= h:
                continue
            if occupied[max(0, y - gap) : y + bh + gap, max(0, x - gap) : x + bw + gap].any():
                continue
            canvas = np.zeros((bh, bw), np.uint8)
            if kind == "marker":  # bright square with the letter cut out
                canvas[:] = 1
                cv2.putText(canvas, text, (pad, pad + th), font, fs, 0, thickness, cv2.LINE_8)
            else:
                cv2.putText(canvas, text, (0, th), font, fs, 1, thickness, cv2.LINE_8)
            sub = s[y : y + bh, x : x + bw]
            sub[canvas > 0] = value
            occupied[max(0, y - gap) : y + bh + gap, max(0, x - gap) : x + bw + gap] = True
            boxes.append(
                {"kind": kind, "text": text, "bbox": [x, y, bw, bh], "font_scale": round(fs, 4)}
            )
            break
    return boxes


def _add_column_artifact(
    rng, s: np.ndarray, calc_mask: np.ndarray, text_boxes: list, h: int, w: int
) -> dict:
    """The detector artifact of the paper (Fig. 2): isolated 1-pixel bright and dark dots on one column."""
    bad = calc_mask.any(axis=0).astype(np.uint8)
    for b in text_boxes:
        x, _, bw, _ = b["bbox"]
        bad[max(0, x - 1) : x + bw + 1] = 1
    bad = cv2.dilate(bad[None, :], np.ones((1, 7), np.uint8))[
        0
    ]  # at least 3 columns from calcifications
    cols = [c for c in range(int(0.05 * w), int(0.95 * w)) if not bad[c]]
    if not cols:
        return None
    col = int(cols[rng.integers(len(cols))])
    rows, y = [], int(rng.integers(0, 6))
    while y < h:
        rows.append(y)
        y += 2 + int(rng.geometric(0.2))  # >= 2 apart: every dot stays isolated
    rows = np.array(rows)
    bright = rng.random(len(rows)) < 0.5
    delta = np.where(bright, rng.uniform(0.3, 0.6, len(rows)), -rng.uniform(0.25, 0.45, len(rows)))
    s[rows, col] = np.clip(s[rows, col] + delta.astype(np.float32), 0.0, S_MAX)
    return {
        "column": col,
        "rows_bright": rows[bright].tolist(),
        "rows_dark": rows[~bright].tolist(),
    }


# ----------------------------------------------------------------------------------------------------
# DICOM


def _stored_pixels(signal: np.ndarray, p: dict) -> np.ndarray:
    maxv = (1 << p["bits_stored"]) - 1
    raw = np.rint(p["raw_base"] + signal * p["raw_span"])
    raw = np.clip(raw, 0, maxv)
    if p["photometric"] == "MONOCHROME1":
        raw = maxv - raw
    return raw.astype(np.uint16)


def _window(p: dict) -> dict:
    """Window centre/width in modality units (after rescale) displaying signal s_lo..s_hi as 0..255."""
    maxv = (1 << p["bits_stored"]) - 1

    def modality(sig):
        raw = p["raw_base"] + sig * p["raw_span"]
        if p["photometric"] == "MONOCHROME1":
            raw = maxv - raw
        return raw * p["rescale_slope"] + p["rescale_intercept"]

    lo, hi = sorted(modality(v) for v in p["window_signal"])
    centers, widths = [round((lo + hi) / 2, 2)], [round(hi - lo, 2)]
    full_lo, full_hi = sorted(
        (p["rescale_intercept"], maxv * p["rescale_slope"] + p["rescale_intercept"])
    )
    if (
        p["window_mode"] == "multi"
    ):  # the first window is the diagnostic one; the second shows everything
        centers.append(round((full_lo + full_hi) / 2, 2))
        widths.append(round(full_hi - full_lo, 2))
    if p["window_mode"] == "absent":
        return {"mode": "absent", "center": None, "width": None}
    return {"mode": p["window_mode"], "center": centers, "width": widths}


def build_dicom(
    pixels: np.ndarray,
    p: dict,
    *,
    patient_id: str,
    stem: str,
    seed: int,
    study: int,
    view_index: int,
):
    """A pydicom ``FileDataset`` for one image; UIDs are hashes of (seed, patient, view)."""
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    h, w = pixels.shape
    study_uid = _uid(seed, patient_id, "study")
    sop_uid = _uid(seed, patient_id, view_index, "sop")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MG_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "DEEPLIMA_SYN_1"
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = MG_FOR_PRESENTATION
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ""  # type 2: deliberately empty, the output must not depend on the clock
    ds.StudyTime = ""
    ds.AccessionNumber = ""
    ds.Modality = "MG"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "DeepLIMa synthetic"
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = f"{p['laterality']} {p['view']}"
    ds.PatientName = f"SYNTHETIC^{patient_id}"
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "F"
    ds.BodyPartExamined = "BREAST"
    ds.BurnedInAnnotation = "YES"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = _uid(seed, patient_id, view_index, "series")
    ds.FrameOfReferenceUID = _uid(seed, patient_id, view_index, "frame")
    ds.PositionReferenceIndicator = ""
    ds.StudyID = str(study + 1)
    ds.SeriesNumber = view_index + 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = PATIENT_ORIENTATION[(p["laterality"], p["view"])]
    ds.ImageLaterality = p["laterality"]
    ds.ViewPosition = p["view"]

    def code(value: str, meaning: str) -> Dataset:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "SCT", meaning
        return item

    ds.AnatomicRegionSequence = [code("76752008", "Breast")]
    ds.ViewCodeSequence = [
        code("399162004", "cranio-caudal")
        if p["view"] == "CC"
        else code("399368009", "medio-lateral oblique")
    ]
    ds.AcquisitionContextSequence = []
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = p["photometric"]
    ds.Rows, ds.Columns = h, w
    sp = _ds(p["pixel_spacing_mm"])
    ds.PixelSpacing = [sp, sp]
    ds.ImagerPixelSpacing = [sp, sp]
    ds.BitsAllocated = 16
    ds.BitsStored = p["bits_stored"]
    ds.HighBit = p["bits_stored"] - 1
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LOG"
    # +1: higher stored value = more x-ray intensity (MONOCHROME1 here, tissue stored low)
    ds.PixelIntensityRelationshipSign = 1 if p["photometric"] == "MONOCHROME1" else -1
    ds.RescaleIntercept = _ds(p["rescale_intercept"])
    ds.RescaleSlope = _ds(p["rescale_slope"])
    ds.RescaleType = "US"
    win = p["window"]
    if win["mode"] != "absent":
        if win["mode"] == "single":
            ds.WindowCenter, ds.WindowWidth = _ds(win["center"][0]), _ds(win["width"][0])
            ds.WindowCenterWidthExplanation = "NORMAL"
        else:
            ds.WindowCenter = [_ds(v) for v in win["center"]]
            ds.WindowWidth = [_ds(v) for v in win["width"]]
            ds.WindowCenterWidthExplanation = ["NORMAL", "FULL RANGE"]
        ds.VOILUTFunction = "LINEAR"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "INVERSE" if p["photometric"] == "MONOCHROME1" else "IDENTITY"
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    ds["PixelData"].VR = "OW"
    return ds


def dicom_bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------------
# annotations


def _calc_annotations(calc_mask: np.ndarray, owner: np.ndarray, records: list) -> list[dict]:
    """Canonical calcification records (one per 8-connected component, see
    :func:`datasets.canonical.calc_components`) plus the generator records each component covers."""
    lut = np.array([0] + [CALC_TYPE_CODE[r["type"]] for r in records], np.uint8)
    type_map = lut[owner + 1]  # owner -1 (no record) -> code 0
    comps = calc_components(calc_mask > 0, type_map)
    _, labels = cv2.connectedComponents(calc_mask, connectivity=8)  # same labels, same order
    for k, comp in enumerate(comps, start=1):
        x, y, bw, bh = (int(v) for v in comp["bbox"])
        inside = labels[y : y + bh, x : x + bw] == k
        comp["records"] = sorted(
            int(o) for o in np.unique(owner[y : y + bh, x : x + bw][inside]) if o >= 0
        )
    return comps


def _mass_annotation(footprint: np.ndarray) -> dict:
    """Tight box [x, y, w, h], area and COCO polygons of a mass footprint (bool (H, W))."""
    return {
        "bbox": mask_bbox(footprint),
        "area": float(footprint.sum()),
        "segmentation": mask_polygons(footprint),
    }


# ----------------------------------------------------------------------------------------------------
# dataset


def _study_plan(seed: int, n: int, height: int) -> list[dict]:
    plan = []
    for i in range(n):
        rng = np.random.default_rng([seed, i, 0])
        plan.append(
            {
                "patient_id": f"S{seed}P{i:04d}",
                "laterality": "L" if rng.random() < 0.5 else "R",
                "density": str(rng.choice(DENSITIES, p=[0.15, 0.4, 0.35, 0.1])),
                # one detector per patient; a smaller image stands for the same field of view
                "pixel_spacing_mm": round(
                    float(rng.choice([0.07, 0.085, 0.1])) * FULL_FIELD[0] / height, 5
                ),
            }
        )
    return plan


def generate(
    out_dir: str | Path,
    n: int = 4,
    seed: int = 0,
    height: int = FULL_FIELD[0],
    width: int = FULL_FIELD[1],
    *,
    views: Sequence[str] = VIEWS,
    photometric: str | None = None,
    bits_stored: int | None = None,
    window_mode: str | None = None,
    artifact: bool | None = None,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    progress: bool = True,
    pixel_spacing_mm: float | None = None,
) -> Path:
    """Write ``n`` synthetic studies as a canonical dataset folder and return ``out_dir``.

    Args:
        out_dir: output folder (created; existing files of the same names are replaced atomically,
            other files are left alone).
        n: number of studies (patients); each has one image per entry of ``views`` of one breast.
        seed: everything (pixels, lesions, UIDs, split) is a function of ``seed`` and the arguments.
        height, width: image rows and columns; anatomy, lesions and text scale with the height.
        views: subset of ("CC", "MLO").
        photometric, bits_stored, window_mode, artifact: force a pixel-module choice for every image
            (None: drawn per image). Forcing changes no other draw, so e.g. the MONOCHROME1 and
            MONOCHROME2 versions of a seed show the same image.
        ratios: train/val/test patient ratios for :func:`datasets.canonical.patient_split`.
        progress: show a tqdm progress bar.
        pixel_spacing_mm: one pixel spacing for every image: a smaller ``height`` then stands for a
            smaller breast at that resolution (e.g. 0.085 gives real-size calcifications on a small
            image). None: drawn per patient from 0.07 / 0.085 / 0.1 mm at full field, scaled by
            ``3328 / height`` (a smaller image stands for the same field of view).
    """
    from tqdm import tqdm

    if height < 128 or width < 96:
        raise ValueError(f"image too small for a mammogram: {height}x{width} (need >= 128x96)")
    if any(v not in VIEWS for v in views) or not views:
        raise ValueError(f"views must be a non-empty subset of {VIEWS}, got {views}")
    if photometric not in (None, "MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric}")
    if bits_stored not in (None, 12, 14, 16):
        raise ValueError(f"bits_stored must be 12, 14 or 16, got {bits_stored}")
    if window_mode not in (None, *WINDOW_MODES):
        raise ValueError(f"window_mode must be one of {WINDOW_MODES}, got {window_mode}")
    out = Path(out_dir)
    plan = _study_plan(seed, n, height)
    if pixel_spacing_mm is not None:
        if not pixel_spacing_mm > 0:
            raise ValueError(f"pixel_spacing_mm must be positive, got {pixel_spacing_mm}")
        for st in plan:
            st["pixel_spacing_mm"] = float(pixel_spacing_mm)
    split = patient_split([s["patient_id"] for s in plan], seed, ratios)
    images, mass_anns, calc_anns, manifest_images = [], [], [], []
    jobs = [(i, st, VIEWS.index(v), v) for i, st in enumerate(plan) for v in views]
    for i, st, vi, view in tqdm(
        jobs, desc="synthetic mammograms", unit="img", disable=not progress
    ):
        img = render_image(
            seed,
            i,
            vi,
            height,
            width,
            st["laterality"],
            st["density"],
            view,
            artifact,
            pixel_spacing_mm=st["pixel_spacing_mm"],
        )
        p = img["params"]
        if photometric is not None:
            p["photometric"] = photometric
        if bits_stored is not None:
            scale = ((1 << bits_stored) - 1) / ((1 << p["bits_stored"]) - 1)
            p["bits_stored"] = bits_stored
            p["raw_base"], p["raw_span"] = (
                round(p["raw_base"] * scale, 3),
                round(p["raw_span"] * scale, 3),
            )
        if window_mode is not None:
            p["window_mode"] = window_mode
        p["window"] = _window(p)
        stem = f"{st['patient_id']}_{st['laterality']}_{view}"
        pixels = _stored_pixels(img["signal"], p)
        ds = build_dicom(
            pixels, p, patient_id=st["patient_id"], stem=stem, seed=seed, study=i, view_index=vi
        )
        file_name = f"images/{stem}.dcm"
        atomic_write_bytes(out / file_name, dicom_bytes(ds))
        atomic_write_png(out / "breast_masks" / f"{stem}.png", img["breast"] * np.uint8(255))
        mask_file = f"calc_masks/{stem}.png"
        atomic_write_png(out / mask_file, img["calc_mask"] * np.uint8(255))
        image_id = len(images) + 1
        sp = p["pixel_spacing_mm"]
        record = {
            "id": image_id,
            "file_name": file_name,
            "stem": stem,
            "height": height,
            "width": width,
            "patient_id": st["patient_id"],
            "laterality": st["laterality"],
            "view": view,
            "pixel_spacing": [sp, sp],
            "density": DENSITIES.index(st["density"]) + 1,
            "split": split[st["patient_id"]],
        }
        images.append(record)
        mass_records = []
        for m in img["masses"]:
            ann = _mass_annotation(m.pop("footprint"))
            mass_anns.append(
                {
                    "image_id": image_id,
                    "bbox": ann["bbox"],
                    "area": ann["area"],
                    "segmentation": ann["segmentation"],
                    "shape": m["shape"],
                    "contrast": m["contrast"],
                    "contrast_level": m["contrast_level"],
                }
            )
            mass_records.append({**m, "bbox": ann["bbox"], "area": ann["area"]})
        comps = _calc_annotations(img["calc_mask"], img["calc_owner"], img["calc_records"])
        for c in comps:
            calc_anns.append(
                {
                    "image_id": image_id,
                    "bbox": c["bbox"],
                    "area": c["area"],
                    "calc_type": c["calc_type"],
                    "point": c["point"],
                }
            )
        manifest_images.append(
            {
                "stem": stem,
                "file_name": file_name,
                "patient_id": st["patient_id"],
                "study_instance_uid": str(ds.StudyInstanceUID),
                "sop_instance_uid": str(ds.SOPInstanceUID),
                **{k: v for k, v in p.items() if k not in ("artifact",)},
                "text_boxes": img["text_boxes"],
                "masses": mass_records,
                "calcifications": img["calc_records"],
                "calc_components": [
                    {"calc_type": c["calc_type"], "bbox": c["bbox"], "records": c["records"]}
                    for c in comps
                ],
            }
        )
    info = {
        "description": "DeepLIMa synthetic mammograms",
        "version": GENERATOR_VERSION,
        "seed": seed,
    }
    # the synthetic truth is exhaustive: every image has a mask file, empty when it has no calcification
    for im in images:
        im["mask_file"] = f"calc_masks/{im['stem']}.png"
    write_canonical(out, images, mass_anns, calc_anns, seed, ratios=ratios, info=info)
    atomic_write_json(
        out / "manifest.json",
        {
            "generator": "datasets.synthetic",
            "version": GENERATOR_VERSION,
            "arguments": {
                "n": n,
                "seed": seed,
                "height": height,
                "width": width,
                "views": list(views),
                "photometric": photometric,
                "bits_stored": bits_stored,
                "window_mode": window_mode,
                "artifact": artifact,
                "ratios": list(ratios),
            },
            "signal_model": "stored = raw_base + signal * raw_span (clipped to BitsStored; MONOCHROME1: "
            "maxval - that); modality = stored * rescale_slope + rescale_intercept",
            "images": manifest_images,
        },
    )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m datasets.synthetic", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--out", required=True, help="output folder (canonical dataset form)")
    ap.add_argument("--n", type=int, default=4, help="number of studies (patients), two views each")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--height", type=int, default=FULL_FIELD[0])
    ap.add_argument("--width", type=int, default=FULL_FIELD[1])
    ap.add_argument("--photometric", choices=["MONOCHROME1", "MONOCHROME2"], default=None)
    ap.add_argument("--bits-stored", type=int, choices=[12, 14, 16], default=None)
    ap.add_argument("--window-mode", choices=WINDOW_MODES, default=None)
    ap.add_argument("--pixel-spacing", type=float, default=None, metavar="MM",
                    help="one pixel spacing for all images (default: full field of view at any size)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    a = ap.parse_args(argv)
    out = generate(
        a.out,
        n=a.n,
        seed=a.seed,
        height=a.height,
        width=a.width,
        photometric=a.photometric,
        bits_stored=a.bits_stored,
        window_mode=a.window_mode,
        progress=not a.quiet,
        pixel_spacing_mm=a.pixel_spacing,
    )
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
