"""Lesions: masses and calcifications, drawn into the signal, with their masks and annotations.

All lesions are drawn in the canonical frame (chest wall at column 0, see
:mod:`datasets.synthetic.anatomy`), inside the breast, off the pectoral muscle and apart from each
other (:class:`_Placer`). Points are ``(x, y)`` pixels, boxes ``[x, y, w, h]``.

* masses: round, oval, irregular or spiculated; diameter 2-6 % of the image height; soft margins.
  The footprint (and so the box) is ``r <= R(theta)``; spicules stay outside it.
* calcifications, typed per record: ``dot`` (single dots or clusters, the mask is the dot pixels),
  ``vessel`` (tram-track dots along a curved vessel, the mask is a band along it) and ``large``
  (crowded small dots, the mask is their slightly dilated convex hull).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from datasets.canonical import calc_components, mask_bbox, mask_polygons
from datasets.synthetic.constants import CALC_TYPE_CODE, MASS_SHAPES
from datasets.synthetic.raster import bezier, disc, paste_max


@dataclass
class Lesions:
    """The lesions of one image, canonical frame, images (H, W).

    Attributes:
        signal: float32 signal with the lesions (and calcified-vessel tubes, large-calcification
            haze) added.
        masses: one dict per placed mass: ``shape``, ``center`` ``[x, y]``, ``footprint`` (bool
            (H, W)) and the :func:`_render_mass` parameters.
        calc_mask: uint8 0/1 calcification mask (inside the breast).
        calc_owner: int32 index into ``calc_records`` per calcification pixel, -1 elsewhere.
        calc_records: one json-able dict per placed calcification record (``type``, ``center``...).
        n_mass: masses requested; calc_types: calcification types requested (some may not fit).
    """

    signal: np.ndarray
    masses: list[dict]
    calc_mask: np.ndarray
    calc_owner: np.ndarray
    calc_records: list[dict]
    n_mass: int
    calc_types: list[str]


@dataclass
class _CalcCanvas:
    """Working layers of the calcifications, (H, W): see :class:`Lesions`."""

    signal: np.ndarray
    layer: np.ndarray  # float32 calcification signal (before the halo)
    mask: np.ndarray
    owner: np.ndarray
    records: list[dict] = field(default_factory=list)


class _Placer:
    """Rejection sampling of lesion centres.

    The disc of ``radius`` around a centre lies inside the breast, off the pectoral muscle, and
    apart from every lesion placed before. ``room`` is the (H, W) :func:`lesion_room`.
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


def lesion_room(dist: np.ndarray, muscle: np.ndarray | None, h: int) -> np.ndarray:
    """float32 (H, W) free distance (px) around a lesion centre.

    The distance to the skin (``dist``, see :func:`datasets.synthetic.anatomy.skin_distance`), to
    the image border and, when ``muscle`` (uint8 0/1) is given, to the pectoral muscle less 1 % of
    the height ``h``.
    """
    hh, w = dist.shape
    ys, xs = np.arange(hh, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    room = np.minimum(dist, np.minimum(np.minimum(ys, hh - 1 - ys), np.minimum(xs, w - 1 - xs)))
    if muscle is not None:
        to_muscle = cv2.distanceTransform((1 - muscle).astype(np.uint8), cv2.DIST_L2, 3)
        room = np.minimum(room, to_muscle - 0.01 * h)
    return room


# --------------------------------------------------------------------------------------------------
# masses


def _mass_radius(
    rng: np.random.Generator, shape: str, r0: float, r: np.ndarray, th: np.ndarray, params: dict
) -> np.ndarray:
    """Margin radius R(theta) (px, like ``r``) of a mass of ``shape``; records its parameters."""
    if shape == "round":
        return np.full_like(r, r0 * (1 + 0.04 * np.sin(2 * th)))
    if shape == "oval":
        ratio, rot = float(rng.uniform(0.5, 0.8)), float(rng.uniform(0, np.pi))
        a_ax, b_ax = r0 / math.sqrt(ratio), r0 * math.sqrt(ratio)
        rad = a_ax * b_ax / np.sqrt((b_ax * np.cos(th - rot)) ** 2 + (a_ax * np.sin(th - rot)) ** 2)
        params.update(axis_ratio=round(ratio, 4), rotation_rad=round(rot, 4))
        return rad
    rad = np.full_like(r, r0)
    terms = []
    for k in range(2, 8):
        amp, ph = float(rng.normal(0, 0.16 / k**0.7)), float(rng.uniform(0, 2 * np.pi))
        rad = rad + r0 * amp * np.sin(k * th + ph)
        terms.append([k, round(amp, 5), round(ph, 5)])
    params["harmonics"] = terms
    return np.clip(rad, 0.55 * r0, 1.45 * r0)


def _add_spicules(
    rng: np.random.Generator,
    inten: np.ndarray,
    h: int,
    r0: float,
    half: int,
    r: np.ndarray,
    params: dict,
) -> np.ndarray:
    """``inten`` with 8-19 tapered spicules below half the mass contrast (outside the footprint)."""
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
    params["spicules"] = n_sp
    return np.maximum(inten, 0.4 * np.clip(spic, 0, 1) * taper * (r > 0.5 * r0))


def _render_mass(rng: np.random.Generator, h: int, shape: str, density: str) -> dict:
    """A mass on a local (2 half + 1)² patch centred on the mass.

    Returns ``intensity`` (float32 signal), ``footprint`` (bool), ``half`` (patch half size, px),
    ``extent`` (radius, px, of every pixel the mass touches) and json-able ``params``.
    """
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
    rad = _mass_radius(rng, shape, r0, r, th, params)
    q = r - rad  # ~ signed distance to the margin, negative inside
    footprint = q <= 0
    inten = 0.5 * (1.0 - np.tanh(q / m)) * (0.85 + 0.15 * np.clip(1 - (r / rad) ** 2, 0, 1))
    if shape == "spiculated":
        inten = _add_spicules(rng, inten, h, r0, half, r, params)
    params["contrast"] = round(contrast, 5)
    params["contrast_level"] = "low" if contrast < 0.1 else "medium" if contrast < 0.18 else "high"
    return {
        "intensity": (contrast * inten).astype(np.float32),
        "footprint": footprint,
        "half": half,
        "extent": float(ext),
        "params": params,
    }


def _draw_masses(
    rng: np.random.Generator, placer: _Placer, n_mass: int, h: int, w: int, density: str
) -> tuple[np.ndarray, list[dict]]:
    """Up to ``n_mass`` masses: their float32 (h, w) signal layer and their records."""
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
    return mass_layer, masses


# --------------------------------------------------------------------------------------------------
# calcifications


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
    """Paste a dot of diameter ``d`` centred at ``(x, y)``: signal ``amp`` (max) into ``canvas``,
    and, with ``mask``, 1 into ``mask`` and ``record`` into ``owner`` under it."""
    foot = disc(d)
    x0, y0 = x - (d - 1) // 2, y - (d - 1) // 2
    paste_max(canvas, foot.astype(np.float32) * amp, x0, y0)
    if mask is not None:
        paste_max(mask, foot.astype(np.uint8), x0, y0)
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


def _dot_calc(
    rng: np.random.Generator,
    placer: _Placer,
    cv: _CalcCanvas,
    h: int,
    amp_lo: float,
    spacing_mm: float,
) -> None:
    """A single dot (20 %) or a cluster of 5-30 separate dots; the mask is the dot pixels."""
    idx = len(cv.records)
    n = 1 if rng.random() < 0.2 else int(rng.integers(5, 31))
    sizes = [_dot_diameter(rng, spacing_mm) for _ in range(n)]
    radius = max(0.006 * h * rng.uniform(1, 3), 2.2 * math.sqrt(n) * (max(sizes) + 2) / 2)
    c = placer.place(radius + max(sizes))
    if c is None:
        return
    dots = _place_dots(rng, n, radius, c[0], c[1], sizes, gap=3.0)
    for x, y, d in dots:
        _dot_layer(cv.layer, cv.owner, idx, x, y, d, float(rng.uniform(amp_lo, 0.45)), cv.mask)
    cv.records.append(
        {
            "type": "dot",
            "center": list(c),
            "cluster_radius_px": round(radius, 2),
            "dots": [[x, y, d] for x, y, d in dots],
        }
    )


def _tram_track_dots(
    rng: np.random.Generator, pts: np.ndarray, normals: np.ndarray, vw: int
) -> list[tuple[int, int, int]]:
    """``(x, y, d)`` dots on the two walls of the vessel along ``pts`` (lumen width ``vw``)."""
    step = max(2.0, vw * rng.uniform(0.8, 2.0))
    arc = np.concatenate([[0], np.cumsum(np.hypot(*np.diff(pts, axis=0).T))])
    dots = []
    for a in np.arange(0, arc[-1], step):
        if rng.random() < 0.25:
            continue
        i = int(np.searchsorted(arc, a).clip(0, len(pts) - 1))
        side = rng.choice([-1, 1])
        p = pts[i] + normals[i] * side * vw / 2 * rng.uniform(0.5, 1.0)
        dots.append((int(round(p[0])), int(round(p[1])), int(rng.integers(1, min(4, vw) + 1))))
    return dots


def _vessel_calc(
    rng: np.random.Generator, placer: _Placer, cv: _CalcCanvas, h: int, w: int, amp_lo: float
) -> None:
    """Tram-track calcifications along a curved vessel; the mask is a band along the vessel."""
    idx = len(cv.records)
    length = h * rng.uniform(0.06, 0.15)
    ang = rng.uniform(-0.6, 0.6)  # vessels run roughly from the chest wall to the nipple
    bend = rng.uniform(-0.25, 0.25) * length
    vw = max(2, int(round(0.004 * h)))  # vessel lumen width
    c = placer.place(length / 2 + abs(bend) / 2 + vw + 6)
    if c is None:
        return
    d = np.array([math.cos(ang), math.sin(ang)]) * length / 2
    nrm = np.array([-d[1], d[0]]) / (length / 2)
    pts = bezier(np.array(c) - d, np.array(c) + nrm * bend, np.array(c) + d, 200)
    tube = np.zeros((h, w), np.float32)
    cv2.polylines(tube, [np.round(pts * 4).astype(np.int32)], False, 1.0, vw, cv2.LINE_AA, shift=2)
    cv.signal = cv.signal + 0.05 * cv2.GaussianBlur(tube, (0, 0), 0.7)
    tangent = np.gradient(pts, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    normals = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
    dots = _tram_track_dots(rng, pts, normals, vw)
    amp = float(rng.uniform(amp_lo, 0.45))
    region = np.zeros((h, w), np.uint8)
    cv2.polylines(region, [np.round(pts).astype(np.int32)], False, 1, vw + 4, cv2.LINE_8)
    wall = np.zeros((h, w), np.float32)  # faintly calcified walls: two thin parallel lines
    walls = [np.round((pts + sd * normals * vw / 2) * 4).astype(np.int32) for sd in (-1, 1)]
    cv2.polylines(wall, walls, False, 1.0, max(1, vw // 5), cv2.LINE_AA, shift=2)
    np.maximum(cv.layer, 0.4 * amp * wall, out=cv.layer)
    for x, y, dd in dots:
        _dot_layer(cv.layer, cv.owner, idx, x, y, dd, amp * rng.uniform(0.8, 1.0), region)
    cv.mask |= region
    cv.owner[region > 0] = idx
    cv.records.append(
        {
            "type": "vessel",
            "center": list(c),
            "length_px": round(float(length), 2),
            "width_px": vw,
            "path": np.round(pts[::10], 2).tolist(),
            "n_dots": len(dots),
        }
    )


def _large_calc(
    rng: np.random.Generator,
    placer: _Placer,
    cv: _CalcCanvas,
    h: int,
    w: int,
    amp_lo: float,
    spacing_mm: float,
) -> None:
    """Crowded 1-4 px dots annotated as one region: their convex hull, slightly dilated."""
    idx = len(cv.records)
    radius = h * rng.uniform(0.015, 0.04)
    c = placer.place(radius * 1.3 + 6 + 0.002 * h)
    if c is None:
        return
    ecc = (
        float(rng.uniform(1.0, 1.3)),
        float(rng.uniform(0.6, 1.0)),
        float(rng.uniform(0, np.pi)),
    )
    n = int(np.clip(radius**2 * rng.uniform(0.02, 0.06), 15, 150))
    sizes = [min(4, _dot_diameter(rng, spacing_mm, hi_mm=0.35)) for _ in range(n)]
    dots = _place_dots(rng, n, radius, c[0], c[1], sizes, gap=0, ecc=ecc)
    dot_mask = np.zeros((h, w), np.uint8)
    for x, y, d in dots:
        _dot_layer(cv.layer, cv.owner, idx, x, y, d, float(rng.uniform(amp_lo, 0.45)), dot_mask)
    ys, xs = np.nonzero(dot_mask)
    hull = cv2.convexHull(np.stack([xs, ys], axis=1).astype(np.int32))
    region = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(region, hull, 1)
    region = cv2.dilate(region, np.ones((3, 3), np.uint8), iterations=max(1, int(0.002 * h)))
    haze = cv2.GaussianBlur(region.astype(np.float32), (0, 0), max(1.0, 0.1 * radius))
    cv.signal = cv.signal + 0.04 * haze
    cv.mask |= region
    cv.owner[region > 0] = idx
    cv.records.append(
        {
            "type": "large",
            "center": list(c),
            "radius_px": round(float(radius), 2),
            "ellipse": [round(v, 4) for v in ecc],
            "n_dots": len(dots),
        }
    )


def _draw_calcifications(
    rng: np.random.Generator,
    placer: _Placer,
    s: np.ndarray,
    breast: np.ndarray,
    calc_types: list[str],
    density: str,
    spacing_mm: float,
) -> _CalcCanvas:
    """One record per entry of ``calc_types`` (when it fits); the signal gets the calcifications."""
    h, w = s.shape
    cv = _CalcCanvas(
        s, np.zeros((h, w), np.float32), np.zeros((h, w), np.uint8), np.full((h, w), -1, np.int32)
    )
    for ctype in calc_types:
        amp_lo = 0.22 if density in ("A", "B") else 0.28
        if ctype == "dot":
            _dot_calc(rng, placer, cv, h, amp_lo, spacing_mm)
        elif ctype == "vessel":
            _vessel_calc(rng, placer, cv, h, w, amp_lo)
        else:
            _large_calc(rng, placer, cv, h, w, amp_lo, spacing_mm)
    # a faint halo keeps dots from being single-value steps; mask pixels keep their full amplitude
    cv.layer = np.maximum(cv.layer, 0.6 * cv2.GaussianBlur(cv.layer, (0, 0), 0.8))
    cv.signal = cv.signal + cv.layer * breast
    cv.mask &= breast
    return cv


def draw_lesions(
    rng: np.random.Generator,
    s: np.ndarray,
    breast: np.ndarray,
    room: np.ndarray,
    density: str,
    pixel_spacing_mm: float,
) -> Lesions:
    """Draw the masses and calcifications of one image into the float32 (H, W) signal ``s``.

    ``breast`` is the uint8 0/1 breast, ``room`` the :func:`lesion_room`, ``density`` the BI-RADS
    letter (dense breasts get fainter masses, brighter calcifications), ``pixel_spacing_mm`` sets
    the dot sizes. No lesion in ~25 % of images; otherwise 0-2 masses and 0-3 calcifications,
    at least one lesion. Canonical frame.
    """
    h, w = s.shape
    placer = _Placer(rng, room, h)
    lesion_free = rng.random() < 0.25
    n_mass = 0 if lesion_free else int(rng.choice([0, 1, 1, 2]))
    n_calc = 0 if lesion_free else int(rng.choice([0, 1, 2, 3], p=[0.2, 0.4, 0.25, 0.15]))
    if not lesion_free and n_mass == 0 and n_calc == 0:
        n_calc = 1
    mass_layer, masses = _draw_masses(rng, placer, n_mass, h, w, density)
    s = s + mass_layer * breast
    calc_types = [str(rng.choice(["dot", "dot", "vessel", "large"])) for _ in range(n_calc)]
    cv = _draw_calcifications(rng, placer, s, breast, calc_types, density, pixel_spacing_mm)
    return Lesions(cv.signal, masses, cv.mask, cv.owner, cv.records, n_mass, calc_types)


# --------------------------------------------------------------------------------------------------
# annotations


def calc_annotations(calc_mask: np.ndarray, owner: np.ndarray, records: list) -> list[dict]:
    """Canonical calcification records plus the generator records each component covers.

    One record per 8-connected component of the uint8 0/1 (H, W) ``calc_mask`` (see
    :func:`datasets.canonical.calc_components`: ``bbox`` ``[x, y, w, h]``, ``area``,
    ``calc_type``, ``point`` ``[x, y]``), with ``records``: the sorted indices into ``records``
    that the int32 (H, W) ``owner`` map assigns to its pixels. Image (DICOM) pixel coordinates.
    """
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


def mass_annotation(footprint: np.ndarray) -> dict:
    """Tight box ``[x, y, w, h]``, area (px) and COCO polygons of a mass footprint (bool (H, W))."""
    return {
        "bbox": mask_bbox(footprint),
        "area": float(footprint.sum()),
        "segmentation": mask_polygons(footprint),
    }
