"""Axis-aligned box formats, areas, IoU and GIoU with ``torchvision.ops`` semantics.

Formats: ``"xyxy"`` (corners x1, y1, x2, y2), ``"xywh"`` (top-left corner, width, height) and
``"cxcywh"`` (centre, width, height). Every function takes boxes ``[..., 4]`` with any leading
batch dimensions; pairwise functions broadcast those leading dimensions.

Differences from torchvision, all forced by static shapes or finiteness:

- Two zero-area boxes have union 0, where torchvision's ``box_iou`` and ``generalized_box_iou``
  return NaN. Here their IoU is 0, and their GIoU is ``0 - (C - 0) / C = -1`` when the enclosing
  box has an area ``C > 0`` (e.g. two disjoint points), 0 when ``C == 0`` (e.g. the same point).
  Gradients stay finite too (each division is guarded on both ``where`` branches).
- ``remove_small_boxes`` returns a keep mask ``[...]`` bool instead of the kept indices.
- ``clip_boxes_to_image`` also accepts a traced ``size`` (e.g. a per-example ``image_hw`` under
  ``vmap``).

Everything else (no clamping of inverted boxes in ``box_area``, ``>=`` in
``remove_small_boxes``, IoU in the input float dtype) is torchvision's.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

Array = jax.Array
BOX_FORMATS = ("xyxy", "xywh", "cxcywh")


def _check_fmt(fmt: str, what: str) -> None:
    if fmt not in BOX_FORMATS:
        raise ValueError(f"{what}: unsupported box format {fmt!r}; expected one of {BOX_FORMATS}")


def _to_xyxy(boxes: Array, in_fmt: str) -> Array:
    if in_fmt == "xyxy":
        return boxes
    a, b, c, d = jnp.unstack(boxes, axis=-1)
    if in_fmt == "xywh":
        return jnp.stack([a, b, a + c, b + d], axis=-1)
    # cxcywh
    return jnp.stack([a - 0.5 * c, b - 0.5 * d, a + 0.5 * c, b + 0.5 * d], axis=-1)


def _from_xyxy(boxes: Array, out_fmt: str) -> Array:
    if out_fmt == "xyxy":
        return boxes
    x1, y1, x2, y2 = jnp.unstack(boxes, axis=-1)
    if out_fmt == "xywh":
        return jnp.stack([x1, y1, x2 - x1, y2 - y1], axis=-1)
    # cxcywh
    return jnp.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], axis=-1)


def box_convert(boxes: ArrayLike, in_fmt: str, out_fmt: str) -> Array:
    """Converts boxes between ``"xyxy"``, ``"xywh"`` and ``"cxcywh"`` (torchvision ``box_convert``).

    Conversions between the two non-xyxy formats go through xyxy, as in torchvision.

    Args:
      boxes: [..., 4] boxes in ``in_fmt``.
      in_fmt: format of ``boxes``.
      out_fmt: format of the result.

    Returns:
      [..., 4] boxes in ``out_fmt``, same dtype.

    Raises:
      ValueError: for a format other than the three above (rotated formats are not supported).
    """
    _check_fmt(in_fmt, "box_convert in_fmt")
    _check_fmt(out_fmt, "box_convert out_fmt")
    boxes = jnp.asarray(boxes)
    if in_fmt == out_fmt:
        return boxes
    return _from_xyxy(_to_xyxy(boxes, in_fmt), out_fmt)


def box_area(boxes: ArrayLike, fmt: str = "xyxy") -> Array:
    """Area of each box (torchvision ``box_area``): ``(x2 - x1) * (y2 - y1)`` or ``w * h``.

    Like torchvision, an inverted box (``x2 < x1``) is not clamped: its area can be negative.

    Args:
      boxes: [..., 4] boxes in ``fmt``.
      fmt: ``"xyxy"``, ``"xywh"`` or ``"cxcywh"``.

    Returns:
      [...] areas, the dtype of ``boxes``.
    """
    _check_fmt(fmt, "box_area")
    boxes = jnp.asarray(boxes)
    if fmt == "xyxy":
        return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    return boxes[..., 2] * boxes[..., 3]


def _safe_div(num: Array, den: Array) -> Array:
    """``num / den``, and 0 where ``den == 0`` (finite value and gradient)."""
    zero = den == 0
    return jnp.where(zero, jnp.zeros_like(num), num / jnp.where(zero, jnp.ones_like(den), den))


def _box_inter_union(boxes1: Array, boxes2: Array) -> tuple[Array, Array]:
    """Pairwise intersection and union areas of xyxy boxes: ([..., N, M], [..., N, M])."""
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    lt = jnp.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])  # [..., N, M, 2]
    rb = jnp.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    wh = jnp.maximum(rb - lt, 0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[..., :, None] + area2[..., None, :] - inter
    return inter, union


def _as_float_xyxy(boxes: ArrayLike, fmt: str) -> Array:
    boxes = jnp.asarray(boxes)
    if not jnp.issubdtype(boxes.dtype, jnp.floating):
        boxes = boxes.astype(jnp.float32)
    return _to_xyxy(boxes, fmt)


def box_iou(boxes1: ArrayLike, boxes2: ArrayLike, fmt: str = "xyxy") -> Array:
    """Pairwise intersection over union (torchvision ``box_iou``), 0 where the union is 0.

    Args:
      boxes1: [..., N, 4] boxes in ``fmt``.
      boxes2: [..., M, 4] boxes in ``fmt``; leading dims broadcast with ``boxes1``'s.
      fmt: ``"xyxy"``, ``"xywh"`` or ``"cxcywh"``.

    Returns:
      [..., N, M] float IoU. Two zero-area boxes (union 0) give 0, not torchvision's NaN.
    """
    _check_fmt(fmt, "box_iou")
    inter, union = _box_inter_union(_as_float_xyxy(boxes1, fmt), _as_float_xyxy(boxes2, fmt))
    return _safe_div(inter, union)


def generalized_box_iou(boxes1: ArrayLike, boxes2: ArrayLike) -> Array:
    """Pairwise generalized IoU of xyxy boxes (torchvision ``generalized_box_iou``, DETR).

    ``GIoU = IoU - (C - U) / C`` with ``U`` the union and ``C`` the area of the smallest box
    enclosing both; values lie in [-1, 1] for well-formed boxes.

    Args:
      boxes1: [..., N, 4] float, xyxy.
      boxes2: [..., M, 4] float, xyxy; leading dims broadcast with ``boxes1``'s.

    Returns:
      [..., N, M] float GIoU. Where ``U == 0`` (torchvision: NaN) the IoU term is 0, and where
      ``C == 0`` the enclosing term is 0: two zero-area boxes give -1, or 0 if they lie on a
      common line or point. Finite gradients everywhere.
    """
    boxes1 = _as_float_xyxy(boxes1, "xyxy")
    boxes2 = _as_float_xyxy(boxes2, "xyxy")
    inter, union = _box_inter_union(boxes1, boxes2)
    iou = _safe_div(inter, union)
    lt = jnp.minimum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    rb = jnp.maximum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    wh = jnp.maximum(rb - lt, 0)
    enclosing = wh[..., 0] * wh[..., 1]
    return iou - _safe_div(enclosing - union, enclosing)


def clip_boxes_to_image(boxes: ArrayLike, size: Sequence[int] | ArrayLike) -> Array:
    """Clips xyxy boxes to ``[0, width] x [0, height]`` (torchvision ``clip_boxes_to_image``).

    Args:
      boxes: [..., 4] xyxy.
      size: ``(height, width)`` of the image: Python numbers or a (possibly traced) [2] array,
        e.g. the transform's ``image_hw``.

    Returns:
      [..., 4] clipped boxes, dtype of ``boxes``.
    """
    boxes = jnp.asarray(boxes)
    height = jnp.asarray(size[0]).astype(boxes.dtype)
    width = jnp.asarray(size[1]).astype(boxes.dtype)
    x1, y1, x2, y2 = jnp.unstack(boxes, axis=-1)
    zero = jnp.zeros((), boxes.dtype)
    return jnp.stack(
        [jnp.clip(x1, zero, width), jnp.clip(y1, zero, height),
         jnp.clip(x2, zero, width), jnp.clip(y2, zero, height)],
        axis=-1,
    )


def remove_small_boxes(boxes: ArrayLike, min_size: float) -> Array:
    """Keep mask of boxes whose width and height are both ``>= min_size``.

    torchvision's ``remove_small_boxes`` returns the indices ``where(keep)``; under static shapes
    the mask itself is returned (``jnp.nonzero(mask, size=...)`` recovers indices if needed).

    Args:
      boxes: [..., 4] xyxy.
      min_size: minimum side length.

    Returns:
      [...] bool, True = keep.
    """
    boxes = jnp.asarray(boxes)
    ws = boxes[..., 2] - boxes[..., 0]
    hs = boxes[..., 3] - boxes[..., 1]
    return (ws >= min_size) & (hs >= min_size)
