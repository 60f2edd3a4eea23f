"""Faster R-CNN on the synthetic shapes (default) or a COCO-format folder, scored by COCO mAP.

Model, loss and detections: `models/detection/faster_rcnn.py` (RPN objectness BCE + RPN
smooth-L1 + box-head cross-entropy + box-head smooth-L1, each normalised per image by its sampled
anchors / RoIs (torchvision's, with a fixed number sampled per image), summed over images and
divided by the number of images). Evaluator "coco": pycocotools AP, AP50, ... on the validation
split, and a picture of predicted boxes.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from mlx_research.config_checks import from_config
from mlx_research.errors import ConfigError
from mlx_research.models.detection.faster_rcnn import (
    FasterRCNN,
    FasterRCNNCriterion,
    FasterRCNNPostprocess,
)
from mlx_research.train.tasks import detection
from mlx_research.train.tasks.backbone import check_backbone_config


class Task(detection.DetectionTask):
    """Faster R-CNN (torchvision defaults, every one a config field)."""

    model_parts = (FasterRCNN, FasterRCNNPostprocess)

    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        c = super().default_config()
        c.data = detection.data_config(image_size=128)
        c.evals = detection.evals_config()
        return c

    @classmethod
    def validate_config(cls, config: ml_collections.ConfigDict) -> None:
        super().validate_config(config)
        detection.validate_data(config)
        check_backbone_config(config, "feature_levels")
        m = config.model
        levels = len(m.feature_levels) + (1 if m.fpn else 0)
        if not m.fpn and len(m.feature_levels) != 1:
            raise ConfigError("config: 'model.feature_levels' must name one map without model.fpn")
        if len(m.anchor_sizes) != levels or len(m.aspect_ratios) != levels:
            raise ConfigError(f"config: 'model.anchor_sizes' and 'model.aspect_ratios' need one "
                              f"entry per feature level ({levels})")

    def __init__(self, config: ml_collections.ConfigDict, dtype: Any):
        super().__init__(config, dtype)
        m = config.model
        self.model = from_config(FasterRCNN, m, num_classes=self.num_classes, dtype=dtype)
        self.criterion = FasterRCNNCriterion()
        self.postprocess = from_config(FasterRCNNPostprocess, m)

    def training_inputs(self, batch, rng) -> dict:
        """The ground truth and the key the model samples anchors and RoIs with."""
        return {"targets": detection.detection_targets(batch), "key": rng}
