"""The mass detector's input transform, shared by the training mapper and the predictor.

Both :class:`~mass_det.data.mapper.MassDatasetMapper` (training / evaluation) and
:class:`~mass_det.inference.MassPredictor` (prediction) turn the pre-processed 8-bit mammogram of
:func:`common.preprocess.preprocess` into the 3-channel array detectron2 expects through this one
function, so the two cannot drift apart.
"""

from __future__ import annotations

import numpy as np

__all__ = ["gray_to_model_input"]


def gray_to_model_input(image: np.ndarray, image_format: str = "BGR") -> np.ndarray:
    """(H, W) uint8 pre-processed mammogram -> (H, W, 3) uint8, the same value in every channel.

    Replicating the grey level lets an ImageNet-trained 3-channel stem be used unchanged; BGR and
    RGB are then identical, which is why both are accepted. The frame is the one of ``image`` (no
    resize).

    Raises:
        ValueError: ``image_format`` is not BGR / RGB, or ``image`` is not (H, W) uint8.
    """
    if image_format not in ("BGR", "RGB"):
        raise ValueError(
            f"INPUT.FORMAT must be BGR or RGB for grey mammograms, got {image_format!r}")
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"expected a (H, W) uint8 image, got {image.dtype} {image.shape}")
    return np.ascontiguousarray(np.repeat(image[:, :, None], 3, axis=2))
