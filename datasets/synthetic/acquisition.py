"""Acquisition: detector noise, burned-in text, the column artifact, and the pixel module.

The signal ``s`` (float32 (H, W), 0 = unexposed background, bright = dense) becomes stored pixels
``raw_base + s * raw_span``, clipped to BitsStored and inverted for MONOCHROME1; modality values
are ``stored * rescale_slope + rescale_intercept`` with slope 1 and intercept 0, the only values a
mammography image may carry. Functions here work in the final image frame
(after the laterality flip) unless noted.
"""

from __future__ import annotations

import cv2
import numpy as np

from datasets.synthetic.constants import S_MAX, WINDOW_MODES


def draw_image_params(rng: np.random.Generator) -> dict:
    """Json-able acquisition parameters of one image (pixel module, window, rescale, artifact).

    ``window_signal`` holds the signals the diagnostic window maps to 0 and 255: just above the
    background, and the calcification level (see :func:`display_window`).
    """
    bits = int(rng.choice([12, 14, 16], p=[0.35, 0.35, 0.30]))
    maxv = (1 << bits) - 1
    base = float(rng.uniform(0.0, 0.06)) * maxv  # stored value of the background signal s=0
    span = (maxv - base) / S_MAX * float(rng.uniform(0.6, 1.0))  # stored units per unit of signal
    # The DX/MG pixel module fixes Rescale Slope 1 and Intercept 0 (PS3.3 C.8.11.3), so stored
    # values are modality values. This draw is unused; it stays so that every later draw of a seed
    # (and thus every image) is unchanged.
    rng.integers(5)
    slope, intercept = 1.0, 0.0
    return {
        "bits_stored": bits,
        "photometric": "MONOCHROME1" if rng.random() < 0.35 else "MONOCHROME2",
        "window_mode": str(rng.choice(WINDOW_MODES, p=[0.45, 0.30, 0.25])),
        "rescale_slope": slope,
        "rescale_intercept": intercept,
        "raw_base": round(base, 3),
        "raw_span": round(span, 3),
        "window_signal": [
            round(float(rng.uniform(0.10, 0.16)), 4),
            round(float(rng.uniform(0.95, 1.1)), 4),
        ],
        "background_signal": round(float(rng.uniform(0.0, 0.04)), 4),
        "noise_sigma": round(float(rng.uniform(0.004, 0.010)), 5),
        "artifact": bool(rng.random() < 0.3),
    }


def force_pixel_module(
    p: dict, photometric: str | None, bits_stored: int | None, window_mode: str | None
) -> None:
    """In place: override the drawn photometric, BitsStored (rescaling ``raw_base``/``raw_span``
    so the image looks the same) and window mode of the parameters ``p``; None keeps the draw."""
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


def add_noise(
    rng: np.random.Generator, s: np.ndarray, breast: np.ndarray, params: dict
) -> np.ndarray:
    """Detector noise: the float32 (H, W) signal with white noise in the uint8 0/1 ``breast``, and
    ``background_signal`` plus a quarter of the noise outside it."""
    noise = rng.standard_normal(s.shape, dtype=np.float32) * params["noise_sigma"]
    return np.where(breast > 0, s + noise, params["background_signal"] + 0.25 * noise)


def burn_text(
    rng, s: np.ndarray, breast: np.ndarray, laterality: str, view: str, h: int, w: int
) -> list:
    """Burn a view label, a laterality marker and acquisition text into the background, in place.

    ``s`` is the float32 (h, w) signal and ``breast`` the uint8 0/1 breast, final frame. Each item
    goes to the first candidate position (corners on the nipple side) whose box, grown by a gap,
    misses the breast; items that fit nowhere are skipped. Returns the boxes drawn: ``kind``,
    ``text``, ``bbox`` ``[x, y, w, h]`` (pixels) and ``font_scale``.
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


def add_column_artifact(
    rng, s: np.ndarray, calc_mask: np.ndarray, text_boxes: list, h: int, w: int
) -> dict | None:
    """The detector artifact of the paper (Fig. 2): isolated 1-pixel bright and dark dots on one
    column, added in place to the float32 (h, w) signal ``s`` (clipped to [0, S_MAX]).

    The column avoids the calcifications (uint8 (h, w) ``calc_mask``, by >= 3 columns), the
    ``text_boxes`` and the outer 5 % of the width. Returns ``column`` and the ``rows_bright`` /
    ``rows_dark``, or None when no column qualifies.
    """
    bad = calc_mask.any(axis=0).astype(np.uint8)
    for b in text_boxes:
        x, _, bw, _ = b["bbox"]
        bad[max(0, x - 1) : x + bw + 1] = 1
    bad = cv2.dilate(bad[None, :], np.ones((1, 7), np.uint8))[0]  # >= 3 columns from calcifications
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


def stored_pixels(signal: np.ndarray, p: dict) -> np.ndarray:
    """uint16 (H, W) stored pixel values of the float32 signal under the pixel module ``p``:
    ``rint(raw_base + signal * raw_span)`` clipped to BitsStored, inverted for MONOCHROME1."""
    maxv = (1 << p["bits_stored"]) - 1
    raw = np.rint(p["raw_base"] + signal * p["raw_span"])
    raw = np.clip(raw, 0, maxv)
    if p["photometric"] == "MONOCHROME1":
        raw = maxv - raw
    return raw.astype(np.uint16)


def display_window(p: dict) -> dict:
    """Window centre/width in modality units (after rescale) displaying signal s_lo..s_hi as 0..255.

    Returns ``mode`` and the lists ``center``/``width`` (one window for "single" and "voi_lut",
    whose VOI LUT Sequence tabulates that window; the diagnostic one then a full-range one for
    "multi").
    """
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
    if p["window_mode"] == "multi":  # the first window is the diagnostic one; the second shows all
        centers.append(round((full_lo + full_hi) / 2, 2))
        widths.append(round(full_hi - full_lo, 2))
    return {"mode": p["window_mode"], "center": centers, "width": widths}
