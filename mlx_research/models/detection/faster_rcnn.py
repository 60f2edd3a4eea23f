"""Faster R-CNN (Ren et al. 2015): model, criterion and postprocess.

The parts follow torchvision's `fasterrcnn_resnet50_fpn`: a `Backbone` (ImageNet normalisation,
ResNet or `SmallCNN`, optionally a feature pyramid with an extra max-pooled level), anchors on
every level, an RPN head shared by the levels (3x3 conv, 1x1 objectness and box deltas), top-k +
NMS proposals, RoI Align, and a two-layer MLP box head with a softmax classifier and
class-specific box regression. As in torchvision the training forward samples: anchors against
the targets for the RPN loss, and RoIs (proposals + ground truth) for the box head; the
per-image functions (matching, sampling, losses, proposals, detections) are in
`mlx_research.models.detection.rcnn`.

Detector parts (`interface`): `FasterRCNN` (images -> `FasterRCNNOutputs`, with the samples in
training), `FasterRCNNCriterion` (RPN BCE + smooth-L1 over the sampled anchors, box-head
cross-entropy + smooth-L1 over the sampled RoIs, each per image divided by its number sampled;
summed over the images and divided by their number) and `FasterRCNNPostprocess` (class scores
and boxes of every proposal, score threshold, per-class NMS).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mlx_research.config_fields import config_field
from mlx_research.models.backbone import Backbone
from mlx_research.models.detection import rcnn
from mlx_research.models.detection.interface import DetectionTargets
from mlx_research.ops.anchors import anchor_grid
from mlx_research.ops.roi import multiscale_roi_align, roi_align

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
    representation_size: int
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


class FasterRCNNOutputs(NamedTuple):
    """Outputs of a batch; R RoIs per image.

    Attributes:
      objectness: [B, A] float32 RPN logits of the anchors of every level (`ops.anchor_grid`
        order).
      rpn_deltas: [B, A, 4] float32.
      rois: [B, R, 4] float32 xyxy pixels the box head scored: the sampled RoIs in training,
        the proposals otherwise.
      roi_valid: [B, R] bool.
      class_logits: [B, R, K + 1] float32, column 0 background.
      box_deltas: [B, R, K + 1, 4] float32, class-specific (`rcnn.ROI_CODER`).
      anchor_samples: `rcnn.SampledAnchors` of [B, A] leaves in training, else None.
      roi_samples: `rcnn.SampledRois` of [B, R] leaves in training, else None.
    """

    objectness: jax.Array
    rpn_deltas: jax.Array
    rois: jax.Array
    roi_valid: jax.Array
    class_logits: jax.Array
    box_deltas: jax.Array
    anchor_samples: rcnn.SampledAnchors | None
    roi_samples: rcnn.SampledRois | None


class FasterRCNN(nn.Module):
    """Backbone (+ FPN), anchors, RPN head, proposals, RoI Align, box head.

    Attributes:
        num_classes: object classes K (background excluded).
        backbone: "small_cnn" | "resnet18" | "resnet34" | "resnet50".
        small_cnn_features: SmallCNN stage widths (stride 2 each).
        feature_levels: backbone maps used ("C3", ... finest first); without FPN exactly one.
        fpn: feature pyramid over `feature_levels` (+ a max-pooled extra level).
        fpn_channels: FPN width.
        norm: backbone norm: "batch" | "frozen_batch" (pretrained) | "group".
        anchor_sizes: anchor sizes in pixels, one tuple per pyramid level, every level as many
            (torchvision: 32..512, one per level).
        aspect_ratios: anchor h / w, one tuple per level (every level as many).
        rpn_fg_iou, rpn_bg_iou: anchor matching thresholds.
        rpn_batch_size_per_image, rpn_positive_fraction: anchors sampled per image.
        rpn_pre_nms_top_n_train, rpn_post_nms_top_n_train: proposals per level before NMS and
            in all after it, in training.
        rpn_pre_nms_top_n_test, rpn_post_nms_top_n_test: the same otherwise.
        rpn_nms_thresh: proposal NMS IoU.
        rpn_min_size: proposals smaller than this (pixels) are dropped.
        box_fg_iou, box_bg_iou: RoI matching thresholds.
        box_batch_size_per_image, box_positive_fraction: RoIs sampled per image.
        roi_output_size: pooled RoI size of RoI Align (the box head's input is that squared x
            channels).
        sampling_ratio: RoI Align sampling points per bin and axis.
        representation_size: box head MLP width.
        dtype: computation dtype.
    """

    num_classes: int
    backbone: str = config_field("small_cnn")
    small_cnn_features: Sequence[int] = config_field((32, 64, 128))
    feature_levels: Sequence[str] = config_field(("C3",))
    fpn: bool = config_field(False)
    fpn_channels: int = config_field(256, low=1)
    norm: str = config_field("batch")
    anchor_sizes: Sequence[Sequence[float]] = config_field(((16, 32, 64),))
    aspect_ratios: Sequence[Sequence[float]] = config_field(((0.5, 1.0, 2.0),))
    rpn_fg_iou: float = config_field(0.7, low=0, high=1)
    rpn_bg_iou: float = config_field(0.3, low=0, high=1)
    rpn_batch_size_per_image: int = config_field(256, low=1)
    rpn_positive_fraction: float = config_field(0.5, low=0, high=1)
    rpn_pre_nms_top_n_train: int = config_field(2000, low=1)
    rpn_post_nms_top_n_train: int = config_field(2000, low=1)
    rpn_pre_nms_top_n_test: int = config_field(1000, low=1)
    rpn_post_nms_top_n_test: int = config_field(1000, low=1)
    rpn_nms_thresh: float = config_field(0.7, low=0, high=1)
    rpn_min_size: float = config_field(1e-3)
    box_fg_iou: float = config_field(0.5, low=0, high=1)
    box_bg_iou: float = config_field(0.5, low=0, high=1)
    box_batch_size_per_image: int = config_field(512, low=1)
    box_positive_fraction: float = config_field(0.25, low=0, high=1)
    roi_output_size: int = config_field(7, low=1)
    sampling_ratio: int = config_field(2, low=1)
    representation_size: int = config_field(1024, low=1)
    dtype: Any = jnp.float32

    def setup(self):
        self.extractor = Backbone(
            arch=self.backbone, feature_levels=tuple(self.feature_levels),
            small_cnn_features=tuple(self.small_cnn_features), norm=self.norm,
            fpn_channels=self.fpn_channels if self.fpn else 0, body_name="body", dtype=self.dtype)
        num_anchors = len(self.anchor_sizes[0]) * len(self.aspect_ratios[0])
        self.rpn_head = RPNHead(num_anchors, dtype=self.dtype)
        self.box_head = BoxHead(self.num_classes, self.representation_size, dtype=self.dtype)

    def __call__(
        self,
        images: jax.Array,
        image_hw: jax.Array,
        train: bool = False,
        targets: DetectionTargets | None = None,
        key: jax.Array | None = None,
    ) -> FasterRCNNOutputs:
        """Scores the proposals (or, in training, RoIs sampled from them and the ground truth).

        Args:
          images: [B, H, W, 3] float in [0, 1], padded bottom/right.
          image_hw: [B, 2] int, valid height and width (proposals are clipped to them).
          train: batch statistics, the training proposal counts, and sampling of anchors and
            RoIs against `targets` with `key` (both needed then).
          targets: the ground truth (training).
          key: PRNG key of the sampling (training).

        Returns:
          FasterRCNNOutputs.
        """
        if train and (targets is None or key is None):
            raise ValueError("FasterRCNN: training needs the targets and a sampling key")
        features = self.extractor(images, train)
        objectness, rpn_deltas = self.rpn_head(features)
        feature_sizes = tuple(tuple(f.shape[1:3]) for f in features)
        sizes, ratios = tuple(map(tuple, self.anchor_sizes)), tuple(map(tuple, self.aspect_ratios))
        anchors = anchor_grid(images.shape[1:3], feature_sizes, sizes, ratios)
        level_sizes = tuple(h * w * len(s) * len(r)
                            for (h, w), s, r in zip(feature_sizes, sizes, ratios))
        anchor_samples = roi_samples = None
        if train:
            rpn_key, roi_key = jax.random.split(key)
            anchor_samples = self._sample_anchors(rpn_key, anchors, targets)
            proposals, valid = self._propose(
                objectness, rpn_deltas, anchors, level_sizes, image_hw,
                self.rpn_pre_nms_top_n_train, self.rpn_post_nms_top_n_train)
            roi_samples = self._sample_rois(roi_key, proposals, valid, targets)
            rois, roi_valid = roi_samples.boxes, roi_samples.valid
        else:
            rois, roi_valid = self._propose(
                objectness, rpn_deltas, anchors, level_sizes, image_hw,
                self.rpn_pre_nms_top_n_test, self.rpn_post_nms_top_n_test)
        class_logits, box_deltas = self.box_head(self._pool(features, rois, images.shape[1:3]))
        b, r = rois.shape[:2]
        return FasterRCNNOutputs(
            objectness, rpn_deltas, rois, roi_valid, class_logits.reshape(b, r, -1),
            box_deltas.reshape(b, r, -1, 4), anchor_samples, roi_samples)

    def _sample_anchors(self, key, anchors, targets) -> rcnn.SampledAnchors:
        """`rcnn.sample_anchors` of every image, one key each: [B, A] leaves."""
        sample = functools.partial(
            rcnn.sample_anchors, fg_iou=self.rpn_fg_iou, bg_iou=self.rpn_bg_iou,
            batch_size_per_image=self.rpn_batch_size_per_image,
            positive_fraction=self.rpn_positive_fraction)
        keys = jax.random.split(key, targets.boxes.shape[0])
        return jax.vmap(lambda k, b, v: sample(k, anchors, b, v))(keys, targets.boxes,
                                                                  targets.valid)

    def _sample_rois(self, key, proposals, proposal_valid, targets) -> rcnn.SampledRois:
        """`rcnn.sample_rois` of every image, one key each: [B, R] leaves."""
        sample = functools.partial(
            rcnn.sample_rois, fg_iou=self.box_fg_iou, bg_iou=self.box_bg_iou,
            batch_size_per_image=self.box_batch_size_per_image,
            positive_fraction=self.box_positive_fraction)
        keys = jax.random.split(key, targets.boxes.shape[0])
        return jax.vmap(sample)(keys, proposals, proposal_valid, targets.boxes, targets.labels,
                                targets.valid)

    def _propose(self, objectness, rpn_deltas, anchors, level_sizes, image_hw, pre_nms_top_n,
                 post_nms_top_n):
        """Proposals of every image (`rcnn.propose`): (boxes [B, P, 4], valid [B, P])."""
        propose = functools.partial(
            rcnn.propose, level_sizes=level_sizes, pre_nms_top_n=pre_nms_top_n,
            post_nms_top_n=post_nms_top_n, nms_thresh=self.rpn_nms_thresh,
            min_size=self.rpn_min_size)
        return jax.vmap(lambda o, d, hw: propose(o, d, anchors, image_hw=hw))(
            objectness, rpn_deltas, image_hw)

    def _pool(self, features, rois, input_hw):
        """RoI Align of rois [B, R, 4] -> [B * R, S, S, C] (over the FPN levels but the extra)."""
        rois = _with_batch_index(rois)
        if self.fpn:
            return multiscale_roi_align(features[:-1], rois, input_hw, self.roi_output_size,
                                        self.sampling_ratio)
        stride = input_hw[0] / features[0].shape[1]
        return roi_align(features[0], rois, self.roi_output_size, spatial_scale=1.0 / stride,
                         sampling_ratio=self.sampling_ratio)


def _with_batch_index(boxes: jax.Array) -> jax.Array:
    """[B, K, 4] boxes -> [B * K, 5] RoIs (batch index, x1, y1, x2, y2)."""
    b, k = boxes.shape[:2]
    index = jnp.repeat(jnp.arange(b, dtype=boxes.dtype), k)[:, None]
    return jnp.concatenate([index, boxes.reshape(b * k, 4)], axis=1)


@dataclasses.dataclass(frozen=True)
class FasterRCNNCriterion:
    """torchvision's four losses (its settings are the model's sampling fields)."""

    def __call__(
        self, outputs: FasterRCNNOutputs, targets: DetectionTargets
    ) -> tuple[tuple[jax.Array, jax.Array], dict[str, jax.Array]]:
        """Per-image losses of the samples in `outputs` (the model matched them to `targets`).

        Returns:
          ((sum over images of the four losses, number of images), each loss's mean per image:
          "rpn_objectness", "rpn_box", "classifier", "box_reg").
        """
        del targets
        rpn = jax.vmap(rcnn.rpn_loss)(outputs.objectness, outputs.rpn_deltas,
                                      outputs.anchor_samples)
        head = jax.vmap(rcnn.box_head_loss)(outputs.class_logits, outputs.box_deltas,
                                            outputs.roi_samples)
        parts = {"rpn_objectness": rpn.classification, "rpn_box": rpn.box,
                 "classifier": head.classification, "box_reg": head.box}
        total = sum(jnp.sum(v) for v in parts.values())
        metrics = {k: jnp.mean(v) for k, v in parts.items()}
        return (total, jnp.float32(outputs.objectness.shape[0])), metrics


@dataclasses.dataclass(frozen=True)
class FasterRCNNPostprocess:
    """torchvision's `RoIHeads.postprocess_detections` (see `rcnn.detect`).

    Attributes (torchvision's `FasterRCNN` arguments):
      box_score_thresh: detections need a class score above it.
      box_nms_thresh: per-class NMS IoU.
      box_detections_per_img: D, the fixed number of outputs.
    """

    box_score_thresh: float = config_field(0.05, low=0, high=1)
    box_nms_thresh: float = config_field(0.5, low=0, high=1)
    box_detections_per_img: int = config_field(100, low=1)

    def __call__(self, outputs: FasterRCNNOutputs, image_hw: jax.Array) -> dict[str, jax.Array]:
        """Detections [B, D] (see `interface`) of the proposals' class scores and boxes."""
        return jax.vmap(functools.partial(
            rcnn.detect, score_thresh=self.box_score_thresh, nms_thresh=self.box_nms_thresh,
            detections_per_img=self.box_detections_per_img,
        ))(outputs.class_logits, outputs.box_deltas, outputs.rois, outputs.roi_valid, image_hw)
