"""RoI Align and FPN multi-scale RoI Align (``torchvision.ops`` semantics, NHWC); RoI pooling
is in ``roi_pool.py`` and shares this module's conventions and helpers.

Written by hand: no kept library has RoI ops for JAX. Each follows torchvision's CPU kernel
(``roi_align_kernel.cpp`` + ``roi_align_common.h``, ``roi_pool_kernel.cpp``) and
``torchvision.ops.MultiScaleRoIAlign`` step by step, in float32, so results agree with
torchvision to float32 rounding (summation order differs). Layout: features ``[B, H, W, C]``,
outputs ``[K, oh, ow, C]`` (torchvision: NCHW and ``[K, C, oh, ow]``).

RoIs are ``[K, 5]`` rows ``(batch_index, x1, y1, x2, y2)`` in input-image pixels; the batch index
is truncated to int like the kernel's ``int`` cast and clipped to ``[0, B - 1]`` (torchvision
reads out of bounds there). No Python loop over RoIs; everything is ``jit``- and ``vmap``-safe.

Costs (K RoIs, P x Q bins, C channels, G = sampling_ratio, H x W map): ``roi_align`` gathers
4 G^2 [K, P, Q, C] blocks (the kernel's reads; gradient: the matching scatter-add);
``multiscale_roi_align`` the same once over all levels; ``roi_pool`` O(K P Q W C) compares
(see each docstring).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

Array = jax.Array

__all__ = ["roi_align", "roi_pool", "multiscale_roi_align", "infer_scale", "map_levels"]

_FLT_MAX = float(np.finfo(np.float32).max)


def _div(a: Array, d: float) -> Array:
    """``a / d`` correctly rounded, as C++ computes it.

    XLA rewrites division by a constant (or a broadcast scalar) into multiplication by its
    reciprocal, which is off by one ulp for some inputs (``11 / 7 * 7`` then rounds to 11.000001
    and a ``ceil`` moves a pooling bin by a pixel). A data-dependent divisor keeps the division.
    """
    a = jnp.asarray(a, jnp.float32)
    return a / (jnp.where(jnp.isfinite(a), a * np.float32(0), np.float32(0)) + np.float32(d))


def _pair(output_size: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(output_size, int):
        size = (output_size, output_size)
    else:
        size = tuple(int(s) for s in output_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"{name}: output_size must be an int or (oh, ow) with sizes >= 1, "
                         f"got {output_size!r}")
    return size  # type: ignore[return-value]


def _check(features: Array, rois: Array, name: str) -> None:
    if features.ndim != 4:
        raise ValueError(f"{name}: features must be [B, H, W, C] (NHWC), "
                         f"got shape {features.shape}")
    if rois.ndim != 2 or rois.shape[1] != 5:
        raise ValueError(f"{name}: rois must be [K, 5] (batch_index, x1, y1, x2, y2), "
                         f"got shape {rois.shape}")


def _chunked(fn, args: tuple[Array, ...], num: int, chunk_size: int | None) -> Array:
    """``fn(*args)`` over the leading (RoI) axis, at most ``chunk_size`` RoIs at a time."""
    if chunk_size is None or num <= chunk_size:
        return fn(*args)
    chunks = -(-num // chunk_size)
    pad = chunks * chunk_size - num

    def split(a: Array) -> Array:  # [num, ...] -> [chunks, chunk_size, ...], padding repeats row 0
        a = jnp.concatenate([a, jnp.broadcast_to(a[:1], (pad, *a.shape[1:]))]) if pad else a
        return a.reshape(chunks, chunk_size, *a.shape[1:])

    out = lax.map(lambda a: fn(*a), tuple(split(a) for a in args))
    return out.reshape(chunks * chunk_size, *out.shape[2:])[:num]


def _axis_samples(start: Array, bin_size: Array, size: Array, pooled: int, grid: int):
    """Bilinear sample positions along one axis, the kernel's ``pre_calc`` for y (or x).

    Args:
      start: [K] float32, ``roi_start_h`` (scaled, offset applied).
      bin_size: [K] float32.
      size: [K] int32, feature height (or width) of each RoI's map.
      pooled: output bins along the axis.
      grid: samples per bin along the axis.

    Returns:
      (low, high, w_low, w_high, inside): [K, pooled, grid]; ``low``/``high`` int32 neighbour
      indices, ``w_low``/``w_high`` float32 weights (``hy``/``ly``), ``inside`` bool (the sample
      is within [-1, size]; the kernel zeroes a sample outside on either axis).
    """
    p = jnp.arange(pooled, dtype=jnp.float32)[None, :, None]
    i = jnp.arange(grid, dtype=jnp.float32)[None, None, :]
    bin_size = bin_size[:, None, None]
    # Same operation order as the kernel: (start + p * bin) + ((i + 0.5) * bin) / grid.
    pos = start[:, None, None] + p * bin_size + _div((i + 0.5) * bin_size, grid)
    size = size[:, None, None]
    size_f = size.astype(jnp.float32)
    inside = (pos >= -1.0) & (pos <= size_f)  # False for NaN, as the kernel's !(in range)
    pos = jnp.where(inside, jnp.maximum(pos, 0.0), 0.0)
    low = jnp.floor(pos).astype(jnp.int32)
    at_end = low >= size - 1
    low = jnp.where(at_end, size - 1, low)
    high = jnp.where(at_end, size - 1, low + 1)
    pos = jnp.where(at_end, low.astype(jnp.float32), pos)
    w_high = pos - low.astype(jnp.float32)  # ly
    w_low = 1.0 - w_high  # hy
    return low, high, w_low, w_high, inside


def _align_flat(
    table: Array,
    base: Array,
    height: Array,
    width: Array,
    boxes: Array,
    scale: Array,
    output_size: tuple[int, int],
    sampling_ratio: int,
    aligned: bool,
) -> Array:
    """RoI Align from a flattened feature table.

    Args:
      table: [R, C] features, rows ``base + y * width + x``.
      base: [K] int32, row of pixel (0, 0) of each RoI's map.
      height, width: [K] int32, size of each RoI's map.
      boxes: [K, 4] float32, xyxy in input pixels.
      scale: [K] float32, spatial scale of each RoI's map.

    Returns:
      [K, oh, ow, C] in ``table.dtype``.
    """
    oh, ow = output_size
    g = sampling_ratio
    offset = np.float32(0.5 if aligned else 0.0)
    start_w = boxes[:, 0] * scale - offset
    start_h = boxes[:, 1] * scale - offset
    end_w = boxes[:, 2] * scale - offset
    end_h = boxes[:, 3] * scale - offset
    roi_w = end_w - start_w
    roi_h = end_h - start_h
    if not aligned:  # force malformed RoIs to be 1x1
        roi_w = jnp.maximum(roi_w, 1.0)
        roi_h = jnp.maximum(roi_h, 1.0)
    bin_h = _div(roi_h, oh)
    bin_w = _div(roi_w, ow)
    y0, y1, wy0, wy1, in_y = _axis_samples(start_h, bin_h, height, oh, g)  # [K, oh, g]
    x0, x1, wx0, wx1, in_x = _axis_samples(start_w, bin_w, width, ow, g)  # [K, ow, g]

    # Sum over the g x g samples of each bin and their 4 bilinear corners: 4 g^2 gathers of
    # [K, oh, ow] feature vectors, each weighted and accumulated (XLA fuses gather, weight, add).
    stride = width[:, None, None]
    row_base = base[:, None, None]
    acc = None
    for iy in range(g):
        for ix in range(g):
            inside = in_y[:, :, iy, None] & in_x[:, None, :, ix]  # [K, oh, ow]
            for yi, wy in ((y0, wy0), (y1, wy1)):
                for xi, wx in ((x0, wx0), (x1, wx1)):
                    weight = jnp.where(inside, wy[:, :, iy, None] * wx[:, None, :, ix], 0.0)
                    index = row_base + yi[:, :, iy, None] * stride + xi[:, None, :, ix]
                    term = weight[..., None] * table[index].astype(jnp.float32)
                    acc = term if acc is None else acc + term
    return _div(acc, max(g * g, 1)).astype(table.dtype)


def roi_align(
    features: ArrayLike,
    rois: ArrayLike,
    output_size: int | Sequence[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 2,
    aligned: bool = False,
    *,
    chunk_size: int | None = 128,
) -> Array:
    """RoI Align, equal to ``torchvision.ops.roi_align`` (NHWC).

    Cost: 4 * sampling_ratio^2 gathers of [K, oh, ow, C] feature vectors, weighted and summed in
    one fused pass; RoIs go through ``chunk_size`` at a time (a ``lax.map``, which keeps the
    working set in cache on CPU), so live memory is O(chunk_size * oh * ow * C).

    Each RoI is scaled by ``spatial_scale`` (and shifted by -0.5 when ``aligned``), cut into
    ``oh x ow`` bins (RoI size forced >= 1 when not ``aligned``), and each bin averages
    ``sampling_ratio x sampling_ratio`` bilinear samples at ``(i + 0.5) * bin / sampling_ratio``.
    A sample with y < -1, y > H, x < -1 or x > W contributes 0; coordinates <= 0 are clamped to
    0 and those at or beyond the last pixel to it (the kernel's boundary rules).

    Args:
      features: [B, H, W, C] float.
      rois: [K, 5] float32, (batch_index, x1, y1, x2, y2) in input pixels.
      output_size: int or (oh, ow).
      spatial_scale: feature size / input size (e.g. 1/16).
      sampling_ratio: static int > 0, samples per bin and axis. torchvision's adaptive
        ``sampling_ratio <= 0`` (``ceil(roi_size / output_size)``) has no static shape and raises.
      aligned: pixel-shift the boxes by -0.5 (Detectron2's ROIAlignV2) and allow RoIs < 1 pixel.
      chunk_size: static int or None; RoIs processed per step (bounds memory; None = all at once).

    Returns:
      [K, oh, ow, C] in ``features.dtype``. Differentiable in ``features`` (and in ``rois``).
    """
    features = jnp.asarray(features)
    rois = jnp.asarray(rois)
    _check(features, rois, "roi_align")
    size = _pair(output_size, "roi_align")
    if int(sampling_ratio) <= 0:
        raise ValueError(
            "roi_align: sampling_ratio must be > 0 here; torchvision's adaptive "
            "sampling_ratio <= 0 (ceil(roi_size / output_size) samples per bin) gives a "
            "data-dependent number of samples, which has no static shape. "
            f"Got sampling_ratio={sampling_ratio}.")
    return _roi_align(features, rois, size=size, spatial_scale=float(spatial_scale),
                      sampling_ratio=int(sampling_ratio), aligned=bool(aligned),
                      chunk_size=chunk_size)


@functools.partial(jax.jit, static_argnames=("size", "spatial_scale", "sampling_ratio", "aligned",
                                             "chunk_size"))
def _roi_align(features, rois, *, size, spatial_scale, sampling_ratio, aligned, chunk_size):
    rois = rois.astype(jnp.float32)
    b, h, w, c = features.shape
    k = rois.shape[0]
    table = features.reshape(b * h * w, c)
    batch = jnp.clip(rois[:, 0].astype(jnp.int32), 0, b - 1)

    def run(batch, boxes):
        n = boxes.shape[0]
        return _align_flat(
            table, batch * (h * w), jnp.full((n,), h, jnp.int32), jnp.full((n,), w, jnp.int32),
            boxes, jnp.full((n,), spatial_scale, jnp.float32), size, sampling_ratio, aligned)

    return _chunked(run, (batch, rois[:, 1:]), k, chunk_size)


def infer_scale(feature_size: int, image_size: int) -> float:
    """torchvision's ``_infer_scale``: ``2 ** round(log2(feature_size / image_size))``.

    Rounding is half to even on the float32 log2, as ``torch.round``.
    """
    approx = np.float32(float(feature_size) / float(image_size))
    return float(2.0 ** float(np.round(np.log2(approx))))


def map_levels(
    boxes: ArrayLike,
    k_min: int,
    k_max: int,
    canonical_scale: int = 224,
    canonical_level: int = 4,
    eps: float = 1e-6,
) -> Array:
    """FPN level of each box, torchvision's ``LevelMapper``, as an offset from ``k_min``.

    ``floor(canonical_level + log2(sqrt(area) / canonical_scale) + eps)`` clamped to
    ``[k_min, k_max]``, minus ``k_min``. (The eps is added after the log, as torchvision does.)

    Args:
      boxes: [K, 4] float32, xyxy in input pixels.

    Returns:
      [K] int32 in ``[0, k_max - k_min]``; -1 where the area is negative (sqrt NaN: torchvision
      assigns such a box to no level and its pooled output stays 0).
    """
    boxes = jnp.asarray(boxes, jnp.float32)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    s = jnp.sqrt(area)
    target = jnp.floor(np.float32(canonical_level) + jnp.log2(_div(s, canonical_scale))
                       + np.float32(eps))
    target = jnp.clip(target, k_min, k_max)
    return jnp.where(jnp.isnan(target), -1, target.astype(jnp.int32) - k_min)


def multiscale_roi_align(
    features: Sequence[ArrayLike],
    rois: ArrayLike,
    image_size: Sequence[int],
    output_size: int | Sequence[int] = 7,
    sampling_ratio: int = 2,
    canonical_scale: int = 224,
    canonical_level: int = 4,
    eps: float = 1e-6,
    *,
    chunk_size: int | None = 128,
) -> Array:
    """FPN RoI Align, equal to ``torchvision.ops.MultiScaleRoIAlign`` (NHWC, aligned=False).

    Level scales are inferred from the feature heights (:func:`infer_scale` against
    ``image_size[0]``, as torchvision), ``k_min = -log2(scale[0])``, ``k_max = -log2(scale[-1])``;
    each RoI is pooled from level :func:`map_levels` with that level's scale.

    Cost: one :func:`roi_align` over all RoIs, not one per level: the levels are flattened into
    one table and each RoI is sampled only on its own level, with per-RoI height, width and
    scale; plus one copy of the levels.

    Args:
      features: L arrays [B, H_l, W_l, C] (FPN levels, finest first, scales 2^-k for
        consecutive k).
      rois: [K, 5] float32, (batch_index, x1, y1, x2, y2) in input pixels.
      image_size: (h, w) of the (padded) input image; torchvision uses the max over the batch.
      output_size: int or (oh, ow).
      sampling_ratio: static int > 0.
      canonical_scale, canonical_level, eps: the FPN level mapping (Eqn. 1 of the FPN paper).
      chunk_size: as in :func:`roi_align`.

    Returns:
      [K, oh, ow, C] in the features' dtype.
    """
    feats = [jnp.asarray(f) for f in features]
    rois = jnp.asarray(rois)
    if not feats:
        raise ValueError("multiscale_roi_align: features is empty")
    for f in feats:
        _check(f, rois, "multiscale_roi_align")
    if len({(f.shape[0], f.shape[3], f.dtype) for f in feats}) != 1:
        raise ValueError("multiscale_roi_align: levels differ in batch size, channels or dtype: "
                         f"{[(f.shape, str(f.dtype)) for f in feats]}")
    size = _pair(output_size, "multiscale_roi_align")
    if int(sampling_ratio) <= 0:
        raise ValueError("multiscale_roi_align: sampling_ratio must be > 0 (static shapes), "
                         f"got {sampling_ratio}")
    scales = [infer_scale(f.shape[1], image_size[0]) for f in feats]
    k_min = int(-np.log2(np.float32(scales[0])))
    k_max = int(-np.log2(np.float32(scales[-1])))
    if [int(-math.log2(s)) for s in scales] != list(range(k_min, k_min + len(feats))):
        raise ValueError(
            "multiscale_roi_align: level scales must be 2^-k for consecutive k, finest first; "
            f"inferred {scales} from feature heights {[f.shape[1] for f in feats]} and image "
            f"height {image_size[0]}")

    return _multiscale_roi_align(
        tuple(feats), rois, size=size, sampling_ratio=int(sampling_ratio), scales=tuple(scales),
        k_min=k_min, k_max=k_max, canonical_scale=canonical_scale,
        canonical_level=canonical_level, eps=float(eps), chunk_size=chunk_size)


@functools.partial(jax.jit, static_argnames=(
    "size", "sampling_ratio", "scales", "k_min", "k_max", "canonical_scale", "canonical_level",
    "eps", "chunk_size"))
def _multiscale_roi_align(feats, rois, *, size, sampling_ratio, scales, k_min, k_max,
                          canonical_scale, canonical_level, eps, chunk_size):
    rois = rois.astype(jnp.float32)
    b, c = feats[0].shape[0], feats[0].shape[3]
    heights = np.array([f.shape[1] for f in feats], np.int32)
    widths = np.array([f.shape[2] for f in feats], np.int32)
    offsets = np.concatenate([[0], np.cumsum(b * heights * widths)[:-1]]).astype(np.int32)
    table = jnp.concatenate([f.reshape(-1, c) for f in feats])

    boxes = rois[:, 1:]
    level = map_levels(boxes, k_min, k_max, canonical_scale, canonical_level, eps)
    has_level = level >= 0
    level = jnp.maximum(level, 0)
    batch = jnp.clip(rois[:, 0].astype(jnp.int32), 0, b - 1)
    height = jnp.asarray(heights)[level]
    width = jnp.asarray(widths)[level]
    base = jnp.asarray(offsets)[level] + batch * height * width
    scale = jnp.asarray(scales, jnp.float32)[level]

    def run(base, height, width, boxes, scale, has_level):
        out = _align_flat(table, base, height, width, boxes, scale, size, sampling_ratio, False)
        return jnp.where(has_level[:, None, None, None], out, 0).astype(out.dtype)

    return _chunked(run, (base, height, width, boxes, scale, has_level), rois.shape[0], chunk_size)
