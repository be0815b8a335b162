"""Optional laterality normalisation: flip images so the breast lies on one side, and map results back.

Convention: after normalisation the chest wall is on the LEFT edge of the image (column 0) and the
nipple points right. The side is decided from the breast mask (the half of the image holding more
breast pixels is the chest-wall side), not from the DICOM laterality tag, which does not say how the
image was stored. The only operation is a horizontal flip, which is its own inverse, so the same
functions map coordinates into and out of the normalised frame.

Coordinate frames: boxes are float pixel coordinates with edges, x in [0, W] (a box covering column 0
only is x1=0, x2=1); points and masks are pixel indices, x in [0, W-1].
"""

from __future__ import annotations

import numpy as np

#: Side of the image where the chest wall is put by :func:`normalize_laterality`.
CHEST_WALL_SIDE = "left"


def chest_wall_side(mask: np.ndarray) -> str:
    """Side of the chest wall, "left" or "right": the image half with more pixels of the bool mask."""
    mask = np.asarray(mask, dtype=bool)
    w = mask.shape[1]
    cols = mask.sum(axis=0)
    left, right = cols[: w // 2].sum(), cols[w - w // 2 :].sum()
    return "left" if left >= right else "right"


def needs_flip(mask: np.ndarray) -> bool:
    """True when the breast's chest wall is not on :data:`CHEST_WALL_SIDE`."""
    return chest_wall_side(mask) != CHEST_WALL_SIDE


def flip_image(image: np.ndarray) -> np.ndarray:
    """Horizontal flip of an (H, W) or (H, W, C) array (image, mask or probability map); a copy."""
    return np.ascontiguousarray(np.asarray(image)[:, ::-1])


def flip_boxes_xyxy(boxes: np.ndarray, width: int) -> np.ndarray:
    """Flip (N, 4) XYXY boxes in an image of ``width`` columns: x1' = W - x2, x2' = W - x1."""
    b = np.array(boxes, dtype=np.float64, copy=True).reshape(-1, 4)
    x1 = b[:, 0].copy()
    b[:, 0] = width - b[:, 2]
    b[:, 2] = width - x1
    return b


def flip_boxes_xywh(boxes: np.ndarray, width: int) -> np.ndarray:
    """Flip (N, 4) XYWH boxes (COCO) in an image of ``width`` columns: x' = W - x - w."""
    b = np.array(boxes, dtype=np.float64, copy=True).reshape(-1, 4)
    b[:, 0] = width - b[:, 0] - b[:, 2]
    return b


def flip_points(points: np.ndarray, width: int) -> np.ndarray:
    """Flip (N, 2) [x, y] pixel indices: x' = W - 1 - x."""
    p = np.array(points, dtype=np.float64, copy=True).reshape(-1, 2)
    p[:, 0] = width - 1 - p[:, 0]
    return p


def normalize_laterality(
    image: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Flip ``image`` and ``mask`` so the chest wall is on the left; returns (image, mask, flipped)."""
    if needs_flip(mask):
        return flip_image(image), flip_image(mask), True
    return image, mask, False


def unflip_mask(mask: np.ndarray, flipped: bool) -> np.ndarray:
    """A mask or map predicted in the normalised frame, back in the original frame."""
    return flip_image(mask) if flipped else np.asarray(mask)


def unflip_boxes_xyxy(boxes: np.ndarray, width: int, flipped: bool) -> np.ndarray:
    """(N, 4) XYXY boxes from the normalised frame back to the original frame (float64)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return flip_boxes_xyxy(b, width) if flipped else b.copy()


def unflip_boxes_xywh(boxes: np.ndarray, width: int, flipped: bool) -> np.ndarray:
    """(N, 4) XYWH boxes from the normalised frame back to the original frame (float64)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return flip_boxes_xywh(b, width) if flipped else b.copy()


def unflip_points(points: np.ndarray, width: int, flipped: bool) -> np.ndarray:
    """(N, 2) [x, y] pixel indices from the normalised frame back to the original frame."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return flip_points(p, width) if flipped else p.copy()
