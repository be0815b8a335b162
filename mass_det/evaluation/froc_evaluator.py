"""Detectron2 ``DatasetEvaluator`` of AP50 and FROC with :func:`common.metrics.evaluate_boxes`.

Predictions are collected as COCO results in ORIGINAL image pixels (the frame of the dataset's
annotations): detectron2's ``GeneralizedRCNN`` already rescales boxes to the ``height``/``width`` of
the input dict, and boxes of images that pre-processing mirrored (``flipped``) are mirrored back
here. Ground truth is looked up by ``image_id`` in the registered dataset, never taken from the
loader.
"""

from __future__ import annotations

import copy
import itertools
import logging
import os
from collections import OrderedDict

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import BoxMode
from detectron2.utils import comm

from common.io import atomic_write_json
from common.metrics import evaluate_boxes
from common.metrics.froc import at_fp, fp_key
from common.plots import plot_froc

__all__ = ["FROCEvaluator", "dataset_dicts_to_coco", "instances_to_coco_results"]

logger = logging.getLogger(__name__)

CATEGORY_ID = 1  # canonical COCO id of "mass"


def instances_to_coco_results(instances, image_id: int, width: int | None = None,
                              flipped: bool = False) -> list[dict]:
    """Detectron2 ``Instances`` (``pred_boxes`` XYXY, original pixels; ``scores``) -> COCO results.

    Returns:
        ``[{"image_id", "category_id": 1, "bbox": [x, y, w, h] float, original pixels, "score"}]``.
        With ``flipped`` the boxes are mirrored back about the vertical axis of an image ``width``
        wide.
    """
    if len(instances) == 0:
        return []
    boxes = instances.pred_boxes.tensor.detach().cpu().numpy().astype(np.float64)
    if flipped:
        if width is None:
            raise ValueError("mirroring boxes back needs the image width")
        boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
    boxes = BoxMode.convert(boxes, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
    scores = instances.scores.detach().cpu().numpy()
    return [
        {"image_id": int(image_id), "category_id": CATEGORY_ID,
         "bbox": [float(v) for v in box], "score": float(score)}
        for box, score in zip(boxes, scores)
    ]


def dataset_dicts_to_coco(dicts: list[dict]) -> dict:
    """Detectron2 dataset dicts -> COCO ground truth (category 1 = mass, bbox XYWH, original
    pixels)."""
    images, annotations = [], []
    for d in dicts:
        images.append({"id": int(d["image_id"]), "file_name": str(d.get("file_name", "")),
                       "height": int(d["height"]), "width": int(d["width"])})
        for a in d.get("annotations", []):
            x, y, w, h = (float(v) for v in
                          BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYWH_ABS))
            annotations.append({"id": len(annotations) + 1, "image_id": int(d["image_id"]),
                                "category_id": CATEGORY_ID, "bbox": [x, y, w, h], "area": w * h,
                                "iscrowd": int(a.get("iscrowd", 0))})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": CATEGORY_ID, "name": "mass"}]}


def summarize_report(report: dict, fps) -> OrderedDict:
    """Flat floats from an ``evaluate_boxes`` report: AP50_COCO, AP50_VOC, recall, sens_at_<k>fp.

    Metric names spell the level without a dot (``sens_at_1fp``, ``sens_at_0p5fp``). Values the
    report leaves undefined (None, e.g. a split without any mass) become NaN; a level of ``fps``
    that the report does not hold raises KeyError (:func:`common.metrics.froc.at_fp`).
    """
    out = OrderedDict()
    out["AP50_COCO"] = _float(report.get("ap50_coco"))
    out["AP50_VOC"] = _float(report.get("ap50_voc"))
    out["recall"] = _float(report.get("recall"))
    for fp in fps:
        name = fp_key(fp).replace(".", "p")
        out[f"sens_at_{name}fp"] = _float(at_fp(report["sensitivity_at_fp"], fp))
    return out


def _float(value) -> float:
    """None (an undefined value of the report, e.g. no lesion in the set) -> NaN: detectron2 wants
    floats."""
    return float("nan") if value is None else float(value)


class FROCEvaluator(DatasetEvaluator):
    """AP50 (COCO and VOC), recall and FROC sensitivities of one registered mass dataset.

    ``evaluate()`` writes ``froc_report.json`` (the full ``evaluate_boxes`` report),
    ``predictions.json`` (COCO results) and ``froc.png`` to ``output_dir`` and returns
    ``{"mass": {"AP50_COCO", "AP50_VOC", "recall", "sens_at_1fp", ...}}`` (floats) on the main
    process.
    """

    def __init__(self, dataset_name: str, *, output_dir: str | None = None, hit: str = "iou",
                 iou_thr: float = 0.5, fps=(1, 2, 5, 10), distributed: bool = True):
        self.dataset_name = dataset_name
        self.output_dir = output_dir
        self.hit = hit
        self.iou_thr = float(iou_thr)
        self.fps = tuple(fps)
        self.distributed = distributed
        self._predictions: list[dict] = []

    @classmethod
    def from_cfg(cls, cfg, dataset_name: str, output_dir: str | None = None) -> FROCEvaluator:
        return cls(dataset_name, output_dir=output_dir, hit=cfg.TEST.FROC.HIT,
                   iou_thr=cfg.TEST.FROC.IOU_THRESH, fps=cfg.TEST.FROC.FPS)

    def reset(self):
        self._predictions = []

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            instances = out["instances"].to("cpu")
            self._predictions.extend(instances_to_coco_results(
                instances, inp["image_id"], width=inp.get("width"),
                flipped=inp.get("flipped", False),
            ))

    def evaluate(self):
        if self.distributed:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(self._predictions, dst=0)))
            if not comm.is_main_process():
                return {}
        else:
            predictions = self._predictions
        gt = dataset_dicts_to_coco(DatasetCatalog.get(self.dataset_name))
        report = evaluate_boxes(gt, copy.deepcopy(predictions), hit=self.hit,
                                iou_thr=self.iou_thr, fps=self.fps)
        results = summarize_report(report, self.fps)
        if self.output_dir:
            self._write(report, predictions)
        logger.info("Mass detection on %s: %s", self.dataset_name,
                    ", ".join(f"{k}={v:.4f}" for k, v in results.items()))
        return OrderedDict(mass=results)

    def _write(self, report: dict, predictions: list[dict]) -> None:
        os.makedirs(self.output_dir, exist_ok=True)
        meta = MetadataCatalog.get(self.dataset_name)
        atomic_write_json(os.path.join(self.output_dir, "predictions.json"), predictions)
        atomic_write_json(os.path.join(self.output_dir, "froc_report.json"), {
            "dataset": self.dataset_name, "json_file": meta.get("json_file", None),
            "hit": self.hit, "iou_thr": self.iou_thr, "report": report,
        })
        try:
            plot_froc({self.dataset_name: report["froc"]},
                      os.path.join(self.output_dir, "froc.png"), title=f"FROC, {self.dataset_name}")
        except Exception as e:  # a plot failure must not lose the numbers above
            logger.warning("FROC plot failed: %s", e)
