"""Non-maximum suppression with ``torchvision.ops.nms`` / ``batched_nms`` semantics, static shapes.

Greedy NMS: boxes are visited in decreasing score order and a box is kept iff no already kept
box overlaps it with IoU > ``iou_threshold`` (strictly greater). The result is the kept indices
in that order, padded with -1 to ``max_output_size``.

Algorithm (written by hand: no kept library has a static-shape NMS). Sort by score, cut the
sorted boxes into tiles of ``tile_size``, and run a ``lax.while_loop`` over the tiles that stops
once ``max_output_size`` boxes are kept or only invalid boxes remain. For each tile:

1. suppress its boxes by the boxes kept so far: a buffer holds the kept boxes in order and is
   scanned one ``[tile_size, tile_size]`` IoU block at a time up to the kept count (only the
   first ``max_output_size`` kept boxes can matter for the output, so the buffer holds no more);
2. greedy suppression inside the tile as the fixed point of ``keep_j = cand_j and not any_i<j
   (keep_i and IoU_ij > t)``, iterated from ``keep = cand`` (an inner ``while_loop``; the fixed
   point is unique and the iteration reaches it in at most (longest suppression chain + 1)
   steps, typically 2-4);
3. append the tile's kept boxes to the buffer.

Cost: O(N log N) sort + O(N * kept) IoU work for step 1 (kept <= ``max_output_size``) +
O(N * tile_size * iterations) for step 2; memory O(tile_size^2 + max_output_size). No Python
loop over boxes; ``jit``/``vmap``-safe (under ``vmap`` the loops run until every image is done).
``benchmarks/speed/ops_throughput.py`` measures it against torchvision.

Agreement with torchvision (CPU kernel ``nms_kernel.cpp``):

- The IoU is the kernel's float32 formula ``inter / (area_i + area_j - inter)`` with unclamped
  areas ``(x2 - x1) * (y2 - y1)``; a 0/0 IoU (two zero-area boxes) is NaN and never suppresses.
- The kernel compares the float32 IoU with the threshold as a double; a Python-number
  ``iou_threshold`` is therefore rounded *down* to float32 here, which gives the same decisions
  for every float32 IoU (``0.3`` is not float32-exact: an IoU equal to ``float32(0.3)`` is
  suppressed by torchvision and here). A traced threshold is rounded to nearest instead.
- Ties in score: equal scores are visited in index order (a stable sort), as the kernel does
  (checked with torch 2.14.1 / torchvision 0.29.1 up to N = 20000, although a plain
  ``torch.sort(descending=True)`` is not stable beyond 16 elements). torchvision's
  ``batched_nms`` for N > 1000 on CPU merges its per-class results with such an unstable sort,
  so there tied boxes can come out in another order than here.
- Deliberate differences: boxes with ``valid=False``, a NaN score or a score of -inf are never
  kept (torchvision keeps -inf scores and sorts NaN first); the output is padded to a static
  ``max_output_size`` with -1 and int32.

``batched_nms`` suppresses only between boxes with equal ``idxs``, by masking the IoU blocks
with a class-equality test. That is the result torchvision's ``batched_nms`` defines (per-class
NMS, merged in decreasing score order) and what both its code paths compute: the
coordinate-offset trick (``boxes + idxs * (max_coordinate + 1)``, used on CPU for N <= 1000) and
the per-class loop. The mask is exact where the trick is not: offset float32 coordinates lose
precision (IoU changes in the last bits) and negative coordinates can make classes overlap.
"""

from __future__ import annotations

import functools
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

Array = jax.Array

__all__ = ["nms", "batched_nms"]


def _threshold_f32(iou_threshold: ArrayLike) -> Array:
    """The float32 ``t`` with ``iou > t`` (float32) == ``iou > iou_threshold`` (double)."""
    if isinstance(iou_threshold, numbers.Real) and not isinstance(iou_threshold, bool):
        value = float(iou_threshold)
        t32 = np.float32(value)
        if math.isfinite(value) and float(t32) > value:
            t32 = np.nextafter(t32, np.float32(-np.inf))
        return jnp.asarray(t32, jnp.float32)
    return jnp.asarray(iou_threshold, jnp.float32)


def _overlaps(a: Array, area_a: Array, b: Array, area_b: Array, threshold: Array) -> Array:
    """``IoU(a_i, b_j) > threshold`` with the torchvision kernel's float32 arithmetic.

    Args:
      a: [M, 4] float32, xyxy, the higher-scoring boxes (their area comes first in the union).
      area_a: [M] float32, ``(x2 - x1) * (y2 - y1)`` of ``a``.
      b: [T, 4] float32, xyxy.
      area_b: [T] float32.
      threshold: [] float32.

    Returns:
      [M, T] bool.
    """
    xx1 = jnp.maximum(a[:, None, 0], b[None, :, 0])
    yy1 = jnp.maximum(a[:, None, 1], b[None, :, 1])
    xx2 = jnp.minimum(a[:, None, 2], b[None, :, 2])
    yy2 = jnp.minimum(a[:, None, 3], b[None, :, 3])
    inter = jnp.maximum(0.0, xx2 - xx1) * jnp.maximum(0.0, yy2 - yy1)
    iou = inter / (area_a[:, None] + area_b[None, :] - inter)
    return iou > threshold  # NaN (0/0) compares False: never suppresses, as in torchvision.


@functools.partial(jax.jit, static_argnames=("max_output_size", "tile_size"))
def _greedy_nms(
    boxes: Array,
    scores: Array,
    groups: Array | None,
    valid: Array | None,
    threshold: Array,
    max_output_size: int,
    tile_size: int,
) -> Array:
    boxes = boxes.astype(jnp.float32)
    scores = scores.astype(jnp.float32)
    ok = ~jnp.isnan(scores) & (scores > -jnp.inf)
    valid = ok if valid is None else ok & valid.astype(bool)
    n = boxes.shape[0]
    m = max_output_size
    if n == 0 or m == 0:
        return jnp.full((m,), -1, jnp.int32)
    tile = max(1, min(tile_size, n))
    num_tiles = -(-n // tile)
    padded = num_tiles * tile

    # Stable sort by score, descending (ties, -0.0 == 0.0 included, by index); invalid boxes last.
    key = jnp.where(valid, -scores, jnp.inf)
    _, order = lax.sort((key, jnp.arange(n, dtype=jnp.int32)), num_keys=2)
    num_valid = jnp.sum(valid.astype(jnp.int32))

    def pad(x: Array, value) -> Array:
        return jnp.pad(x, [(0, padded - n)] + [(0, 0)] * (x.ndim - 1), constant_values=value)

    s_boxes = pad(boxes[order], 0.0)
    s_area = (s_boxes[:, 2] - s_boxes[:, 0]) * (s_boxes[:, 3] - s_boxes[:, 1])
    s_valid = pad(valid[order], False)
    s_index = pad(order, -1)
    s_group = pad(groups[order], 0) if groups is not None else None

    lower = jnp.arange(tile)[:, None] < jnp.arange(tile)[None, :]  # i before j within a tile
    buffer = -(-m // tile) * tile  # the kept-box buffer, whole tiles

    def cond(state):
        t, count = state[0], state[1]
        return (t < num_tiles) & (count < m) & (t * tile < num_valid)

    def body(state):
        t, count, kept_boxes, kept_area, kept_group, kept_index = state
        start = t * tile
        b = lax.dynamic_slice_in_dim(s_boxes, start, tile)
        area = lax.dynamic_slice_in_dim(s_area, start, tile)
        cand = lax.dynamic_slice_in_dim(s_valid, start, tile)
        index = lax.dynamic_slice_in_dim(s_index, start, tile)
        g = lax.dynamic_slice_in_dim(s_group, start, tile) if s_group is not None else None

        # 1. Suppression by the boxes kept in earlier tiles, one buffer tile at a time up to count.
        def suppress_by_kept(c, cand):
            k0 = c * tile
            kb = lax.dynamic_slice_in_dim(kept_boxes, k0, tile)
            ka = lax.dynamic_slice_in_dim(kept_area, k0, tile)
            hit = _overlaps(kb, ka, b, area, threshold)
            hit &= (k0 + jnp.arange(tile) < count)[:, None]
            if g is not None:
                hit &= lax.dynamic_slice_in_dim(kept_group, k0, tile)[:, None] == g[None, :]
            return cand & ~jnp.any(hit, axis=0)

        cand = lax.fori_loop(0, -(-count // tile), suppress_by_kept, cand)

        # 2. Greedy suppression inside the tile (fixed point of the sorted suppression rule).
        sup = _overlaps(b, area, b, area, threshold) & lower
        if g is not None:
            sup &= g[:, None] == g[None, :]

        def step(keep: Array) -> Array:
            return cand & ~jnp.any(keep[:, None] & sup, axis=0)

        def not_converged(carry):
            keep, prev, it = carry
            return jnp.any(keep != prev) & (it <= tile)  # converges in <= tile + 1 steps

        def iterate(carry):
            keep, _, it = carry
            return step(keep), keep, it + 1

        keep, _, _ = lax.while_loop(not_converged, iterate, (step(cand), cand, 1))

        # 3. Append the kept boxes, in order, to the buffer (writes past the end are dropped).
        pos = jnp.where(keep, count + jnp.cumsum(keep) - 1, buffer)
        kept_boxes = kept_boxes.at[pos].set(b, mode="drop")
        kept_area = kept_area.at[pos].set(area, mode="drop")
        if g is not None:
            kept_group = kept_group.at[pos].set(g, mode="drop")
        kept_index = kept_index.at[pos].set(index, mode="drop")
        count = jnp.minimum(count + jnp.sum(keep.astype(jnp.int32)), m)
        return t + 1, count, kept_boxes, kept_area, kept_group, kept_index

    state = (
        jnp.asarray(0, jnp.int32),
        jnp.asarray(0, jnp.int32),
        jnp.zeros((buffer, 4), boxes.dtype),
        jnp.zeros((buffer,), boxes.dtype),
        jnp.zeros((buffer,), groups.dtype if groups is not None else jnp.int32),
        jnp.full((buffer,), -1, jnp.int32),
    )
    return lax.while_loop(cond, body, state)[-1][:m]


def _check(boxes: Array, scores: Array, valid: Array | None, name: str) -> None:
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{name}: boxes must be [N, 4], got shape {boxes.shape}")
    if scores.shape != boxes.shape[:1]:
        raise ValueError(f"{name}: scores must be [N] = {boxes.shape[:1]}, got {scores.shape}")
    if valid is not None and valid.shape != scores.shape:
        raise ValueError(f"{name}: valid must be [N] = {scores.shape}, got {valid.shape}")


def _output_size(max_output_size: int | None, n: int, name: str) -> int:
    if max_output_size is None:
        return n
    if int(max_output_size) != max_output_size or max_output_size < 0:
        raise ValueError(
            f"{name}: max_output_size must be a static int >= 0, got {max_output_size!r}")
    return int(max_output_size)


def nms(
    boxes: ArrayLike,
    scores: ArrayLike,
    iou_threshold: float | ArrayLike,
    max_output_size: int | None = None,
    *,
    valid: ArrayLike | None = None,
    tile_size: int = 256,
) -> Array:
    """Greedy non-maximum suppression, as ``torchvision.ops.nms``, with a static output size.

    Args:
      boxes: [N, 4] float32, xyxy in pixels.
      scores: [N] float32.
      iou_threshold: boxes overlapping a kept higher-scoring box with IoU > this are dropped.
        Python float (exact torchvision agreement, see the module docstring) or a traced scalar.
      max_output_size: static int, length of the output; ``None`` -> N (everything kept).
      valid: optional [N] bool; False marks padding. Invalid, NaN-score and -inf-score boxes are
        never kept and never suppress anything.
      tile_size: static int, boxes per suppression tile (a speed knob; results do not depend on it).

    Returns:
      [max_output_size] int32: indices into ``boxes`` of the kept boxes in decreasing score order
      (ties: lower index first), then -1 padding. The first ``max_output_size`` entries of
      torchvision's result.
    """
    boxes, scores = jnp.asarray(boxes), jnp.asarray(scores)
    valid = None if valid is None else jnp.asarray(valid)
    _check(boxes, scores, valid, "nms")
    m = _output_size(max_output_size, boxes.shape[0], "nms")
    threshold = _threshold_f32(iou_threshold)
    return _greedy_nms(boxes, scores, None, valid, threshold, max_output_size=m,
                       tile_size=tile_size)


def batched_nms(
    boxes: ArrayLike,
    scores: ArrayLike,
    idxs: ArrayLike,
    iou_threshold: float | ArrayLike,
    max_output_size: int | None = None,
    *,
    valid: ArrayLike | None = None,
    tile_size: int = 256,
) -> Array:
    """Class-aware NMS, as ``torchvision.ops.batched_nms``: boxes only suppress equal ``idxs``.

    Args:
      boxes: [N, 4] float32, xyxy in pixels.
      scores: [N] float32.
      idxs: [N] int, the category (or image) of each box.
      iou_threshold: as in :func:`nms`.
      max_output_size: static int, length of the output; ``None`` -> N.
      valid: optional [N] bool padding mask, as in :func:`nms`.
      tile_size: static int, as in :func:`nms`.

    Returns:
      [max_output_size] int32: kept indices over all classes in decreasing score order (ties:
      lower index first), -1 padded.
    """
    boxes, scores, idxs = jnp.asarray(boxes), jnp.asarray(scores), jnp.asarray(idxs)
    valid = None if valid is None else jnp.asarray(valid)
    _check(boxes, scores, valid, "batched_nms")
    if idxs.shape != scores.shape:
        raise ValueError(f"batched_nms: idxs must be [N] = {scores.shape}, got {idxs.shape}")
    m = _output_size(max_output_size, boxes.shape[0], "batched_nms")
    threshold = _threshold_f32(iou_threshold)
    return _greedy_nms(boxes, scores, idxs, valid, threshold, max_output_size=m,
                       tile_size=tile_size)
