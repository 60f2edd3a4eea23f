"""Faster R-CNN (Ren et al. 2015) networks: backbone (+ optional FPN), RPN head, box head.

The parts follow torchvision's `fasterrcnn_resnet50_fpn`: images normalised with the ImageNet
mean/std, a ResNet (or `SmallCNN`) backbone, optionally a feature pyramid (lateral 1x1, top-down
nearest upsampling, 3x3 outputs, an extra max-pooled level), an RPN head shared by every level
(3x3 conv, 1x1 objectness and box deltas), and a two-layer MLP box head with a softmax classifier
and class-specific box regression. Targets, losses, proposals and detections are pure functions in
`mlx_research.models.detection.rcnn`; the task (`train/tasks/faster_rcnn.py`) joins them.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mlx_research.models.backbone import Backbone
_conv_init = nn.initializers.normal(0.01)  # torchvision's RPN / FPN-free head init


class RPNHead(nn.Module):
    """Shared over levels: 3x3 conv + relu, then per anchor an objectness logit and 4 deltas.
    Outputs are flattened per level in (y, x, anchor) order, the order of `ops.anchor_grid`."""

    num_anchors: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: Sequence[jax.Array]) -> tuple[jax.Array, jax.Array]:
        """features: levels [B, Hl, Wl, C] -> (objectness [B, sum HlWlA], deltas [B, sum HlWlA, 4])."""
        channels = features[0].shape[-1]
        conv = nn.Conv(channels, (3, 3), padding=1, kernel_init=_conv_init, dtype=self.dtype,
                       name="conv")
        cls = nn.Conv(self.num_anchors, (1, 1), kernel_init=_conv_init, dtype=self.dtype,
                      name="cls_logits")
        box = nn.Conv(4 * self.num_anchors, (1, 1), kernel_init=_conv_init, dtype=self.dtype,
                      name="bbox_pred")
        logits, deltas = [], []
        for f in features:
            h = nn.relu(conv(f))
            logits.append(cls(h).reshape(f.shape[0], -1))
            deltas.append(box(h).reshape(f.shape[0], -1, 4))
        return (jnp.concatenate(logits, 1).astype(jnp.float32),
                jnp.concatenate(deltas, 1).astype(jnp.float32))


class BoxHead(nn.Module):
    """TwoMLPHead + FastRCNNPredictor: pooled RoIs [K, S, S, C] -> (class logits [K, C+1],
    class-specific deltas [K, C+1, 4])."""

    num_classes: int
    representation_size: int = 1024
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pooled: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = pooled.reshape(pooled.shape[0], -1)
        x = nn.relu(nn.Dense(self.representation_size, dtype=self.dtype, name="fc6")(x))
        x = nn.relu(nn.Dense(self.representation_size, dtype=self.dtype, name="fc7")(x))
        logits = nn.Dense(self.num_classes + 1, kernel_init=nn.initializers.normal(0.01),
                          dtype=self.dtype, name="cls_score")(x)
        deltas = nn.Dense(4 * (self.num_classes + 1), kernel_init=nn.initializers.normal(0.001),
                          dtype=self.dtype, name="bbox_pred")(x)
        return logits.astype(jnp.float32), deltas.reshape(-1, self.num_classes + 1, 4).astype(
            jnp.float32)


class FasterRCNN(nn.Module):
    """Backbone (+ FPN) + RPN head + box head.

    Attributes:
        num_classes: object classes (background excluded).
        num_anchors: anchors per location (sizes per level x aspect ratios).
        backbone: "small_cnn" | "resnet18" | "resnet34" | "resnet50".
        feature_levels: backbone outputs used ("C3", ... finest first); without FPN exactly one.
        small_cnn_features: channels of SmallCNN's stages.
        fpn: feature pyramid over `feature_levels` (+ a max-pooled extra level).
        fpn_channels: FPN width.
        norm: backbone norm ("batch", "frozen_batch", "group").
        representation_size: box head MLP width.
        roi_output_size: pooled RoI size (the box head's input is that squared x channels).
    """

    num_classes: int
    num_anchors: int
    backbone: str = "small_cnn"
    feature_levels: Sequence[str] = ("C3",)
    small_cnn_features: Sequence[int] = (32, 64, 128)
    fpn: bool = False
    fpn_channels: int = 256
    norm: str = "batch"
    representation_size: int = 1024
    roi_output_size: int = 7
    dtype: Any = jnp.float32

    def setup(self):
        self.extractor = Backbone(
            arch=self.backbone, feature_levels=tuple(self.feature_levels),
            small_cnn_features=tuple(self.small_cnn_features), norm=self.norm,
            fpn_channels=self.fpn_channels if self.fpn else 0, body_name="body", dtype=self.dtype)
        self.rpn_head = RPNHead(self.num_anchors, dtype=self.dtype)
        self.box_head = BoxHead(self.num_classes, self.representation_size, dtype=self.dtype)

    def features(self, images: jax.Array, train: bool = False) -> list[jax.Array]:
        """images [B, H, W, 3] in [0, 1] -> feature levels [B, Hl, Wl, C], finest first."""
        return self.extractor(images, train)

    def rpn(self, features: Sequence[jax.Array]) -> tuple[jax.Array, jax.Array]:
        return self.rpn_head(features)

    def classify_rois(self, pooled: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.box_head(pooled)

    def __call__(self, images: jax.Array, train: bool = False):
        """Runs every part once (for init): features, RPN outputs and the box head on zeros."""
        features = self.features(images, train)
        rpn = self.rpn(features)
        channels = features[0].shape[-1]
        pooled = jnp.zeros((1, self.roi_output_size, self.roi_output_size, channels), self.dtype)
        return features, rpn, self.classify_rois(pooled)
