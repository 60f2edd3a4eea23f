"""RoI max pooling, torchvision's ``roi_pool`` (NHWC features), static shapes."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from mlx_research.ops.roi import _FLT_MAX, _check, _div, _pair

Array = jax.Array


def roi_pool(
    features: ArrayLike,
    rois: ArrayLike,
    output_size: int | Sequence[int],
    spatial_scale: float = 1.0,
) -> Array:
    """RoI max pooling, equal to ``torchvision.ops.roi_pool`` (NHWC).

    The scaled RoI corners are rounded (half away from zero), the RoI size is
    ``max(end - start + 1, 1)``, bin ``p`` spans rows ``[floor(p * bin), ceil((p + 1) * bin))``
    offset by the RoI start and clipped to the map; an empty bin gives 0, otherwise the max over
    the bin (at least -FLT_MAX, NaN ignored, as the kernel's ``>`` scan from -FLT_MAX).

    Cost: a sparse table of maxima over row ranges of length 2^j (``floor(log2 H) + 1`` copies
    of ``features``) and a loop over the W feature columns with two [K, oh, C] gathers and a
    [K, oh, ow, C] running max each: O(K * oh * ow * W * C) work, O(K * oh * ow * C) live
    values besides the table. For 512 RoIs, 7x7 bins and a [2, 64, 64, 256] map: a 29 MB table
    and 26 MB of running maxima.

    Args:
      features: [B, H, W, C] float.
      rois: [K, 5] float32, (batch_index, x1, y1, x2, y2) in input pixels.
      output_size: int or (oh, ow).
      spatial_scale: feature size / input size.

    Returns:
      [K, oh, ow, C] in ``features.dtype``. Differentiable in ``features``.
    """
    features = jnp.asarray(features)
    rois = jnp.asarray(rois)
    _check(features, rois, "roi_pool")
    return _roi_pool(features, rois, size=_pair(output_size, "roi_pool"),
                     spatial_scale=float(spatial_scale))


@functools.partial(jax.jit, static_argnames=("size", "spatial_scale"))
def _roi_pool(features, rois, *, size, spatial_scale):
    rois = rois.astype(jnp.float32)
    oh, ow = size
    b, h, w, c = features.shape

    # Sparse table: level j holds max(features[y : y + 2^j]) along H (-inf past the end).
    x = jnp.where(jnp.isnan(features), -jnp.inf, features)
    levels = [x]
    span = 1
    while 2 * span <= h:
        prev = levels[-1]
        shifted = jnp.pad(prev[:, span:], [(0, 0), (0, span), (0, 0), (0, 0)],
                          constant_values=-jnp.inf)
        levels.append(jnp.maximum(prev, shifted))
        span *= 2
    table = jnp.stack(levels).reshape(len(levels) * b * h, w, c)

    batch = jnp.clip(rois[:, 0].astype(jnp.int32), 0, b - 1)
    corners = rois[:, 1:] * np.float32(spatial_scale)
    corners = (jnp.sign(corners) * jnp.floor(jnp.abs(corners) + 0.5)).astype(jnp.int32)  # C round
    start_w, start_h, end_w, end_h = (corners[:, i] for i in range(4))
    roi_w = jnp.maximum(end_w - start_w + 1, 1)
    roi_h = jnp.maximum(end_h - start_h + 1, 1)
    bin_h = _div(roi_h.astype(jnp.float32), oh)
    bin_w = _div(roi_w.astype(jnp.float32), ow)

    def bounds(start, bin_size, pooled, limit):
        p = jnp.arange(pooled, dtype=jnp.float32)[None, :]
        lo = jnp.floor(p * bin_size[:, None]).astype(jnp.int32) + start[:, None]
        hi = jnp.ceil((p + 1.0) * bin_size[:, None]).astype(jnp.int32) + start[:, None]
        return jnp.clip(lo, 0, limit), jnp.clip(hi, 0, limit)  # [K, pooled]

    hs, he = bounds(start_h, bin_h, oh, h)
    ws, we = bounds(start_w, bin_w, ow, w)

    length = jnp.maximum(he - hs, 1)
    level = sum((length >= 2**j).astype(jnp.int32) for j in range(1, len(levels)))
    row = (level * b + batch[:, None]) * h
    top = row + jnp.minimum(hs, h - 1)  # [K, oh]: rows [hs, hs + 2^level) of the table
    bottom = row + jnp.clip(he - (1 << level), 0, h - 1)  # rows [he - 2^level, he)

    # Max over the bin's columns as a running max, one feature column at a time (XLA's CPU
    # reduction over a middle axis of a masked [K, oh, ow, W, C] array is ~30x slower).
    def column(i, acc):
        in_bin = (i >= ws) & (i < we)  # [K, ow]
        col = jnp.maximum(table[top, i], table[bottom, i])  # [K, oh, C]
        return jnp.maximum(acc, jnp.where(in_bin[:, None, :, None], col[:, :, None, :], -jnp.inf))

    pooled = lax.fori_loop(0, w, column, jnp.full((rois.shape[0], oh, ow, c), -jnp.inf, x.dtype))
    empty = (he <= hs)[:, :, None] | (we <= ws)[:, None, :]  # [K, oh, ow]
    pooled = jnp.maximum(pooled, -_FLT_MAX)
    return jnp.where(empty[..., None], 0.0, pooled).astype(features.dtype)
