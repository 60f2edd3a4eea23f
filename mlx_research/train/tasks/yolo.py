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

from mlx_research.config_checks import check_choices, check_ranges
from mlx_research.errors import ConfigError
from mlx_research.models.backbone import level_stride
from mlx_research.models.detection import yolo
from mlx_research.train.tasks import detection
from mlx_research.train.tasks.backbone import check_backbone_config

_RANGES = {
    "model.grid_size": (1, None),
    "model.boxes_per_cell": (1, None),
    "model.head_convs": (0, None),
    "model.head_channels": (1, None),
    "model.fc_hidden": (1, None),
    "model.dropout": (0, 1),
    "model.lambda_coord": (0, None),
    "model.lambda_noobj": (0, None),
    "model.score_thresh": (0, 1),
    "model.nms_thresh": (0, 1),
    "model.pre_nms_top_k": (1, None),
    "model.detections_per_img": (1, None),
}


class Task(detection.DetectionTask):
    """YOLO v1 (the paper's S, B, lambdas and loss; every choice a config field)."""

    @staticmethod
    def default_config() -> ml_collections.ConfigDict:
        c = ml_collections.ConfigDict()
        c.model = ml_collections.ConfigDict(dict(
            backbone="small_cnn",  # "small_cnn" | "resnet18" | "resnet34" | "resnet50"
            small_cnn_features=(32, 64, 128, 256),  # SmallCNN stage widths (stride 2 each)
            feature_level="C4",  # backbone map under the head; side = grid_size or a multiple
            norm="batch",  # backbone norm: "batch" | "frozen_batch" (pretrained) | "group"
            grid_size=7,  # S: S x S cells
            boxes_per_cell=2,  # B: predictors per cell
            head_convs=2, head_channels=256,  # 3x3 conv-norm-leaky layers on the backbone map
            head_norm="batch",  # "batch" | "none" (the paper)
            head="conv",  # "conv" (1x1 conv per cell) | "fc" (paper: Dense, dropout, Dense)
            fc_hidden=4096, dropout=0.5,  # "fc" head only
            # "sigmoid": sigmoid on x, y, sqrt w/h and conf, softmax on classes | "linear" (paper)
            output_activation="sigmoid",
            lambda_coord=5.0, lambda_noobj=0.5,  # loss weights (paper)
            conf_target="iou",  # confidence target of the responsible box: "iou" (paper) | "one"
            score_thresh=0.01,  # decoding: class-specific score conf * p(class) above this
            nms_thresh=0.5,  # class-wise NMS IoU
            pre_nms_top_k=1000,  # best candidates (box x class) entering NMS
            detections_per_img=100,  # fixed number of detections (valid mask)
        ))
        c.data = detection.data_config(image_size=448)
        c.evals = detection.evals_config()
        return c

    @staticmethod
    def validate_config(config: ml_collections.ConfigDict) -> None:
        detection.validate_data(config)
        check_backbone_config(config, "feature_level")
        check_choices(config, {
            "model.head": ("conv", "fc"),
            "model.head_norm": ("batch", "none"),
            "model.output_activation": ("sigmoid", "linear"),
            "model.conf_target": ("iou", "one"),
        })
        check_ranges(config, _RANGES)
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
        self.model = yolo.YOLOv1(
            num_classes=self.num_classes, grid_size=m.grid_size, boxes_per_cell=m.boxes_per_cell,
            backbone=m.backbone, small_cnn_features=tuple(m.small_cnn_features),
            feature_level=m.feature_level, norm=m.norm, head_convs=m.head_convs,
            head_channels=m.head_channels, head_norm=m.head_norm, head=m.head,
            fc_hidden=m.fc_hidden, dropout=m.dropout, output_activation=m.output_activation,
            dtype=dtype,
        )
        self.criterion = yolo.YoloCriterion(input_hw, lambda_coord=m.lambda_coord,
                                            lambda_noobj=m.lambda_noobj,
                                            conf_target=m.conf_target)
        self.postprocess = yolo.YoloPostprocess(
            input_hw, score_thresh=m.score_thresh, nms_thresh=m.nms_thresh,
            pre_nms_top_k=m.pre_nms_top_k, detections_per_img=m.detections_per_img)

    def model_inputs(self, batch):
        return {"images": batch["image"]}
