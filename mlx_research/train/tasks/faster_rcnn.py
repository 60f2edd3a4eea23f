"""Faster R-CNN on the synthetic shapes (default) or a COCO-format folder, scored by COCO mAP.

Loss: RPN objectness BCE + RPN smooth-L1 + box-head cross-entropy + box-head smooth-L1, each
normalised per image by its sampled anchors / RoIs (torchvision's, with a fixed number sampled
per image), summed over images and divided by the number of images. Evaluator "coco":
pycocotools AP, AP50, ... on the validation split, and a picture of predicted boxes.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from mlx_research.models.detection import rcnn
from mlx_research.models.detection.faster_rcnn import FasterRCNN
from mlx_research.ops.anchors import anchor_grid
from mlx_research.ops.roi import multiscale_roi_align, roi_align
from mlx_research.train.config import check_choices, check_ranges
from mlx_research.train.errors import ConfigError
from mlx_research.train.tasks import detection

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
        check_choices(config, {
            "model.backbone": detection.BACKBONES,
        })
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
        m, d = config.model, config.data
        self.num_classes = self._num_classes()
        self.model = FasterRCNN(
            num_classes=self.num_classes,
            num_anchors=len(m.anchor_sizes[0]) * len(m.aspect_ratios[0]),
            backbone=m.backbone, feature_levels=tuple(m.feature_levels),
            small_cnn_features=tuple(m.small_cnn_features), fpn=m.fpn,
            fpn_channels=m.fpn_channels, norm=m.norm,
            representation_size=m.representation_size, roi_output_size=m.roi_output_size,
            dtype=dtype,
        )
        size = (d.image_size, d.image_size)
        images = jax.ShapeDtypeStruct((1, *size, 3), jnp.float32)
        shapes_ = jax.eval_shape(
            lambda x: self.model.init_with_output(jax.random.key(0), x, method="features")[0], images)
        self.feature_sizes = tuple(tuple(s.shape[1:3]) for s in shapes_)
        self.anchors = anchor_grid(size, self.feature_sizes, tuple(map(tuple, m.anchor_sizes)),
                                   tuple(map(tuple, m.aspect_ratios)))
        per_location = [len(s) * len(r) for s, r in zip(m.anchor_sizes, m.aspect_ratios)]
        self.level_sizes = tuple(h * w * a for (h, w), a in zip(self.feature_sizes, per_location))

    # ------------------------------------------------------------------ loss
    def _pool(self, features, rois):
        m, size = self.config.model, self.config.data.image_size
        if m.fpn:
            return multiscale_roi_align(features[:-1], rois, (size, size), m.roi_output_size,
                                        m.sampling_ratio)
        stride = size / features[0].shape[1]
        return roi_align(features[0], rois, m.roi_output_size, spatial_scale=1.0 / stride,
                         sampling_ratio=m.sampling_ratio)

    def _proposals(self, objectness, deltas, image_hw, train: bool):
        m = self.config.model
        mode = "train" if train else "test"
        propose = functools.partial(
            rcnn.propose, level_sizes=self.level_sizes,
            pre_nms_top_n=m[f"rpn_pre_nms_top_n_{mode}"],
            post_nms_top_n=m[f"rpn_post_nms_top_n_{mode}"],
            nms_thresh=m.rpn_nms_thresh, min_size=m.rpn_min_size)
        return jax.vmap(lambda o, d, hw: propose(o, d, self.anchors, image_hw=hw))(
            objectness, deltas, image_hw)

    def loss(self, params, model_state, batch, rng):
        m = self.config.model
        rpn_key, roi_key = jax.random.split(rng)
        num_images = batch["image"].shape[0]

        def forward(module, images):
            features = module.features(images, train=True)
            objectness, deltas = module.rpn(features)
            rpn_loss = functools.partial(
                rcnn.rpn_loss, fg_iou=m.rpn_fg_iou, bg_iou=m.rpn_bg_iou,
                batch_size_per_image=m.rpn_batch_size_per_image,
                positive_fraction=m.rpn_positive_fraction)
            rpn = jax.vmap(lambda k, o, d, b, v: rpn_loss(k, o, d, self.anchors, b, v))(
                jax.random.split(rpn_key, num_images), objectness, deltas, batch["boxes"],
                batch["box_valid"])
            proposals, valid = self._proposals(objectness, deltas, batch["image_hw"], train=True)
            rois = jax.vmap(functools.partial(
                rcnn.sample_rois, fg_iou=m.box_fg_iou, bg_iou=m.box_bg_iou,
                batch_size_per_image=m.box_batch_size_per_image,
                positive_fraction=m.box_positive_fraction,
            ))(jax.random.split(roi_key, num_images), proposals, valid, batch["boxes"],
               batch["labels"], batch["box_valid"])
            logits, box_deltas = module.classify_rois(self._pool(features, _with_batch_index(rois.boxes)))
            per_roi = rois.boxes.shape[1]
            head = jax.vmap(rcnn.box_head_loss)(
                logits.reshape(num_images, per_roi, -1),
                box_deltas.reshape(num_images, per_roi, -1, 4), rois)
            return rpn, head

        (rpn, head), new_state = self.model.apply(
            {"params": params, **model_state}, batch["image"], method=forward,
            mutable=list(model_state))
        parts = {"rpn_objectness": rpn.classification, "rpn_box": rpn.box,
                 "classifier": head.classification, "box_reg": head.box}
        total = sum(jnp.sum(v) for v in parts.values())
        metrics = {k: jnp.mean(v) for k, v in parts.items()}
        return (total, jnp.float32(num_images)), (metrics, {**model_state, **new_state})

    # ------------------------------------------------------------------ evaluation
    def predict(self, variables, batch) -> dict[str, jax.Array]:
        """Detections [B, D]: boxes (xyxy, resized pixels), scores, labels (1..C), valid."""
        m = self.config.model

        def forward(module, images):
            features = module.features(images, train=False)
            objectness, deltas = module.rpn(features)
            proposals, valid = self._proposals(objectness, deltas, batch["image_hw"], train=False)
            logits, box_deltas = module.classify_rois(self._pool(features, _with_batch_index(proposals)))
            b, p = proposals.shape[:2]
            return jax.vmap(functools.partial(
                rcnn.detect, score_thresh=m.box_score_thresh, nms_thresh=m.box_nms_thresh,
                detections_per_img=m.box_detections_per_img,
            ))(logits.reshape(b, p, -1), box_deltas.reshape(b, p, -1, 4), proposals, valid,
               batch["image_hw"])

        return self.model.apply(variables, batch["image"], method=forward)



def _with_batch_index(boxes: jax.Array) -> jax.Array:
    """[B, K, 4] boxes -> [B * K, 5] RoIs (batch index, x1, y1, x2, y2)."""
    b, k = boxes.shape[:2]
    index = jnp.repeat(jnp.arange(b, dtype=boxes.dtype), k)[:, None]
    return jnp.concatenate([index, boxes.reshape(b * k, 4)], axis=1)
