"""Prediction on mammogram files: pre-processing, DefaultPredictor, boxes back in original pixels."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.errors import InputError
from common.inputs import collect_inputs, unique_stems

from .config import get_mass_det_cfg, resolve_device
from .data.mapper import gray_to_model_input
from .engine.trainer import load_mass_weights, resolve_weights_file
from .evaluation.froc_evaluator import instances_to_coco_results

__all__ = ["MassPredictor", "collect_inputs", "draw_overlay", "predict_mass"]

logger = logging.getLogger(__name__)



def build_default_predictor(cfg, *, trust_pickle: bool = False):
    """detectron2's :class:`DefaultPredictor` for ``cfg`` with ``MODEL.WEIGHTS`` loaded as data
    (:func:`~mass_det.engine.trainer.load_mass_weights`): a ``.pth`` through
    ``torch.load(weights_only=True)``, a ``.pkl`` only from the model zoo or with ``trust_pickle``, and
    every parameter set by the file. A refused, damaged, foreign or incomplete file raises
    :class:`InputError` naming it."""
    from detectron2.engine import DefaultPredictor

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
    """``MassPredictor(cfg, weights)(path)`` -> (8-bit image, COCO results in original pixels).

    The file goes through :func:`common.preprocess.preprocess` (as in training), the windowed 8-bit
    image is replicated to 3 channels and given to detectron2's :class:`DefaultPredictor`, which resizes
    it to ``INPUT.MIN_SIZE_TEST`` and returns boxes in the frame of the image it was given; boxes of an
    image that pre-processing mirrored are mirrored back.
    """

    def __init__(self, cfg, weights: str, *, trust_pickle: bool = False):
        resolve_weights_file(weights)  # one line for a missing file or a failed download
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.WEIGHTS = str(weights)
        resolve_device(cfg)
        self.cfg = cfg
        self.predictor = build_default_predictor(cfg, trust_pickle=trust_pickle)

    def __call__(self, path: str | Path, image_id: int = 0) -> tuple[np.ndarray, list[dict]]:
        """Returns the pre-processed (H, W) uint8 image and COCO results (``bbox`` XYWH, original
        pixels, ``score`` in [0, 1], ``category_id`` 1, ``image_id``). Raises InputError."""
        from common.preprocess import preprocess

        m = self.cfg.INPUT.MAMMO
        p = preprocess(str(path), remove_artifacts=m.REMOVE_ARTIFACTS,
                       normalize_laterality=m.NORMALIZE_LATERALITY)
        flipped = bool(p.record.get("flipped", False))
        # DefaultPredictor takes BGR and converts when INPUT.FORMAT is RGB; grey levels are equal.
        outputs = self.predictor(gray_to_model_input(p.image, "BGR"))
        instances = outputs["instances"].to("cpu")
        results = instances_to_coco_results(instances, image_id, width=p.image.shape[1],
                                            flipped=flipped)
        image = p.image[:, ::-1] if flipped else p.image  # back to the original frame
        return np.ascontiguousarray(image), results


def draw_overlay(gray: np.ndarray, results: Sequence[dict], threshold: float) -> np.ndarray:
    """(H, W) uint8 -> (H, W, 3) uint8 RGB with red boxes and scores for results above ``threshold``."""
    import cv2

    rgb = np.repeat(gray[:, :, None], 3, axis=2).copy()
    thickness = max(1, round(min(gray.shape) / 400))
    for r in results:
        if r["score"] < threshold:
            continue
        x, y, w, h = (int(round(v)) for v in r["bbox"])
        cv2.rectangle(rgb, (x, y), (x + w, y + h), (255, 0, 0), thickness)
        cv2.putText(rgb, f"{r['score']:.2f}", (x, max(y - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4 * thickness, (255, 0, 0), thickness)
    return rgb


def predict_mass(config_file: str | None, weights: str, inputs: Sequence[str | Path],
                 output: str | Path, threshold: float = 0.0, overlay_threshold: float = 0.5,
                 opts: Sequence[str] = (), progress: bool = True,
                 trust_pickle: bool = False) -> list[str]:
    """Predict masses in every input file and write ``output``/predictions.json, images.json and
    overlays/<stem>.png.

    ``predictions.json``: COCO results (``image_id``, ``category_id`` 1, ``bbox`` XYWH in ORIGINAL image
    pixels, ``score``) with score >= ``threshold``; ``images.json``: ``[{"id", "file_name", "stem",
    "height", "width"}]``, ids 1, 2, ... in input order. Files that fail are reported on stderr
    (``InputError`` lines) and skipped. Returns the failure messages.

    Raises:
        FileNotFoundError: ``weights`` is neither a local file nor a URL that could be downloaded
            (:class:`~mass_det.engine.trainer.WeightsNotFoundError`, one-line message).
    """
    from tqdm import tqdm

    from common.io import atomic_write_json, atomic_write_png

    cfg = get_mass_det_cfg(config_file, opts)
    predictor = MassPredictor(cfg, weights, trust_pickle=trust_pickle)
    output = Path(output)
    files = collect_inputs(inputs)
    predictions: list[dict] = []
    images: list[dict] = []
    failures: list[str] = []
    stem_of = dict(zip(files, unique_stems(files), strict=True))
    for image_id, path in enumerate(tqdm(files, desc="mass prediction", disable=not progress), 1):
        try:
            if not path.is_file():
                raise InputError(path, "file not found")
            gray, results = predictor(path, image_id)
        except Exception as e:  # one bad file must not cost the others their results
            msg = str(e) if isinstance(e, InputError) else f"{path}: {type(e).__name__}: {e}"
            failures.append(msg)
            print(f"error: {msg}", file=sys.stderr)
            continue
        stem = stem_of[path]
        kept = [r for r in results if r["score"] >= threshold]
        predictions += kept
        images.append({"id": image_id, "file_name": str(path), "stem": stem,
                       "height": int(gray.shape[0]), "width": int(gray.shape[1])})
        atomic_write_png(output / "overlays" / f"{stem}.png", draw_overlay(gray, kept, overlay_threshold))
    atomic_write_json(output / "predictions.json", predictions)
    atomic_write_json(output / "images.json", images)
    return failures
