"""Anchor boxes of torchvision's ``AnchorGenerator``, as one static array.

The anchors depend only on static shapes and hyper-parameters, so they are computed with numpy
(float32, mirroring torchvision's arithmetic) when a function is traced and enter the program as
a constant. Aspect ratio means height / width.

Order (torchvision's): levels concatenated; within a level, grid positions row-major (y outer,
x inner); within a position, the level's cell anchors, aspect ratio outer and size inner.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
SizesLike = Sequence[Sequence[float]] | Sequence[float]


def _normalize(
    sizes: SizesLike, aspect_ratios: SizesLike
) -> tuple[tuple[tuple[float, ...], ...], tuple[tuple[float, ...], ...]]:
    """torchvision's argument forms: flat ``sizes``: one per level; flat ratios: for every level."""
    if not isinstance(sizes[0], Sequence):
        sizes = tuple((s,) for s in sizes)
    if not isinstance(aspect_ratios[0], Sequence):
        aspect_ratios = (aspect_ratios,) * len(sizes)
    sizes = tuple(tuple(float(s) for s in level) for level in sizes)
    aspect_ratios = tuple(tuple(float(a) for a in level) for level in aspect_ratios)
    if len(sizes) != len(aspect_ratios):
        raise ValueError(
            f"sizes and aspect_ratios need one entry per level, got {len(sizes)} and "
            f"{len(aspect_ratios)}"
        )
    return sizes, aspect_ratios


def num_anchors_per_location(
    sizes: SizesLike = ((128, 256, 512),), aspect_ratios: SizesLike = ((0.5, 1.0, 2.0),)
) -> list[int]:
    """Anchors per feature-map position, per level: ``len(sizes[l]) * len(aspect_ratios[l])``."""
    sizes, aspect_ratios = _normalize(sizes, aspect_ratios)
    return [len(s) * len(a) for s, a in zip(sizes, aspect_ratios, strict=True)]


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> np.ndarray:
    """Zero-centred anchors of one level (torchvision ``AnchorGenerator.generate_anchors``).

    Args:
      sizes: the level's anchor sizes (square-root of the area before rounding).
      aspect_ratios: height / width ratios.

    Returns:
      [len(aspect_ratios) * len(sizes), 4] float32 numpy, xyxy, rounded half-to-even like
      ``torch.round``; ratio outer, size inner.
    """
    scales = np.asarray(sizes, np.float32)
    ratios = np.asarray(aspect_ratios, np.float32)
    h_ratios = np.sqrt(ratios)
    w_ratios = np.float32(1) / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    base = np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2)
    return np.round(base).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _anchor_grid_np(
    image_size: tuple[int, int],
    feature_sizes: tuple[tuple[int, int], ...],
    sizes: tuple[tuple[float, ...], ...],
    aspect_ratios: tuple[tuple[float, ...], ...],
) -> np.ndarray:
    levels = []
    for (grid_h, grid_w), level_sizes, level_ratios in zip(
        feature_sizes, sizes, aspect_ratios, strict=True
    ):
        stride_h = image_size[0] // grid_h
        stride_w = image_size[1] // grid_w
        shift_y, shift_x = np.meshgrid(
            np.arange(grid_h, dtype=np.int64) * stride_h,
            np.arange(grid_w, dtype=np.int64) * stride_w,
            indexing="ij",
        )
        shift_x = shift_x.reshape(-1)
        shift_y = shift_y.reshape(-1)
        shifts = np.stack([shift_x, shift_y, shift_x, shift_y], axis=1).astype(np.float32)
        base = cell_anchors(level_sizes, level_ratios)
        levels.append((shifts[:, None, :] + base[None, :, :]).reshape(-1, 4))
    anchors = np.concatenate(levels, axis=0) if levels else np.zeros((0, 4), np.float32)
    anchors.setflags(write=False)
    return anchors


def anchor_grid(
    image_size: Sequence[int],
    feature_sizes: Sequence[Sequence[int]],
    sizes: SizesLike = ((128, 256, 512),),
    aspect_ratios: SizesLike = ((0.5, 1.0, 2.0),),
) -> Array:
    """All anchors of an (padded) image, in torchvision ``AnchorGenerator``'s order and values.

    Per level ``l``: stride = ``image_size // feature_sizes[l]`` (integer division, per axis, so
    a feature size that does not divide the image size truncates the stride, as in torchvision);
    anchor centres at ``(x * stride_w, y * stride_h)`` for the grid's top-left corners; the
    level's cell anchors (``cell_anchors``) added to each centre.

    Args:
      image_size: static ``(height, width)`` of the padded input batch.
      feature_sizes: static ``(h, w)`` of each level's feature map.
      sizes: per-level anchor sizes, e.g. ``((32,), (64,), (128,), (256,), (512,))`` for FPN; a
        flat tuple means one size per level.
      aspect_ratios: per-level height/width ratios; a flat tuple is used for every level.

    Returns:
      [sum_l h_l * w_l * A_l, 4] float32, xyxy in input pixels (the same for every image of a
      batch; broadcast it).
    """
    sizes, aspect_ratios = _normalize(sizes, aspect_ratios)
    image_size = (int(image_size[0]), int(image_size[1]))
    feature_sizes = tuple((int(h), int(w)) for h, w in feature_sizes)
    if len(feature_sizes) != len(sizes):
        raise ValueError(
            f"anchor_grid got {len(feature_sizes)} feature maps but sizes/aspect_ratios for "
            f"{len(sizes)} levels"
        )
    if any(h <= 0 or w <= 0 for h, w in feature_sizes):
        raise ValueError(f"anchor_grid needs positive feature sizes, got {feature_sizes}")
    return jnp.asarray(_anchor_grid_np(image_size, feature_sizes, sizes, aspect_ratios))
