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

from mlx_research.config_checks import check_ranges
from mlx_research.errors import ConfigError
from mlx_research.models.detection.faster_rcnn import (
    FasterRCNN,
    FasterRCNNCriterion,
    FasterRCNNPostprocess,
)
from mlx_research.train.tasks import detection
from mlx_research.train.tasks.backbone import check_backbone_config

_RANGES = {
    "model.fpn_channels": (1, None),
    "model.representation_size": (1, None),
    "model.roi_output_size": (1, None),
    "model.sampling_ratio": (1, None),
    "model.rpn_fg_iou": (0, 1),
    "model.rpn_bg_iou": (0, 1),
    "model.rpn_batch_size_per_image": (1, None),
    "model.rpn_positive_fraction": (0, 1),
    "model.rpn_pre_nms_top_n_train": (1, None),
    "model.rpn_post_nms_top_n_train": (1, None),
    "model.rpn_pre_nms_top_n_test": (1, None),
    "model.rpn_post_nms_top_n_test": (1, None),
    "model.rpn_nms_thresh": (0, 1),
    "model.box_fg_iou": (0, 1),
    "model.box_bg_iou": (0, 1),
    "model.box_batch_size_per_image": (1, None),
    "model.box_positive_fraction": (0, 1),
    "model.box_score_thresh": (0, 1),
    "model.box_nms_thresh": (0, 1),
    "model.box_detections_per_img": (1, None),
}


_POSTPROCESS_FIELDS = ("box_score_thresh", "box_nms_thresh", "box_detections_per_img")


class Task(detection.DetectionTask):
    """Faster R-CNN (torchvision defaults, every one a config field)."""

    @staticmethod
    def default_config() -> ml_collections.ConfigDict:
        c = ml_collections.ConfigDict()
        c.model = ml_collections.ConfigDict(dict(
            backbone="small_cnn",  # "small_cnn" | "resnet18" | "resnet34" | "resnet50"
            small_cnn_features=(32, 64, 128),  # SmallCNN stage widths (stride 2 each)
            feature_levels=("C3",),  # backbone maps used, finest first (one without FPN)
            fpn=False,  # feature pyramid over feature_levels + a max-pooled extra level
            fpn_channels=256,
            norm="batch",  # backbone norm: "batch" | "frozen_batch" (pretrained) | "group"
            anchor_sizes=((16, 32, 64),),  # per pyramid level (torchvision: 32..512, one per level)
            aspect_ratios=((0.5, 1.0, 2.0),),  # h / w, per level
            rpn_fg_iou=0.7, rpn_bg_iou=0.3,  # anchor matching thresholds
            rpn_batch_size_per_image=256, rpn_positive_fraction=0.5,  # sampled anchors
            rpn_pre_nms_top_n_train=2000, rpn_post_nms_top_n_train=2000,  # per level / total
            rpn_pre_nms_top_n_test=1000, rpn_post_nms_top_n_test=1000,
            rpn_nms_thresh=0.7, rpn_min_size=1e-3,
            box_fg_iou=0.5, box_bg_iou=0.5,  # RoI matching thresholds
            box_batch_size_per_image=512, box_positive_fraction=0.25,  # sampled RoIs
            roi_output_size=7, sampling_ratio=2,  # RoI Align
            representation_size=1024,  # box head MLP width
            box_score_thresh=0.05, box_nms_thresh=0.5, box_detections_per_img=100,
        ))
        c.data = detection.data_config(image_size=128)
        c.evals = detection.evals_config()
        return c

    @staticmethod
    def validate_config(config: ml_collections.ConfigDict) -> None:
        detection.validate_data(config)
        check_backbone_config(config, "feature_levels")
        check_ranges(config, _RANGES)
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
        model_fields = {k: v for k, v in m.items() if k not in _POSTPROCESS_FIELDS}
        self.model = FasterRCNN(num_classes=self.num_classes, dtype=dtype, **model_fields)
        self.criterion = FasterRCNNCriterion()
        self.postprocess = FasterRCNNPostprocess(
            score_thresh=m.box_score_thresh, nms_thresh=m.box_nms_thresh,
            detections_per_img=m.box_detections_per_img)

    def training_inputs(self, batch, rng) -> dict:
        """The ground truth and the key the model samples anchors and RoIs with."""
        return {"targets": detection.detection_targets(batch), "key": rng}
