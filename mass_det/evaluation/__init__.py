"""Evaluation of the mass detector with the project's FROC/AP metrics (common.metrics)."""

from .froc_evaluator import FROCEvaluator, dataset_dicts_to_coco, instances_to_coco_results

__all__ = ["FROCEvaluator", "dataset_dicts_to_coco", "instances_to_coco_results"]
