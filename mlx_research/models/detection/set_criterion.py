"""DETR's Hungarian matching and set criterion (``HungarianMatcher`` + ``SetCriterion``).

Per decoder layer: an exact Hungarian matching per image between queries and the valid targets
(``box_valid``) on ``cost_class * (-prob[target class]) + cost_bbox * L1(cxcywh) + cost_giou *
(-GIoU)``, no gradient through it; then cross-entropy over all queries with class weights
(``eos_coef`` for no-object, 1 otherwise) as a weighted mean over the batch, and ``L1`` and
``1 - GIoU`` summed over the matched pairs and divided by ``num_boxes`` (the batch's valid
targets, at least 1). Every layer is matched on its own (auxiliary losses) and the weighted
losses are summed over layers. The matching is ``mlx_research.ops.linear_sum_assignment`` (on
device, or scipy through ``pure_callback``); all layers and images go to it as one vmapped call.

`DetrCriterion` applies it to `DetrOutputs` and the pixel targets of a batch. These
normalisers are not one divisor, so it returns ``(num_images * loss, num_images)``: the
trainer's division gives DETR's loss of the batch exactly. Under data parallelism the loss sees
the whole global batch (GSPMD), so the box count is over all devices; with gradient accumulation
the result is the mean of the micro-batches' DETR losses (each normalised by its own boxes and
queries), not the loss of the concatenated batch.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from mlx_research.config_fields import config_field
from mlx_research.models.detection.detr import DetrOutputs
from mlx_research.models.detection.interface import DetectionTargets
from mlx_research.ops.boxes import box_convert, generalized_box_iou
from mlx_research.ops.matching import MATCHERS, matcher


@dataclasses.dataclass(frozen=True)
class CriterionWeights:
    """DETR's matching costs and loss weights (``--set_cost_*``, ``--*_loss_coef``).

    Attributes:
      cost_class, cost_bbox, cost_giou: matching cost weights.
      loss_ce, loss_bbox, loss_giou: loss weights.
      eos_coef: class weight of "no object" in the cross-entropy.
    """

    cost_class: float = config_field(1.0, low=0)
    cost_bbox: float = config_field(5.0, low=0)
    cost_giou: float = config_field(2.0, low=0)
    loss_ce: float = config_field(1.0, low=0)
    loss_bbox: float = config_field(5.0, low=0)
    loss_giou: float = config_field(2.0, low=0)
    eos_coef: float = config_field(0.1, low=0)


class LayerLoss(NamedTuple):
    """Per decoder layer [L]: the three losses (normalised as DETR) and two logged errors."""

    ce: jax.Array
    bbox: jax.Array
    giou: jax.Array
    class_error: jax.Array
    cardinality_error: jax.Array


def hungarian_match(cost: jax.Array, target_valid: jax.Array,
                    method: str) -> tuple[jax.Array, jax.Array]:
    """Exact min-cost matching of queries to the valid targets, per image (any leading dims).

    Args:
      cost: [..., Q, M] matching cost (no gradient flows through the result).
      target_valid: [..., M] bool.
      method: "device" | "scipy" (see ``ops.linear_sum_assignment``).

    Returns:
      (queries, targets): [..., min(Q, M)] int32 matched pairs, -1 in unused slots.
    """
    solve = matcher(method)
    fn = lambda c, v: solve(c, valid_cols=v)
    for _ in range(cost.ndim - 2):
        fn = jax.vmap(fn)
    return fn(cost, jnp.broadcast_to(target_valid, cost.shape[:-2] + target_valid.shape[-1:]))


def set_criterion(logits: jax.Array, boxes: jax.Array, target_boxes: jax.Array,
                  target_labels: jax.Array, target_valid: jax.Array, weights: CriterionWeights,
                  method: str, groups: int = 1) -> tuple[jax.Array, LayerLoss]:
    """DETR's loss with auxiliary losses: every layer matched and scored, weighted, summed.

    With ``groups = G > 1`` (Group DETR) the G * Q queries of an image are G sets of Q, each
    matched to the image's targets on its own; the result is the mean over groups of each
    group's DETR loss (every group matches as many targets, so the class-weighted mean over all
    sets and the box sums over G times the target count are exactly that mean).

    Args:
      logits: [L, B, G * Q, K + 1] class logits, the last column no-object, group-major.
      boxes: [L, B, G * Q, 4] predicted cxcywh, normalised.
      target_boxes: [B, M, 4] cxcywh normalised by the same image size; padded rows anything
        finite.
      target_labels: [B, M] int in 1..K (padded rows anything).
      target_valid: [B, M] bool; images may have no valid target (loss stays finite).
      weights: matching costs, loss weights and the no-object class weight.
      method: matcher, "device" | "scipy".
      groups: query groups G.

    Returns:
      (total, per_layer): total = sum over layers of ``loss_ce * ce + loss_bbox * bbox +
      loss_giou * giou`` (scalar); per_layer: ``LayerLoss`` of [L] arrays.
    """
    if groups > 1:  # each group is an image of its own: [L, B, G * Q] -> [L, B * G, Q]
        logits, boxes = (x.reshape(x.shape[0], -1, x.shape[2] // groups, x.shape[-1])
                         for x in (logits, boxes))
        target_boxes, target_labels, target_valid = (
            jnp.repeat(x, groups, axis=0) for x in (target_boxes, target_labels, target_valid))
    num_classes = logits.shape[-1] - 1
    classes = jnp.clip(target_labels - 1, 0, num_classes - 1)  # logit column of each target
    l1 = jnp.abs(boxes[..., :, None, :] - target_boxes[:, None, :, :]).sum(-1)  # [L, B, Q, M]
    giou = generalized_box_iou(box_convert(boxes, "cxcywh", "xyxy"),
                               box_convert(target_boxes, "cxcywh", "xyxy")[None])
    log_prob = jax.nn.log_softmax(logits, axis=-1)
    prob = jnp.exp(log_prob)
    prob_of_target = jnp.take_along_axis(
        prob, jnp.broadcast_to(classes[None, :, None, :], l1.shape), axis=-1)  # [L, B, Q, M]
    cost = (weights.cost_bbox * l1 - weights.cost_class * prob_of_target
            - weights.cost_giou * giou)
    queries, targets = hungarian_match(jax.lax.stop_gradient(cost), target_valid, method)
    matched = queries >= 0  # [L, B, P]
    q, t = jnp.maximum(queries, 0), jnp.maximum(targets, 0)

    def pairs(matrix):  # [L, B, Q, M] -> [L, B, P] at the matched pairs, 0 elsewhere
        flat = matrix.reshape(*matrix.shape[:2], -1)
        return jnp.where(matched, jnp.take_along_axis(flat, q * matrix.shape[-1] + t, -1), 0.0)

    num_boxes = jnp.maximum(target_valid.sum(), 1).astype(jnp.float32)
    bbox = pairs(l1).sum((1, 2)) / num_boxes
    giou_loss = jnp.where(matched, 1.0 - pairs(giou), 0.0).sum((1, 2)) / num_boxes

    num_layers, batch, num_queries = logits.shape[:3]
    matched_class = jnp.take_along_axis(jnp.broadcast_to(classes, t.shape[:2] + classes.shape[1:]),
                                        t, axis=-1)  # [L, B, P]
    slot = jnp.where(matched, q, num_queries)  # unmatched pairs scatter out of range: dropped
    target_class = jnp.full((num_layers, batch, num_queries), num_classes, jnp.int32)
    layer_index = jnp.arange(num_layers)[:, None, None]
    batch_index = jnp.arange(batch)[None, :, None]
    target_class = target_class.at[layer_index, batch_index, slot].set(matched_class, mode="drop")
    class_weight = jnp.where(target_class == num_classes, weights.eos_coef, 1.0)
    nll = -jnp.take_along_axis(log_prob, target_class[..., None], axis=-1)[..., 0]
    ce = (class_weight * nll).sum((1, 2)) / class_weight.sum((1, 2))

    total = (weights.loss_ce * ce + weights.loss_bbox * bbox + weights.loss_giou * giou_loss).sum()
    predicted = jnp.argmax(logits, axis=-1)  # [L, B, Q]
    correct = jnp.take_along_axis(predicted, q, -1) == matched_class
    class_error = 100.0 - 100.0 * (correct & matched).sum((1, 2)) / jnp.maximum(
        matched.sum((1, 2)), 1)
    class_error = jnp.where(matched.any((1, 2)), class_error, 100.0)
    cardinality = jnp.abs((predicted != num_classes).sum(-1) - target_valid.sum(-1)).mean(-1)
    return total, LayerLoss(ce, bbox, giou_loss, class_error, cardinality.astype(jnp.float32))


def normalized_cxcywh(boxes: jax.Array, image_hw: jax.Array) -> jax.Array:
    """[B, M, 4] xyxy pixels -> cxcywh divided by each image's valid width/height ([B, 2] hw)."""
    height, width = image_hw[:, 0].astype(jnp.float32), image_hw[:, 1].astype(jnp.float32)
    scale = jnp.stack([width, height, width, height], axis=-1)[:, None, :]
    return box_convert(boxes / scale, "xyxy", "cxcywh")


@dataclasses.dataclass(frozen=True)
class DetrCriterion:
    """`set_criterion` of `DetrOutputs` against pixel targets (see the module docstring).

    Attributes:
      weights: matching costs, loss weights and the no-object class weight.
      aux_loss: score every decoder layer (False: the last only).
      matcher: "device" (optax Hungarian in the step) | "scipy" (``pure_callback``).
      query_groups: G, the model's (Group DETR; 1 = DETR).
    """

    weights: CriterionWeights = CriterionWeights()
    aux_loss: bool = config_field(True)
    matcher: str = config_field("device", choices=MATCHERS)
    query_groups: int = 1

    def __call__(
        self, outputs: DetrOutputs, targets: DetectionTargets
    ) -> tuple[tuple[jax.Array, jax.Array], dict[str, jax.Array]]:
        """Returns ((num_images * loss, num_images), the last layer's "loss_ce", "loss_bbox",
        "loss_giou", "class_error" and "cardinality_error")."""
        logits, boxes = outputs
        if not self.aux_loss:
            logits, boxes = logits[-1:], boxes[-1:]
        total, layers = set_criterion(
            logits, boxes, normalized_cxcywh(targets.boxes, targets.image_hw), targets.labels,
            targets.valid, self.weights, self.matcher, groups=self.query_groups)
        metrics = {"loss_ce": layers.ce[-1], "loss_bbox": layers.bbox[-1],
                   "loss_giou": layers.giou[-1], "class_error": layers.class_error[-1],
                   "cardinality_error": layers.cardinality_error[-1]}  # the last layer's
        num_images = jnp.float32(targets.boxes.shape[0])
        return (total * num_images, num_images), metrics
