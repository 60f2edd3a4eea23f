"""DETR on the synthetic shapes (default) or a COCO-format folder, scored by COCO mAP.

Loss (`models.detection.detr.set_criterion`): per decoder layer (auxiliary losses) a Hungarian
matching per image, then ``loss_ce * CE + loss_bbox * L1 + loss_giou * (1 - GIoU)`` with DETR's
two normalisers: the cross-entropy is a class-weighted mean over every query of the batch, L1
and GIoU are divided by the batch's number of valid target boxes (at least 1). Under data
parallelism the loss sees the whole global batch (GSPMD), so that count is over all devices.

With ``model.query_groups = G`` (Group DETR) each group of queries is matched and scored as
above and the loss is the mean over groups.

Trainer contract: these normalisers are not one divisor, so the task returns
``(num_images * loss, num_images)``: the trainer's division gives DETR's loss of the batch
exactly. With ``grad_accum_steps > 1`` the result is the mean of the micro-batches' DETR losses
(each normalised by its own boxes and queries), not the loss of the concatenated batch.

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

import jax
import jax.numpy as jnp
import ml_collections

from mlx_research.models.detection.detr import DETR, CriterionWeights, postprocess, set_criterion
from mlx_research.ops.boxes import box_convert
from mlx_research.ops.matching import MATCHERS
from mlx_research.train.config import check_choices, check_ranges
from mlx_research.train.errors import ConfigError
from mlx_research.train.tasks import detection

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
_LEVELS = {"small_cnn": None, "resnet18": 5, "resnet34": 5, "resnet50": 5}  # None: per width


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
        check_choices(config, {
            "model.backbone": tuple(_LEVELS),
            "model.matcher": MATCHERS,
        })
        check_ranges(config, _RANGES)
        m = config.model
        if m.hidden_dim % 4 or m.hidden_dim % m.nhead:
            raise ConfigError(f"config: 'model.hidden_dim' = {m.hidden_dim} must be a multiple "
                              f"of 4 and of 'model.nhead' = {m.nhead}")
        deepest = _LEVELS[m.backbone] or len(m.small_cnn_features)
        shallowest = 2 if _LEVELS[m.backbone] else 1
        levels = [f"C{k}" for k in range(shallowest, deepest + 1)]
        if m.feature_level not in levels:
            raise ConfigError(f"config: 'model.feature_level' must be one of {', '.join(levels)} "
                              f"for {m.backbone}; got {m.feature_level!r}")
        tensor = config.mesh.get("model", 1)
        if tensor > 1 and (m.nhead % tensor or m.dim_feedforward % tensor):
            raise ConfigError(f"config: 'model.nhead' = {m.nhead} and 'model.dim_feedforward' = "
                              f"{m.dim_feedforward} must be divisible by mesh.model = {tensor}")

    def __init__(self, config: ml_collections.ConfigDict, dtype: Any):
        super().__init__(config, dtype)
        m = config.model
        self.model = DETR(
            num_classes=self._num_classes(), num_queries=m.num_queries, hidden_dim=m.hidden_dim,
            nhead=m.nhead, num_encoder_layers=m.num_encoder_layers,
            num_decoder_layers=m.num_decoder_layers, dim_feedforward=m.dim_feedforward,
            dropout=m.dropout, pre_norm=m.pre_norm, backbone=m.backbone,
            feature_level=m.feature_level, small_cnn_features=tuple(m.small_cnn_features),
            norm=m.norm, pos_temperature=m.pos_temperature, pos_scale=m.pos_scale,
            spatial_prior=m.spatial_prior, spatial_prior_beta=m.spatial_prior_beta,
            query_groups=m.query_groups, dtype=dtype,
        )
        self.weights = CriterionWeights(
            cost_class=m.cost_class, cost_bbox=m.cost_bbox, cost_giou=m.cost_giou,
            loss_ce=m.loss_ce, loss_bbox=m.loss_bbox, loss_giou=m.loss_giou, eos_coef=m.eos_coef)

    def model_inputs(self, batch):
        return {"images": batch["image"], "image_hw": batch["image_hw"]}

    # ------------------------------------------------------------------ loss
    def loss(self, params, model_state, batch, rng):
        (logits, boxes), new_state = self.model.apply(
            {"params": params, **model_state}, **self.model_inputs(batch), train=True,
            rngs={"dropout": rng}, mutable=list(model_state))
        m = self.config.model
        if not m.aux_loss:
            logits, boxes = logits[-1:], boxes[-1:]
        total, layers = set_criterion(
            logits, boxes, normalized_cxcywh(batch["boxes"], batch["image_hw"]), batch["labels"],
            batch["box_valid"], self.weights, m.matcher, groups=m.query_groups)
        metrics = {"loss_ce": layers.ce[-1], "loss_bbox": layers.bbox[-1],
                   "loss_giou": layers.giou[-1], "class_error": layers.class_error[-1],
                   "cardinality_error": layers.cardinality_error[-1]}  # the last layer's
        num_images = jnp.float32(batch["image"].shape[0])
        return (total * num_images, num_images), (metrics, {**model_state, **new_state})

    # ------------------------------------------------------------------ evaluation
    def predict(self, variables, batch) -> dict[str, jax.Array]:
        """One detection per query [B, Q]: boxes (xyxy, resized pixels), scores, labels (1..K),
        valid (all True, as DETR's COCO evaluation keeps every query)."""
        logits, boxes = self.model.apply(variables, **self.model_inputs(batch), train=False)
        queries = self.config.model.num_queries  # group 0
        return postprocess(logits[-1, :, :queries], boxes[-1, :, :queries], batch["image_hw"])



def normalized_cxcywh(boxes: jax.Array, image_hw: jax.Array) -> jax.Array:
    """[B, M, 4] xyxy pixels -> cxcywh divided by each image's valid width/height ([B, 2] hw)."""
    height, width = image_hw[:, 0].astype(jnp.float32), image_hw[:, 1].astype(jnp.float32)
    scale = jnp.stack([width, height, width, height], axis=-1)[:, None, :]
    return box_convert(boxes / scale, "xyxy", "cxcywh")
