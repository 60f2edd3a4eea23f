"""Evaluators scoring predictions on the host: COCO mAP (pycocotools)."""
