"""Evaluators scoring predictions on the host: COCO mAP (pycocotools)."""

from mlx_research.evaluation.coco import METRICS, CocoEvaluator, build_coco

__all__ = ["METRICS", "CocoEvaluator", "build_coco"]
