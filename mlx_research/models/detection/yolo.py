"""YOLO v1 (Redmon et al. 2016, "You Only Look Once"): network, targets, loss and decoding.

Detector parts (`interface`): `YOLOv1` (images -> `YoloPredictions`), `YoloCriterion` (the loss
below, summed over the images and divided by their number) and `YoloPostprocess` (`decode`).

The image is cut into an ``S x S`` grid. Every cell predicts ``B`` boxes, each ``(x, y, sqrt_w,
sqrt_h, confidence)`` with ``(x, y)`` the box centre relative to the cell (0..1 across it) and
``sqrt_w, sqrt_h`` the square roots of the box size relative to the image, and ``C`` class
probabilities conditional on an object, shared by its boxes.

Network: a `Backbone` map (ImageNet normalisation, ``SmallCNN`` or a ResNet), ``head_convs`` 3x3
conv - norm - leaky ReLU (0.1) layers, average pooling down to ``S x S`` when the map is a
multiple of it, then either a 1x1 conv per cell (``head="conv"``) or the paper's two fully
connected layers with dropout (``head="fc"``). ``output_activation="linear"`` keeps the paper's
linear outputs; ``"sigmoid"`` (a common stabilisation, the default here) puts a sigmoid on
``x, y, sqrt_w, sqrt_h, confidence`` and a softmax on the class scores, so every output lies in
its target's range; the loss is the paper's squared error either way.

Targets (`encode_targets`): an object belongs to the cell containing its box centre. The paper's
target tensor holds one object per cell; when several centres fall into one cell, the object with
the largest box area is kept (ties: the first in target order) and the others are ignored.
(Darknet's `fill_truth_region` shuffles the boxes and lets the first claim the cell: a random
one; the largest is a deterministic rule the network can learn from the image.)

Loss (`yolo_loss`, one image; sums, no normalisation): the responsible predictor of a cell with an
object is the one whose predicted box has the highest IoU with the object (ties: the lower index;
chosen from the current predictions without gradient). With ``1_ij`` = predictor ``j`` of cell
``i`` is responsible and ``1_i`` = cell ``i`` holds an object::

    lambda_coord * sum_ij 1_ij [(x - x^)^2 + (y - y^)^2 + (sqrt_w - sqrt_w^)^2
                                + (sqrt_h - sqrt_h^)^2]
  + sum_ij 1_ij (conf - target)^2 + lambda_noobj * sum_ij (1 - 1_ij) conf^2
  + sum_i 1_i sum_c (p_c - onehot_c)^2

with the confidence target the IoU of the responsible box (paper, ``conf_target="iou"``, no
gradient) or 1 (``"one"``). An image without objects has only the no-object term.

Decoding (`decode`): class-specific score ``confidence * p_c`` per box and class, a score
threshold, the ``pre_nms_top_k`` best candidates, class-wise NMS (``ops.batched_nms``), a fixed
number of detections with a valid mask; boxes in xyxy pixels of the network input, clipped to the
image's valid region.
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
from mlx_research.models.detection.interface import DetectionTargets
from mlx_research.nn.normalization import get_norm
from mlx_research.ops.boxes import box_area, box_iou, clip_boxes_to_image
from mlx_research.ops.nms import batched_nms


class YoloPredictions(NamedTuple):
    """Network outputs for a batch (drop the leading N for one image).

    Attributes:
      boxes: [N, S, S, B, 4] float32 (x, y, sqrt_w, sqrt_h): centre in the cell, sqrt size / image.
      confidence: [N, S, S, B] float32.
      class_probs: [N, S, S, C] float32, conditional on an object in the cell.
    """

    boxes: jax.Array
    confidence: jax.Array
    class_probs: jax.Array


class YoloTargets(NamedTuple):
    """Per-cell targets of one image.

    Attributes:
      has_object: [S, S] bool, the cell holds an object's centre.
      boxes: [S, S, 4] float32 (x, y, sqrt_w, sqrt_h) of the cell's object (0 without one).
      boxes_xyxy: [S, S, 4] float32, the same box in xyxy pixels.
      classes: [S, S, C] float32 one-hot class of the cell's object (0 without one).
    """

    has_object: jax.Array
    boxes: jax.Array
    boxes_xyxy: jax.Array
    classes: jax.Array


class YOLOv1(nn.Module):
    """Backbone + YOLO v1 head.

    Attributes:
      num_classes: C, object classes (background excluded).
      backbone: "small_cnn" | "resnet18" | "resnet34" | "resnet50".
      small_cnn_features: SmallCNN stage widths (stride 2 each).
      feature_level: backbone map under the head ("C4" = stride 16, ...).
      norm: backbone norm: "batch" | "frozen_batch" (pretrained) | "group".
      grid_size: S: S x S cells; the backbone map's side must equal S or be a multiple of it
        (average-pooled).
      boxes_per_cell: B: predictors per cell.
      head_convs: 3x3 conv - norm - leaky ReLU layers on the backbone map.
      head_channels: their width.
      head_norm: "batch" | "none" (the paper has no normalisation).
      head: "conv" (1x1 conv per cell) | "fc" (paper: flatten, Dense(fc_hidden), dropout, Dense).
      fc_hidden: hidden width of the "fc" head (paper: 4096).
      dropout: dropout rate of the "fc" head (paper: 0.5).
      output_activation: "sigmoid" (sigmoid on x, y, sqrt w/h and confidence, softmax on the
        classes) | "linear" (paper).
    """

    num_classes: int
    backbone: str = config_field("small_cnn")
    small_cnn_features: Sequence[int] = config_field((32, 64, 128, 256))
    feature_level: str = config_field("C4")
    norm: str = config_field("batch")
    grid_size: int = config_field(7, low=1)
    boxes_per_cell: int = config_field(2, low=1)
    head_convs: int = config_field(2, low=0)
    head_channels: int = config_field(256, low=1)
    head_norm: str = config_field("batch", choices=("batch", "none"))
    head: str = config_field("conv", choices=("conv", "fc"))
    fc_hidden: int = config_field(4096, low=1)
    dropout: float = config_field(0.5, low=0, high=1)
    output_activation: str = config_field("sigmoid", choices=("sigmoid", "linear"))
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> YoloPredictions:
        """images [N, H, W, 3] in [0, 1] -> YoloPredictions (see the class docstring)."""
        extractor = Backbone(
            arch=self.backbone, feature_levels=(self.feature_level,),
            small_cnn_features=tuple(self.small_cnn_features), norm=self.norm, body_name="body",
            dtype=self.dtype, name="extractor")
        (x,) = extractor(images, train)
        for i in range(self.head_convs):
            x = nn.Conv(self.head_channels, (3, 3), padding=1, use_bias=self.head_norm == "none",
                        dtype=self.dtype, name=f"head_conv{i + 1}")(x)
            if self.head_norm == "batch":
                x = get_norm("batch", use_running_average=not train, dtype=self.dtype,
                             name=f"head_bn{i + 1}")(x)
            x = nn.leaky_relu(x, 0.1)
        s, (n, h, w) = self.grid_size, x.shape[:3]
        if h % s or w % s:
            raise ValueError(f"YOLOv1: the {self.feature_level} map is {h}x{w}, not a multiple of "
                             f"the grid {s}x{s}")
        if h != s or w != s:
            x = nn.avg_pool(x, (h // s, w // s), strides=(h // s, w // s))
        per_cell = 5 * self.boxes_per_cell + self.num_classes
        if self.head == "conv":
            out = nn.Conv(per_cell, (1, 1), dtype=self.dtype, name="predict")(x)
        else:
            x = nn.leaky_relu(nn.Dense(self.fc_hidden, dtype=self.dtype, name="fc1")(
                x.reshape(n, -1)), 0.1)
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
            out = nn.Dense(s * s * per_cell, dtype=self.dtype, name="predict")(x)
        out = out.reshape(n, s, s, per_cell).astype(jnp.float32)
        boxes = out[..., : 5 * self.boxes_per_cell].reshape(n, s, s, self.boxes_per_cell, 5)
        scores = out[..., 5 * self.boxes_per_cell:]
        if self.output_activation == "sigmoid":
            boxes, scores = jax.nn.sigmoid(boxes), jax.nn.softmax(scores, axis=-1)
        return YoloPredictions(boxes[..., :4], boxes[..., 4], scores)


def cell_boxes_to_xyxy(boxes: jax.Array, image_hw: tuple[int, int]) -> jax.Array:
    """Grid boxes -> pixel boxes.

    Args:
      boxes: [S, S, ..., 4] (x, y, sqrt_w, sqrt_h): cell (row, col) of the grid is axes 0, 1.
      image_hw: (H, W) of the network input in pixels (static).

    Returns:
      [S, S, ..., 4] float32 xyxy pixels: centre ((col + x) W / S, (row + y) H / S), size
      (sqrt_w^2 W, sqrt_h^2 H).
    """
    s = boxes.shape[0]
    height, width = image_hw
    extra = (1,) * (boxes.ndim - 3)
    cols = jnp.arange(s, dtype=jnp.float32).reshape(1, s, *extra)
    rows = jnp.arange(s, dtype=jnp.float32).reshape(s, 1, *extra)
    cx = (cols + boxes[..., 0]) * (width / s)
    cy = (rows + boxes[..., 1]) * (height / s)
    w, h = jnp.square(boxes[..., 2]) * width, jnp.square(boxes[..., 3]) * height
    return jnp.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


def encode_targets(
    boxes: jax.Array,
    labels: jax.Array,
    valid: jax.Array,
    grid_size: int,
    num_classes: int,
    image_hw: tuple[int, int],
) -> YoloTargets:
    """The paper's target tensor of one image: one object per cell (the largest by area).

    Args:
      boxes: [M, 4] float32 xyxy pixels.
      labels: [M] int32 in 1..C.
      valid: [M] bool (False = padding or crowd).
      grid_size: S.
      num_classes: C.
      image_hw: (H, W) of the network input (static).

    Returns:
      YoloTargets with [S, S, ...] leaves.
    """
    s = grid_size
    height, width = image_hw
    boxes = boxes.astype(jnp.float32)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    col = jnp.clip(jnp.floor(cx / (width / s)), 0, s - 1).astype(jnp.int32)
    row = jnp.clip(jnp.floor(cy / (height / s)), 0, s - 1).astype(jnp.int32)
    in_cell = (jax.nn.one_hot(row * s + col, s * s, dtype=bool) & valid[:, None]).T  # [S*S, M]
    winner = jnp.argmax(jnp.where(in_cell, box_area(boxes)[None, :], -1.0), axis=1)  # first max
    has_object = in_cell.any(axis=1)
    w = jnp.maximum(boxes[:, 2] - boxes[:, 0], 0.0)
    h = jnp.maximum(boxes[:, 3] - boxes[:, 1], 0.0)
    encoded = jnp.stack([cx / (width / s) - col, cy / (height / s) - row,
                         jnp.sqrt(w / width), jnp.sqrt(h / height)], axis=1)
    keep = has_object[:, None]
    classes = jax.nn.one_hot(labels - 1, num_classes, dtype=jnp.float32)
    return YoloTargets(
        has_object=has_object.reshape(s, s),
        boxes=jnp.where(keep, encoded[winner], 0.0).reshape(s, s, 4),
        boxes_xyxy=jnp.where(keep, boxes[winner], 0.0).reshape(s, s, 4),
        classes=jnp.where(keep, classes[winner], 0.0).reshape(s, s, num_classes),
    )


def responsible_predictors(
    predictions: YoloPredictions, targets: YoloTargets, image_hw: tuple[int, int]
) -> tuple[jax.Array, jax.Array]:
    """Which predictor of each cell answers for its object, chosen without gradient.

    Args:
      predictions: one image's YoloPredictions ([S, S, ...] leaves).
      targets: its YoloTargets.
      image_hw: (H, W) of the network input (static).

    Returns:
      (responsible [S, S, B] bool: the predictor of highest IoU with the cell's object (ties: the
      lower index) in cells with an object; iou [S, S, B] float32 of every predictor).
    """
    predicted = cell_boxes_to_xyxy(jax.lax.stop_gradient(predictions.boxes), image_hw)
    iou = box_iou(predicted, targets.boxes_xyxy[:, :, None, :])[..., 0]  # [S, S, B]
    num_boxes = predicted.shape[2]
    best = jax.nn.one_hot(jnp.argmax(iou, axis=-1), num_boxes, dtype=bool)
    return best & targets.has_object[..., None], iou


def yolo_loss(
    predictions: YoloPredictions,
    targets: YoloTargets,
    image_hw: tuple[int, int],
    lambda_coord: float,
    lambda_noobj: float,
    conf_target: str,
) -> dict[str, jax.Array]:
    """The YOLO v1 sum-squared-error loss of one image, by term (see the module docstring).

    Args:
      predictions: one image's YoloPredictions ([S, S, ...] leaves).
      targets: its YoloTargets (`encode_targets`).
      image_hw: (H, W) of the network input (static).
      lambda_coord: weight of the coordinate terms.
      lambda_noobj: weight of the confidence of non-responsible predictors.
      conf_target: "iou" (paper: IoU of the responsible box, no gradient) | "one".

    Returns:
      {"coord", "conf_obj", "conf_noobj", "class"}: [] float32 sums (weights applied); the loss is
      their sum.
    """
    responsible, iou = responsible_predictors(predictions, targets, image_hw)
    resp = responsible.astype(jnp.float32)
    coord = jnp.sum(resp[..., None] * jnp.square(predictions.boxes - targets.boxes[:, :, None]))
    target = iou if conf_target == "iou" else jnp.ones_like(iou)  # iou: no gradient
    conf = predictions.confidence
    cls_error = jnp.square(predictions.class_probs - targets.classes)
    return {
        "coord": lambda_coord * coord,
        "conf_obj": jnp.sum(resp * jnp.square(conf - target)),
        "conf_noobj": lambda_noobj * jnp.sum((1.0 - resp) * jnp.square(conf)),
        "class": jnp.sum(targets.has_object[..., None] * cls_error),
    }


def decode(
    predictions: YoloPredictions,
    image_hw: jax.Array,
    input_hw: tuple[int, int],
    *,
    score_thresh: float,
    nms_thresh: float,
    pre_nms_top_k: int,
    detections_per_img: int,
) -> dict[str, jax.Array]:
    """Detections of one image.

    Args:
      predictions: one image's YoloPredictions ([S, S, ...] leaves).
      image_hw: [2] int, (h, w) of the image's valid (unpadded) region; boxes are clipped to it.
      input_hw: (H, W) of the network input (static).
      score_thresh: candidates need a class-specific score above it.
      nms_thresh: IoU above which class-wise NMS drops the lower-scoring box.
      pre_nms_top_k: the best candidates kept for NMS (static).
      detections_per_img: D, the fixed number of outputs (static).

    Returns:
      {"boxes" [D, 4] float32 xyxy pixels, "scores" [D], "labels" [D] int32 (1..C), "valid" [D]},
      in decreasing score order, padding rows (valid False) with score 0.
    """
    s, _, num_boxes, _ = predictions.boxes.shape
    num_classes = predictions.class_probs.shape[-1]
    boxes = clip_boxes_to_image(cell_boxes_to_xyxy(predictions.boxes, input_hw), image_hw)
    boxes = jnp.repeat(boxes.reshape(-1, 4), num_classes, axis=0)  # [S*S*B*C, 4]
    scores = predictions.confidence[..., None] * predictions.class_probs[:, :, None, :]
    scores = scores.reshape(-1)  # [S*S*B*C], class fastest
    labels = jnp.tile(jnp.arange(1, num_classes + 1, dtype=jnp.int32), s * s * num_boxes)
    keep = (scores > score_thresh) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    k = min(pre_nms_top_k, scores.shape[0])
    top_scores, top = jax.lax.top_k(jnp.where(keep, scores, -jnp.inf), k)
    kept = batched_nms(boxes[top], top_scores, labels[top], nms_thresh, min(detections_per_img, k),
                       valid=keep[top])
    index = top[jnp.maximum(kept, 0)]
    found = kept >= 0
    pad = detections_per_img - kept.shape[0]
    out = {"boxes": jnp.where(found[:, None], boxes[index], 0.0),
           "scores": jnp.where(found, scores[index], 0.0),
           "labels": jnp.where(found, labels[index], 0), "valid": found}
    return {key: jnp.pad(v, [(0, pad)] + [(0, 0)] * (v.ndim - 1)) for key, v in out.items()}


@dataclasses.dataclass(frozen=True)
class YoloCriterion:
    """`yolo_loss` of every image against its `encode_targets`, summed over the images and
    normalised by their number.

    Attributes:
      input_hw: (H, W) of the network input in pixels.
      lambda_coord: weight of the coordinate terms (paper: 5).
      lambda_noobj: weight of the confidence of non-responsible predictors (paper: 0.5).
      conf_target: confidence target of the responsible box: "iou" (paper) | "one".
    """

    input_hw: tuple[int, int]
    lambda_coord: float = config_field(5.0, low=0)
    lambda_noobj: float = config_field(0.5, low=0)
    conf_target: str = config_field("iou", choices=("iou", "one"))

    def __call__(
        self, outputs: YoloPredictions, targets: DetectionTargets
    ) -> tuple[tuple[jax.Array, jax.Array], dict[str, jax.Array]]:
        """Returns ((sum of the terms over images, number of images), each term's mean per
        image: "coord", "conf_obj", "conf_noobj", "class")."""
        num_images, grid_size = outputs.boxes.shape[:2]
        encode = functools.partial(encode_targets, grid_size=grid_size,
                                   num_classes=outputs.class_probs.shape[-1],
                                   image_hw=self.input_hw)
        cells = jax.vmap(encode)(targets.boxes, targets.labels, targets.valid)
        terms = jax.vmap(functools.partial(
            yolo_loss, image_hw=self.input_hw, lambda_coord=self.lambda_coord,
            lambda_noobj=self.lambda_noobj, conf_target=self.conf_target))(outputs, cells)
        total = sum(jnp.sum(v) for v in terms.values())
        metrics = {k: jnp.mean(v) for k, v in terms.items()}
        return (total, jnp.float32(num_images)), metrics


@dataclasses.dataclass(frozen=True)
class YoloPostprocess:
    """`decode` of every image.

    Attributes:
      input_hw: (H, W) of the network input in pixels.
      score_thresh: candidates need a class-specific score conf * p(class) above it.
      nms_thresh: class-wise NMS IoU.
      pre_nms_top_k: the best candidates (box x class) entering NMS.
      detections_per_img: D, the fixed number of detections (valid mask).
    """

    input_hw: tuple[int, int]
    score_thresh: float = config_field(0.01, low=0, high=1)
    nms_thresh: float = config_field(0.5, low=0, high=1)
    pre_nms_top_k: int = config_field(1000, low=1)
    detections_per_img: int = config_field(100, low=1)

    def __call__(self, outputs: YoloPredictions, image_hw: jax.Array) -> dict[str, jax.Array]:
        """Detections [B, D] (see `interface`), clipped to each image's valid region."""
        return jax.vmap(functools.partial(
            decode, input_hw=self.input_hw, score_thresh=self.score_thresh,
            nms_thresh=self.nms_thresh, pre_nms_top_k=self.pre_nms_top_k,
            detections_per_img=self.detections_per_img,
        ))(outputs, image_hw)
