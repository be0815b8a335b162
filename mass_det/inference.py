"""The mass detector's predictor: a pre-processed 8-bit mammogram in, boxes and scores out.

:class:`MassPredictor` wraps detectron2's :class:`~detectron2.engine.DefaultPredictor` (which
resizes the image to ``INPUT.MIN_SIZE_TEST`` and maps the boxes back to the frame it was given) with
the weights loaded as data and required to set every parameter (:func:`build_default_predictor`). It
does no pre-processing: the caller gives it the uint8 (H, W) result of
:func:`common.preprocess.preprocess` and gets boxes in the frame of that image. Reading files,
laterality and writing outputs belong to ``deeplima`` (``deeplima.pipeline``, ``deeplima.writer``;
``python -m deeplima predict-mass``).
"""

from __future__ import annotations

import numpy as np
import torch
from detectron2.engine import DefaultPredictor

from common.errors import InputError

from .config import resolve_device
from .data.transforms import gray_to_model_input
from .engine.trainer import load_mass_weights, resolve_weights_file

__all__ = ["MassPredictor", "build_default_predictor"]


def build_default_predictor(cfg, *, trust_pickle: bool = False) -> DefaultPredictor:
    """detectron2's :class:`DefaultPredictor` for ``cfg`` with ``MODEL.WEIGHTS`` loaded as data
    (:func:`~mass_det.engine.trainer.load_mass_weights`): a ``.pth`` through
    ``torch.load(weights_only=True)``, a ``.pkl`` only from the model zoo or with ``trust_pickle``,
    and every parameter set by the file. A refused, damaged, foreign or incomplete file raises
    :class:`InputError` naming it."""
    weights = str(cfg.MODEL.WEIGHTS)
    if not weights:
        raise InputError(None, "no weights given: the mass detector would predict with random ones")
    empty = cfg.clone()
    empty.defrost()
    empty.MODEL.WEIGHTS = ""  # DefaultPredictor builds the model only; the weights are loaded below
    predictor = DefaultPredictor(empty)
    try:
        load_mass_weights(predictor.model, weights, trust_pickle=trust_pickle)
    except InputError:
        raise
    except Exception as e:
        raise InputError(weights, f"not a readable checkpoint ({type(e).__name__}: {e})") from None
    predictor.cfg = cfg.clone()
    return predictor


class MassPredictor:
    """``MassPredictor(predictor)(image)`` -> (boxes, scores) of one pre-processed mammogram.

    Built from parts (any ``predictor`` that maps an (H, W, 3) uint8 array to ``{"instances":
    Instances}`` with ``pred_boxes`` and ``scores`` in that array's frame, e.g. a
    :class:`DefaultPredictor`) or from a config with :meth:`from_config`.
    """

    def __init__(self, predictor, *, image_format: str = "BGR", cfg=None):
        """
        Args:
            predictor: callable (H, W, 3) uint8 -> ``{"instances": Instances}``.
            image_format: channel order ``predictor`` takes ("BGR" | "RGB"; grey levels are equal in
                both, see :func:`~mass_det.data.transforms.gray_to_model_input`).
            cfg: the detectron2 config the predictor was built from (kept for the caller; frozen).
        """
        self.predictor = predictor
        self.image_format = image_format
        self.cfg = cfg

    @classmethod
    def from_config(cls, cfg, weights: str | None = None, *, device: str | None = None,
                    trust_pickle: bool = False) -> MassPredictor:
        """The predictor of a detectron2 config (``mass_det.config.get_mass_det_cfg``).

        Args:
            cfg: the config (not modified).
            weights: checkpoint path or model-zoo URL; None = ``cfg.MODEL.WEIGHTS``.
            device: "cpu", "cuda", ... (None = ``cfg.MODEL.DEVICE``); CUDA asked for but absent
                falls back to the CPU (:func:`~mass_det.config.resolve_device`).
            trust_pickle: accept ``.pkl`` (pickle) weights from outside detectron2's model zoo.

        Raises:
            FileNotFoundError: the weights file is missing or cannot be downloaded
                (:class:`~mass_det.engine.trainer.WeightsNotFoundError`, one line).
            InputError: the weights are refused, unreadable, or leave parameters unset (one line).
        """
        cfg = cfg.clone()
        cfg.defrost()
        if weights is not None:
            cfg.MODEL.WEIGHTS = str(weights)
        # a missing file or a failed download: one line, before anything else is built or logged
        resolve_weights_file(str(cfg.MODEL.WEIGHTS))
        if device is not None:
            cfg.MODEL.DEVICE = str(device)
        resolve_device(cfg)
        cfg.freeze()
        # DefaultPredictor takes BGR and converts when INPUT.FORMAT is RGB: BGR is always right here
        return cls(build_default_predictor(cfg, trust_pickle=trust_pickle), image_format="BGR",
                   cfg=cfg)

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Detect masses in one pre-processed mammogram.

        Args:
            image: uint8 (H, W), the output of :func:`common.preprocess.preprocess` (in whatever
                frame it returned: mirrored when it normalised laterality).

        Returns:
            (boxes, scores): boxes (N, 4) float32 XYXY in the pixels of ``image`` (top-left origin,
            x = column), scores (N,) float32 in [0, 1], in the order of the model's output
            (decreasing score).
        """
        rgb = gray_to_model_input(image, self.image_format)
        with torch.inference_mode():
            out = self.predictor(rgb)["instances"].to("cpu")
        boxes = out.pred_boxes.tensor.numpy().astype(np.float32, copy=False).reshape(-1, 4)
        return boxes, out.scores.numpy().astype(np.float32, copy=False)
