"""DETR on the synthetic shapes (default) or a COCO-format folder, scored by COCO mAP.

Model and detections: `models/detection/detr.py`; loss: `models/detection/set_criterion.py`
(per decoder layer a Hungarian matching per image, then ``loss_ce * CE + loss_bbox * L1 +
loss_giou * (1 - GIoU)`` with DETR's two normalisers, returned as ``(num_images * loss,
num_images)`` so that the trainer's division gives DETR's loss of the batch). With
``model.query_groups = G`` (Group DETR) each group of queries is matched and scored on its own
and the loss is the mean over groups.

Optimizer: DETR's reference values (AdamW lr 1e-4, backbone lr x0.1 through
``optim.lr_multipliers=(("^backbone/", 0.1),)``, weight decay 1e-4, gradient clipping 0.1) are
set by `experiments/detection/detr_coco.py`; `detr_shapes.py` tunes them for training from
scratch. Evaluator "coco": pycocotools AP, AP50, ... and a picture of predicted boxes.

Matching cost (benchmarks/results/detr_matching.json, 2-core CPU): 0.5% of the detr_shapes step
on device (0.8% with scipy); at DETR's 100 queries x 50 target slots x 6 decoder layers on the
same small model 6.4% on device against 0.3% with scipy, so "scipy" is the faster choice on
CPU and "device" avoids the host round trip on accelerators.
"""

from __future__ import annotations

import math
from typing import Any

import ml_collections

from mlx_research.config_checks import check_choices, check_ranges
from mlx_research.errors import ConfigError
from mlx_research.models.detection.detr import DETR, DetrPostprocess
from mlx_research.models.detection.set_criterion import CriterionWeights, DetrCriterion
from mlx_research.ops.matching import MATCHERS
from mlx_research.train.tasks import detection
from mlx_research.train.tasks.backbone import check_backbone_config

_RANGES = {
    "model.hidden_dim": (4, None),
    "model.nhead": (1, None),
    "model.num_encoder_layers": (0, None),
    "model.num_decoder_layers": (1, None),
    "model.dim_feedforward": (1, None),
    "model.dropout": (0, 0.99),
    "model.pos_temperature": (1, None),
    "model.pos_scale": (0, None),
    "model.spatial_prior_beta": (1e-6, None),
    "model.num_queries": (1, None),
    "model.query_groups": (1, None),
    "model.cost_class": (0, None),
    "model.cost_bbox": (0, None),
    "model.cost_giou": (0, None),
    "model.loss_ce": (0, None),
    "model.loss_bbox": (0, None),
    "model.loss_giou": (0, None),
    "model.eos_coef": (0, None),
}


class Task(detection.DetectionTask):
    """DETR (facebookresearch/detr defaults unless a config changes them)."""

    @staticmethod
    def default_config() -> ml_collections.ConfigDict:
        c = ml_collections.ConfigDict()
        c.model = ml_collections.ConfigDict(dict(
            backbone="resnet50",  # "small_cnn" | "resnet18" | "resnet34" | "resnet50"
            small_cnn_features=(32, 64, 128),  # SmallCNN stage widths (stride 2 each)
            feature_level="C5",  # backbone map fed to the Transformer ("C<k>": stride 2^k)
            norm="batch",  # backbone norm: "batch" | "frozen_batch" (pretrained) | "group"
            hidden_dim=256,  # Transformer width (multiple of 4 and of nhead)
            nhead=8,
            num_encoder_layers=6,
            num_decoder_layers=6,
            dim_feedforward=2048,
            dropout=0.1,
            pre_norm=False,  # pre-LN Transformer layers (DETR's --pre_norm)
            pos_temperature=10000.0,  # sine positions: wavelength base (DETR's temperature)
            pos_scale=2 * math.pi,  # sine positions: range of normalised positions (DETR: 2 pi)
            num_queries=100,  # object queries: most detections per image
            spatial_prior=False,  # SMCA's Gaussian cross-attention prior (not in DETR)
            spatial_prior_beta=1.0,  # its bandwidth (larger = wider attention windows)
            query_groups=1,  # Group DETR: groups of num_queries, each matched on its own
            aux_loss=True,  # score every decoder layer (False: the last only)
            matcher="device",  # "device" (optax Hungarian in the step) | "scipy" (pure_callback)
            cost_class=1.0, cost_bbox=5.0, cost_giou=2.0,  # matching cost weights
            loss_ce=1.0, loss_bbox=5.0, loss_giou=2.0,  # loss weights
            eos_coef=0.1,  # class weight of "no object" in the cross-entropy
        ))
        c.data = detection.data_config(image_size=128)
        c.evals = detection.evals_config()
        return c

    @staticmethod
    def validate_config(config: ml_collections.ConfigDict) -> None:
        detection.validate_data(config)
        check_backbone_config(config, "feature_level")
        check_choices(config, {"model.matcher": MATCHERS})
        check_ranges(config, _RANGES)
        m = config.model
        if m.hidden_dim % 4 or m.hidden_dim % m.nhead:
            raise ConfigError(f"config: 'model.hidden_dim' = {m.hidden_dim} must be a multiple "
                              f"of 4 and of 'model.nhead' = {m.nhead}")
        tensor = config.mesh.get("model", 1)
        if tensor > 1 and (m.nhead % tensor or m.dim_feedforward % tensor):
            raise ConfigError(f"config: 'model.nhead' = {m.nhead} and 'model.dim_feedforward' = "
                              f"{m.dim_feedforward} must be divisible by mesh.model = {tensor}")

    def __init__(self, config: ml_collections.ConfigDict, dtype: Any):
        super().__init__(config, dtype)
        m = config.model
        self.model = DETR(
            num_classes=self.num_classes, num_queries=m.num_queries, hidden_dim=m.hidden_dim,
            nhead=m.nhead, num_encoder_layers=m.num_encoder_layers,
            num_decoder_layers=m.num_decoder_layers, dim_feedforward=m.dim_feedforward,
            dropout=m.dropout, pre_norm=m.pre_norm, backbone=m.backbone,
            feature_level=m.feature_level, small_cnn_features=tuple(m.small_cnn_features),
            norm=m.norm, pos_temperature=m.pos_temperature, pos_scale=m.pos_scale,
            spatial_prior=m.spatial_prior, spatial_prior_beta=m.spatial_prior_beta,
            query_groups=m.query_groups, dtype=dtype,
        )
        weights = CriterionWeights(
            cost_class=m.cost_class, cost_bbox=m.cost_bbox, cost_giou=m.cost_giou,
            loss_ce=m.loss_ce, loss_bbox=m.loss_bbox, loss_giou=m.loss_giou, eos_coef=m.eos_coef)
        self.criterion = DetrCriterion(weights, m.matcher, m.query_groups, m.aux_loss)
        self.postprocess = DetrPostprocess(m.num_queries)
