"""Detection transforms: raw examples of any size -> the static-shape detection contract.

Input (raw): ``{"image": [H, W, 3] uint8, "boxes": [n, 4] float32 xyxy pixels, "labels": [n]
int32, "crowd": [n] bool}``. Output: ``{"image": [S, S, 3] float32 in [0, 1], "boxes":
[max_boxes, 4] float32 xyxy resized pixels, "labels": [max_boxes] int32, "box_valid":
[max_boxes] bool, "scale": [] float32, "image_hw": [2] int32}``.

Geometry: with ``scale`` (resized / original), a point at pixel-edge coordinate ``x`` of the
original lands at ``x * scale - offset`` (offset 0 except for the training crop). The image is
resampled with exactly this map (PIL bilinear, antialiased when shrinking) and the valid region
is ``floor(H * scale) x floor(W * scale)`` (the last partial pixel row/column is cut), padded
bottom/right with zeros to ``S x S``; boxes are multiplied by the same ``scale`` and clipped to
the valid region, so ``boxes / scale`` maps eval predictions back to the original image.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

_EPS = 1e-6  # tolerance of floor(H * scale): S / H * H may round just below S


def horizontal_flip(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirrors an image left-right and its boxes: ``x1' = W - x2``, ``x2' = W - x1``.

    Args:
      image: [H, W, C] any dtype.
      boxes: [n, 4] float32, xyxy in pixels.

    Returns:
      ([H, W, C] flipped image (a copy), [n, 4] flipped boxes).
    """
    width = image.shape[1]
    flipped = np.stack(
        [width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=1
    ).astype(boxes.dtype)
    return np.ascontiguousarray(image[:, ::-1]), flipped


def resize_crop(
    image: np.ndarray, scale: float, offset: tuple[int, int], out_hw: tuple[int, int]
) -> np.ndarray:
    """Resamples ``image`` by ``scale`` and cuts the window at ``offset`` of size ``out_hw``.

    Output pixel edge ``(y', x')`` shows original edge ``((y' + oy) / scale, (x' + ox) / scale)``;
    bilinear interpolation (PIL, antialiased when shrinking). Only the window is computed.

    Args:
      image: [H, W, 3] uint8.
      scale: resized / original size, > 0.
      offset: (oy, ox) of the window in the resized image, pixels.
      out_hw: (h, w) of the window; ``(oy + h) / scale`` at most ``H`` (up to rounding), same
        for x.

    Returns:
      [h, w, 3] uint8.
    """
    (oy, ox), (out_h, out_w) = offset, out_hw
    height, width = image.shape[:2]
    box = (
        ox / scale, oy / scale, min((ox + out_w) / scale, width), min((oy + out_h) / scale, height)
    )
    resized = Image.fromarray(image).resize((out_w, out_h), Image.Resampling.BILINEAR, box=box)
    return np.asarray(resized)


class DetectionTransform:
    """Resize-to-fit, pad and pad the targets; in training also flip and scale jitter.

    Evaluation (``train=False``, called as ``transform(example)``): ``scale = S / max(H, W)``
    (the longer side becomes ``S``), resize, pad bottom/right with zeros.

    Training (``train=True``, called as ``transform(example, rng)``, every random number from
    ``rng``): a horizontal flip with probability ``hflip_prob`` (`horizontal_flip`), then
    ``scale = f * S / max(H, W)`` with ``f ~ U(scale_range)``; a side longer than ``S`` after
    scaling is cropped to ``S`` at a uniform random integer offset, a shorter one padded.
    Boxes are clipped to the window; those narrower or shorter than ``min_box_size`` pixels are
    dropped.

    Targets: valid boxes first (input order), then crowd boxes (``box_valid`` False: kept out of
    training), then zero padding (label 0, ``box_valid`` False). Boxes dropped by the crop (or of
    zero area in evaluation) leave no row. With more than ``max_boxes`` rows the first
    ``max_boxes`` in this order are kept (crowd boxes go first).

    Args:
      image_size: ``S``, side of the square output.
      max_boxes: rows of the padded targets, >= 1.
      train: augmentation on (needs ``rng``) or off.
      hflip_prob: probability of a horizontal flip (training).
      scale_range: (low, high) jitter factor on top of the fit (training), 0 < low <= high.
      min_box_size: smallest width and height (resized pixels) of a kept box (training).
    """

    def __init__(
        self,
        image_size: int,
        max_boxes: int,
        train: bool,
        hflip_prob: float = 0.5,
        scale_range: tuple[float, float] = (0.8, 1.2),
        min_box_size: float = 1.0,
    ) -> None:
        if image_size < 1 or max_boxes < 1:
            raise ValueError(f"image_size={image_size} and max_boxes={max_boxes} must be >= 1.")
        if not 0.0 <= hflip_prob <= 1.0:
            raise ValueError(f"hflip_prob={hflip_prob} must lie in [0, 1].")
        low, high = scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range={scale_range} must satisfy 0 < low <= high.")
        if min_box_size < 0:
            raise ValueError(f"min_box_size={min_box_size} must be >= 0.")
        self.image_size = image_size
        self.max_boxes = max_boxes
        self.train = train
        self.hflip_prob = hflip_prob
        self.scale_range = (float(low), float(high))
        self.min_box_size = min_box_size

    def __call__(
        self, example: dict[str, np.ndarray], rng: np.random.Generator | None = None
    ) -> dict[str, np.ndarray]:
        """Transforms one raw example (see the class docstring)."""
        if self.train and rng is None:
            raise ValueError("a training DetectionTransform needs an np.random.Generator.")
        image = np.asarray(example["image"])
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be [H, W, 3] uint8, got {image.shape} {image.dtype}.")
        boxes = np.asarray(example["boxes"], np.float32).reshape(-1, 4)
        labels = np.asarray(example["labels"], np.int32).reshape(-1)
        crowd = np.asarray(example.get("crowd", np.zeros(len(labels), bool)), bool).reshape(-1)
        height, width = image.shape[:2]
        size = self.image_size
        fit = size / max(height, width)
        if self.train:
            flip, factor, (ry, rx) = (
                rng.random() < self.hflip_prob, rng.uniform(*self.scale_range), rng.random(2)
            )
            if flip:
                image, boxes = horizontal_flip(image, boxes)
            scale = fit * factor
        else:
            scale, ry, rx = fit, 0.0, 0.0
        full_h = max(1, math.floor(height * scale + _EPS))
        full_w = max(1, math.floor(width * scale + _EPS))
        out_h, out_w = min(full_h, size), min(full_w, size)
        oy = min(int(ry * (full_h - out_h + 1)), full_h - out_h)  # uniform in 0..full_h-out_h
        ox = min(int(rx * (full_w - out_w + 1)), full_w - out_w)

        padded = np.zeros((size, size, 3), np.float32)
        window = resize_crop(image, scale, (oy, ox), (out_h, out_w))
        padded[:out_h, :out_w] = window.astype(np.float32) * np.float32(1 / 255)

        boxes = boxes * np.float32(scale) - np.array([ox, oy, ox, oy], np.float32)
        boxes = np.clip(boxes, 0, np.array([out_w, out_h, out_w, out_h], np.float32))
        box_w, box_h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        kept = (box_w > 0) & (box_h > 0)
        if self.train:
            kept &= (box_w >= self.min_box_size) & (box_h >= self.min_box_size)
        rows = np.concatenate([np.flatnonzero(kept & ~crowd), np.flatnonzero(kept & crowd)])
        rows = rows[: self.max_boxes]
        count = len(rows)
        out_boxes = np.zeros((self.max_boxes, 4), np.float32)
        out_labels = np.zeros(self.max_boxes, np.int32)
        box_valid = np.zeros(self.max_boxes, bool)
        out_boxes[:count] = boxes[rows]
        out_labels[:count] = labels[rows]
        box_valid[:count] = ~crowd[rows]
        return {
            "image": padded,
            "boxes": out_boxes,
            "labels": out_labels,
            "box_valid": box_valid,
            "scale": np.array(scale, np.float32),
            "image_hw": np.array([out_h, out_w], np.int32),
        }
