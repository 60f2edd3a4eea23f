"""Faster R-CNN's target assignment, losses, proposals and post-processing, per image.

Pure functions with static shapes (vmap them over the batch), following torchvision's
`RegionProposalNetwork` and `RoIHeads`: IoU matching with thresholds (and the RPN's low-quality
matches), balanced positive/negative sampling, smooth-L1 (beta 1/9) box losses and binary /
softmax classification losses, top-k + NMS proposals, score threshold + per-class NMS detections.
Ground truth is padded: `gt_boxes [G, 4]`, `gt_labels [G]` (1..C), `gt_valid [G]`; an image may have
no valid box, and every loss stays finite then.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from mlx_research.ops.box_coder import BoxCoder
from mlx_research.ops.boxes import box_iou, clip_boxes_to_image, remove_small_boxes
from mlx_research.ops.nms import batched_nms
from mlx_research.ops.sampling import balanced_sample

RPN_CODER = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
ROI_CODER = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))


def match(
    iou: jax.Array, gt_valid: jax.Array, fg_iou: float, bg_iou: float, low_quality: bool
) -> tuple[jax.Array, jax.Array]:
    """torchvision's `Matcher`: iou [N, G] -> (matched gt index [N], label [N]: 1 fg, 0 bg,
    -1 between the thresholds). With `low_quality`, every prediction whose IoU equals the best IoU
    of some ground truth box is foreground too (only for IoU > 0; torchvision also matches boxes
    that no prediction overlaps, to every prediction)."""
    iou = jnp.where(gt_valid[None, :], iou, -1.0)
    best, index = iou.max(axis=1), iou.argmax(axis=1)
    labels = jnp.where(best >= fg_iou, 1, jnp.where(best < bg_iou, 0, -1))
    if low_quality:
        gt_best = iou.max(axis=0)
        is_best = (iou == gt_best[None, :]) & gt_valid[None, :] & (gt_best[None, :] > 0)
        labels = jnp.where(is_best.any(axis=1), 1, labels)
    return index, labels.astype(jnp.int32)


def _smooth_l1(diff: jax.Array, beta: float) -> jax.Array:
    diff = jnp.abs(diff)
    return jnp.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta)


class Losses(NamedTuple):
    classification: jax.Array
    box: jax.Array


class SampledAnchors(NamedTuple):
    positive: jax.Array  # [A] sampled foreground
    negative: jax.Array  # [A] sampled background
    targets: jax.Array  # [A, 4] regression targets (RPN_CODER), 0 unless positive


def sample_anchors(
    key: jax.Array,
    anchors: jax.Array,
    gt_boxes: jax.Array,
    gt_valid: jax.Array,
    *,
    fg_iou: float,
    bg_iou: float,
    batch_size_per_image: int,
    positive_fraction: float,
) -> SampledAnchors:
    """Matches the anchors [A, 4] to the ground truth (with low-quality matches) and samples
    `batch_size_per_image` of them at `positive_fraction` foreground."""
    index, labels = match(box_iou(anchors, gt_boxes), gt_valid, fg_iou, bg_iou, low_quality=True)
    positive, negative = balanced_sample(key, labels, batch_size_per_image, positive_fraction)
    # Padding / no-box images encode to inf: keep the non-positive rows out before the loss.
    targets = jnp.where(positive[:, None], RPN_CODER.encode(gt_boxes[index], anchors), 0.0)
    return SampledAnchors(positive, negative, targets)


def rpn_loss(objectness: jax.Array, deltas: jax.Array, anchors: SampledAnchors) -> Losses:
    """objectness [A], deltas [A, 4] -> BCE and smooth-L1 (beta 1/9) sums over the sampled
    anchors, each divided by the number sampled."""
    positive, negative = anchors.positive, anchors.negative
    count = jnp.maximum((positive | negative).sum(), 1)
    box = jnp.sum(_smooth_l1(deltas - anchors.targets, 1.0 / 9).sum(-1) * positive) / count
    bce = optax.sigmoid_binary_cross_entropy(objectness, positive.astype(objectness.dtype))
    return Losses(jnp.sum(bce * (positive | negative)) / count, box)


def propose(
    objectness: jax.Array,
    deltas: jax.Array,
    anchors: jax.Array,
    level_sizes: Sequence[int],
    image_hw: jax.Array,
    *,
    pre_nms_top_n: int,
    post_nms_top_n: int,
    nms_thresh: float,
    min_size: float,
) -> tuple[jax.Array, jax.Array]:
    """Region proposals of one image: the top `pre_nms_top_n` anchors of every level by
    objectness, decoded and clipped, small boxes dropped, NMS within each level, the best
    `post_nms_top_n` overall. Returns (boxes [P, 4], valid [P]). No gradient flows into them."""
    objectness, deltas = jax.lax.stop_gradient((objectness, deltas))
    scores, boxes, levels, start = [], [], [], 0
    for level, size in enumerate(level_sizes):
        k = min(pre_nms_top_n, size)
        top, index = jax.lax.top_k(objectness[start : start + size], k)
        index = index + start
        scores.append(top)
        boxes.append(RPN_CODER.decode(deltas[index], anchors[index]))
        levels.append(jnp.full((k,), level, jnp.int32))
        start += size
    scores, boxes, levels = map(jnp.concatenate, (scores, boxes, levels))
    boxes = clip_boxes_to_image(boxes, image_hw)
    keep = remove_small_boxes(boxes, min_size)
    kept = batched_nms(boxes, jnp.where(keep, scores, -jnp.inf), levels, nms_thresh,
                       min(post_nms_top_n, boxes.shape[0]))
    return boxes[jnp.maximum(kept, 0)], kept >= 0


class SampledRois(NamedTuple):
    boxes: jax.Array  # [S, 4]
    valid: jax.Array  # [S] sampled (fg or bg)
    labels: jax.Array  # [S] 0 background, 1..C
    targets: jax.Array  # [S, 4] regression targets (ROI_CODER)


def sample_rois(
    key: jax.Array,
    proposals: jax.Array,
    proposal_valid: jax.Array,
    gt_boxes: jax.Array,
    gt_labels: jax.Array,
    gt_valid: jax.Array,
    *,
    fg_iou: float,
    bg_iou: float,
    batch_size_per_image: int,
    positive_fraction: float,
) -> SampledRois:
    """Appends the ground-truth boxes to the proposals, matches them to the ground truth and
    samples `batch_size_per_image` RoIs at `positive_fraction` foreground (static shape: the
    unsampled slots have valid=False)."""
    candidates = jnp.concatenate([proposals, gt_boxes])
    candidate_valid = jnp.concatenate([proposal_valid, gt_valid])
    index, labels = match(box_iou(candidates, gt_boxes), gt_valid, fg_iou, bg_iou, False)
    labels = jnp.where(candidate_valid, labels, -1)
    key, order_key = jax.random.split(key)
    positive, negative = balanced_sample(key, labels, batch_size_per_image, positive_fraction)
    num = min(batch_size_per_image, candidates.shape[0])
    priority = jax.random.uniform(order_key, labels.shape) + 2.0 * positive
    _, chosen = jax.lax.top_k(jnp.where(positive | negative, priority, -1.0), num)
    boxes, matched, foreground = candidates[chosen], index[chosen], positive[chosen]
    targets = ROI_CODER.encode(gt_boxes[matched], boxes)
    return SampledRois(
        boxes=boxes,
        valid=(positive | negative)[chosen],
        labels=jnp.where(foreground, gt_labels[matched], 0),
        targets=jnp.where(foreground[:, None], targets, 0.0),  # inf for padding rows otherwise
    )


def box_head_loss(
    class_logits: jax.Array, box_deltas: jax.Array, rois: SampledRois
) -> Losses:
    """class_logits [S, C+1], box_deltas [S, C+1, 4] -> cross-entropy over the sampled RoIs and
    smooth-L1 (beta 1/9) of the true class's deltas over the foreground ones, both summed and
    divided by the number sampled."""
    count = jnp.maximum(rois.valid.sum(), 1)
    ce = optax.softmax_cross_entropy_with_integer_labels(class_logits, rois.labels)
    chosen = jnp.take_along_axis(box_deltas, rois.labels[:, None, None], axis=1)[:, 0]
    box = _smooth_l1(chosen - rois.targets, 1.0 / 9).sum(-1) * (rois.valid & (rois.labels > 0))
    return Losses(jnp.sum(ce * rois.valid) / count, jnp.sum(box) / count)


def detect(
    class_logits: jax.Array,
    box_deltas: jax.Array,
    rois: jax.Array,
    roi_valid: jax.Array,
    image_hw: jax.Array,
    *,
    score_thresh: float,
    nms_thresh: float,
    detections_per_img: int,
    min_size: float = 1e-2,
) -> dict[str, jax.Array]:
    """Final detections of one image from its RoIs' class scores and class-specific boxes:
    score > `score_thresh`, small boxes dropped, NMS per class, the best `detections_per_img`.
    Returns {"boxes" [D, 4], "scores" [D], "labels" [D] (1..C), "valid" [D]}."""
    num_classes = class_logits.shape[-1] - 1
    scores = jax.nn.softmax(class_logits, axis=-1)[:, 1:]
    boxes = ROI_CODER.decode(box_deltas[:, 1:], jnp.broadcast_to(rois[:, None], (*scores.shape, 4)))
    boxes = clip_boxes_to_image(boxes, image_hw).reshape(-1, 4)
    labels = jnp.broadcast_to(jnp.arange(1, num_classes + 1), scores.shape).reshape(-1)
    scores = scores.reshape(-1)
    keep = (scores > score_thresh) & remove_small_boxes(boxes, min_size)
    keep &= jnp.repeat(roi_valid, num_classes)
    kept = batched_nms(boxes, jnp.where(keep, scores, -jnp.inf), labels, nms_thresh,
                       min(detections_per_img, scores.shape[0]))
    safe = jnp.maximum(kept, 0)
    return {"boxes": boxes[safe], "scores": jnp.where(kept >= 0, scores[safe], 0.0),
            "labels": labels[safe].astype(jnp.int32), "valid": kept >= 0}
