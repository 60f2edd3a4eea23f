"""YOLO v1 on the synthetic shapes (default) or a COCO-format folder, scored by COCO mAP.

Model, loss and decoding: `models/detection/yolo.py`. Loss: the paper's sum-squared error
(coordinates x lambda_coord, confidence of responsible predictors, confidence of the others x
lambda_noobj, class probabilities of cells with an object), summed over the images and divided
by their number. Metrics: each term's mean per image. Evaluator "coco": pycocotools AP, AP50,
... on the validation split, and a picture of predicted boxes.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from mlx_research.config_checks import from_config
from mlx_research.errors import ConfigError
from mlx_research.models.backbone import level_stride
from mlx_research.models.detection import yolo
from mlx_research.train.tasks import detection
from mlx_research.train.tasks.backbone import check_backbone_config


class Task(detection.DetectionTask):
    """YOLO v1 (the paper's S, B, lambdas and loss; every choice a config field)."""

    model_parts = (yolo.YOLOv1, yolo.YoloCriterion, yolo.YoloPostprocess)

    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        c = super().default_config()
        c.data = detection.data_config(image_size=448)
        c.evals = detection.evals_config()
        return c

    @classmethod
    def validate_config(cls, config: ml_collections.ConfigDict) -> None:
        super().validate_config(config)
        detection.validate_data(config)
        check_backbone_config(config, "feature_level")
        m, d = config.model, config.data
        stride = level_stride(m.feature_level)
        side = -(-d.image_size // stride)
        if side % m.grid_size:
            raise ConfigError(f"config: 'model.grid_size' {m.grid_size} must divide the "
                              f"{m.feature_level} map side {side} (data.image_size "
                              f"{d.image_size} / stride {stride})")

    def __init__(self, config: ml_collections.ConfigDict, dtype: Any):
        super().__init__(config, dtype)
        m, d = config.model, config.data
        input_hw = (d.image_size, d.image_size)
        self.model = from_config(yolo.YOLOv1, m, num_classes=self.num_classes, dtype=dtype)
        self.criterion = from_config(yolo.YoloCriterion, m, input_hw=input_hw)
        self.postprocess = from_config(yolo.YoloPostprocess, m, input_hw=input_hw)

    def model_inputs(self, batch):
        return {"images": batch["image"]}
