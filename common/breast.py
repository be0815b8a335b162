"""Breast-region extraction (Sec. 2.2.1, "Breast Region Extraction").

After the window adjustment the background is 0. The connected regions of non-zero pixels are found
after a morphological opening (which detaches burned-in letters and markers touching the breast through
thin bridges); the largest region is the breast, its holes are filled, and every other pixel is set to 0.

For speed the morphology runs on a block-averaged copy (about ``work_size`` pixels on the long side);
the full-resolution boundary is then taken from the full-resolution non-zero pixels inside a thin band
around the coarse region, so the mask edge is exact to the pixel away from thin structures.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def breast_mask(
    image: np.ndarray,
    background: int = 0,
    work_size: int = 1024,
    opening_fraction: float = 0.004,
    band: int = 2,
) -> np.ndarray:
    """Mask of the breast in a windowed image.

    Args:
        image: uint8 (H, W) windowed image, background 0 (see :func:`common.dicom.window_image`).
        background: pixels ``<= background`` count as background (0: the paper's "non-zero pixels").
        work_size: long side (pixels) of the coarse copy the morphology runs on; images up to this
            size are processed at full resolution.
        opening_fraction: radius of the opening disk as a fraction of the image's short side, in
            full-resolution pixels (0.004: 11 px on a 2800-px-wide image, 2 px on 416 px); at least
            1 coarse pixel.
        band: width, in coarse pixels, of the band around the coarse region where the full-resolution
            non-zero pixels decide the boundary.

    Returns:
        bool (H, W), True inside the breast; all False when the image has no foreground pixel.
        Same frame as ``image``.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"breast_mask needs a 2-D image, got shape {image.shape}")
    h, w = image.shape
    fg255 = cv2.compare(np.ascontiguousarray(image), background, cv2.CMP_GT)  # 0/255 uint8
    if not fg255.any():
        return np.zeros((h, w), dtype=bool)

    factor = max(1, int(np.ceil(max(h, w) / work_size)))
    if factor > 1:
        ch, cw = -(-h // factor), -(-w // factor)
        # Pad to whole blocks so that coarse pixel (i, j) is exactly the block [i*f:(i+1)*f, j*f:(j+1)*f].
        padded = cv2.copyMakeBorder(
            fg255, 0, ch * factor - h, 0, cw * factor - w, cv2.BORDER_CONSTANT, 0
        )
        # Block averaging: a coarse pixel is foreground when at least half of its block is.
        frac = cv2.resize(padded, (cw, ch), interpolation=cv2.INTER_AREA)
        coarse = (frac >= 128).astype(np.uint8)
    else:
        coarse = (fg255 > 0).astype(np.uint8)

    radius = max(1, int(round(opening_fraction * min(h, w) / factor)))
    opened = cv2.morphologyEx(coarse, cv2.MORPH_OPEN, _disk(radius))
    region = _largest_component(opened)
    if region is None:  # everything was thinner than the opening: fall back to the raw components
        region = _largest_component(coarse)
    region = ndimage.binary_fill_holes(region).astype(np.uint8)

    if factor == 1:
        # Recover the boundary pixels the opening shaved off, but only those touching the region.
        grown = cv2.dilate(region, _disk(radius))
        mask = cv2.bitwise_or(region, cv2.bitwise_and(grown, coarse)) * np.uint8(255)
    else:
        inner = cv2.erode(region, _disk(band)) * np.uint8(255)
        outer = cv2.dilate(region, _disk(band)) * np.uint8(255)
        size = (cw * factor, ch * factor)
        inner_full = cv2.resize(inner, size, interpolation=cv2.INTER_NEAREST)[:h, :w]
        outer_full = cv2.resize(outer, size, interpolation=cv2.INTER_NEAREST)[:h, :w]
        # Inside the eroded coarse region everything is breast (holes filled); in the band the
        # full-resolution foreground decides; outside nothing is.
        mask = cv2.bitwise_or(inner_full, cv2.bitwise_and(outer_full, fg255))
    return _one_filled_region(mask, sample_step=factor)


def _one_filled_region(mask255: np.ndarray, sample_step: int = 1) -> np.ndarray:
    """Largest 8-connected component of a 0/255 mask with its holes filled, as bool.

    Component areas are counted on every ``sample_step``-th pixel in each direction (a full-size
    ``bincount`` would cost more than the whole rest of the chain).
    """
    n, labels = cv2.connectedComponents(mask255, connectivity=8, ltype=cv2.CV_32S)
    if n > 2:
        areas = np.bincount(labels[::sample_step, ::sample_step].ravel(), minlength=n)
        mask255 = cv2.compare(labels, int(np.argmax(areas[1:]) + 1), cv2.CMP_EQ)
    # Holes: background pixels not reachable from outside the image (flood from a 1-pixel frame).
    outside = cv2.copyMakeBorder(mask255, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    cv2.floodFill(outside, None, (0, 0), 255)
    holes = cv2.bitwise_not(outside[1:-1, 1:-1])
    return cv2.bitwise_or(mask255, holes) > 0


def _largest_component(binary: np.ndarray) -> np.ndarray | None:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if n <= 1:
        return None
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return (labels == best).astype(np.uint8)


def extract_breast(image: np.ndarray, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Keep only the breast: returns (uint8 (H, W) image with non-breast pixels set to 0, bool mask).

    ``kwargs`` go to :func:`breast_mask`.
    """
    mask = breast_mask(image, **kwargs)
    out = np.where(mask, image, np.uint8(0)).astype(np.uint8, copy=False)
    return out, mask
