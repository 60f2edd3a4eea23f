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

from typing import Any

import ml_collections

from mlx_research.config_checks import from_config
from mlx_research.errors import ConfigError
from mlx_research.models.detection.detr import DETR, DetrPostprocess
from mlx_research.models.detection.set_criterion import CriterionWeights, DetrCriterion
from mlx_research.train.tasks import detection
from mlx_research.train.tasks.backbone import check_backbone_config


class Task(detection.DetectionTask):
    """DETR (facebookresearch/detr defaults unless a config changes them)."""

    model_parts = (DETR, DetrCriterion, CriterionWeights)

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
        check_backbone_config(config, "feature_level")
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
        self.model = from_config(DETR, m, num_classes=self.num_classes, dtype=dtype)
        self.criterion = from_config(DetrCriterion, m, weights=from_config(CriterionWeights, m),
                                     query_groups=self.model.query_groups)
        self.postprocess = DetrPostprocess(self.model.num_queries)
