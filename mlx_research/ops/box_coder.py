"""Faster R-CNN box regression coder (torchvision ``detection._utils.BoxCoder``).

A box ``g`` is encoded relative to a reference box ``p`` (an anchor or proposal) as

    dx = wx * (gx - px) / pw      dy = wy * (gy - py) / ph
    dw = ww * log(gw / pw)        dh = wh * log(gh / ph)

with widths ``x2 - x1`` (no +1) and centres ``x1 + 0.5 * w``. Decoding inverts this after
clamping ``dw, dh`` (divided by their weights) at ``bbox_xform_clip`` from above. The arithmetic
follows torchvision's operation order, so float32 results agree to the last bit or two.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

Array = jax.Array


def _size_center(boxes: Array) -> tuple[Array, Array, Array, Array]:
    widths = boxes[..., 2] - boxes[..., 0]
    heights = boxes[..., 3] - boxes[..., 1]
    return widths, heights, boxes[..., 0] + 0.5 * widths, boxes[..., 1] + 0.5 * heights


@dataclasses.dataclass(frozen=True)
class BoxCoder:
    """Encodes boxes as (dx, dy, dw, dh) offsets from reference boxes and decodes them back.

    Attributes:
      weights: ``(wx, wy, ww, wh)`` multipliers of the four targets; torchvision uses
        (1, 1, 1, 1) in the RPN and (10, 10, 5, 5) in the RoI heads.
      bbox_xform_clip: upper clamp of ``dw / ww`` and ``dh / wh`` before ``exp`` in ``decode``
        (default ``log(1000 / 16)``, torchvision's).

    Both methods broadcast their two arguments' leading dimensions. Class-specific regression
    ``[N, C * 4]`` decodes as ``coder.decode(codes.reshape(N, C, 4), boxes[:, None, :])``
    (torchvision's ``decode_single`` on ``[N, C * 4]`` gives the same numbers, flattened).
    """

    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    bbox_xform_clip: float = math.log(1000.0 / 16)

    def encode(self, reference_boxes: ArrayLike, proposals: ArrayLike) -> Array:
        """Regression targets of ``reference_boxes`` relative to ``proposals`` (``encode_single``).

        Note the argument order (torchvision's): the boxes to encode come first, the anchors or
        proposals they are encoded against second.

        Args:
          reference_boxes: [..., 4] float, xyxy: the target (ground-truth) boxes.
          proposals: [..., 4] float, xyxy: anchors / proposals, broadcast with
            ``reference_boxes``.

        Returns:
          [..., 4] (dx, dy, dw, dh), dtype of ``reference_boxes``. As in torchvision, a
          zero-width/height proposal gives inf/NaN and a zero-width/height target box gives
          ``dw``/``dh = -inf``: padding rows must be selected away with ``jnp.where`` (not
          multiplied by a 0 mask), or replaced by a valid box before encoding.
        """
        reference_boxes = jnp.asarray(reference_boxes)
        dtype = reference_boxes.dtype
        proposals = jnp.asarray(proposals).astype(dtype)
        wx, wy, ww, wh = (jnp.asarray(w, dtype) for w in self.weights)
        ex_w, ex_h, ex_cx, ex_cy = _size_center(proposals)
        gt_w, gt_h, gt_cx, gt_cy = _size_center(reference_boxes)
        dx = wx * (gt_cx - ex_cx) / ex_w
        dy = wy * (gt_cy - ex_cy) / ex_h
        dw = ww * jnp.log(gt_w / ex_w)
        dh = wh * jnp.log(gt_h / ex_h)
        return jnp.stack([dx, dy, dw, dh], axis=-1)

    def decode(self, rel_codes: ArrayLike, boxes: ArrayLike) -> Array:
        """Boxes obtained by applying ``rel_codes`` to ``boxes`` (``decode_single``).

        Args:
          rel_codes: [..., 4] float (dx, dy, dw, dh) regression outputs.
          boxes: [..., 4] xyxy reference boxes (anchors / proposals), broadcast with
            ``rel_codes``; cast to ``rel_codes``' dtype.

        Returns:
          [..., 4] decoded xyxy boxes (not clipped to the image). ``dw`` and ``dh`` are clamped
          at ``bbox_xform_clip`` from above, so a huge code decodes to at most
          ``exp(bbox_xform_clip)`` times the reference size.
        """
        rel_codes = jnp.asarray(rel_codes)
        boxes = jnp.asarray(boxes).astype(rel_codes.dtype)
        widths, heights, ctr_x, ctr_y = _size_center(boxes)
        wx, wy, ww, wh = self.weights
        dx = rel_codes[..., 0] / wx
        dy = rel_codes[..., 1] / wy
        dw = jnp.minimum(rel_codes[..., 2] / ww, self.bbox_xform_clip)
        dh = jnp.minimum(rel_codes[..., 3] / wh, self.bbox_xform_clip)
        pred_ctr_x = dx * widths + ctr_x
        pred_ctr_y = dy * heights + ctr_y
        half_w = 0.5 * (jnp.exp(dw) * widths)
        half_h = 0.5 * (jnp.exp(dh) * heights)
        return jnp.stack(
            [pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h],
            axis=-1,
        )
