"""Synthetic detection data: circles, squares and triangles on textured backgrounds.

Labels: 1 = circle, 2 = square, 3 = triangle (``CLASS_NAMES[label - 1]``); 0 is background and
never a real class. Example ``i`` is a pure function of ``(seed, split, i)``, so any process can
read any index, the splits never coincide, and a huge ``num_examples`` (e.g. ``10**9``) is an
unlimited training stream rendered on the fly.

Pixel convention: pixel ``(row, col)`` covers ``[col, col + 1) x [row, row + 1)``; a box is the
tight box of a shape's visible pixels in these edge coordinates, ``(min_col, min_row, max_col + 1,
max_row + 1)`` (COCO's convention: a single pixel has width and height 1).

Shapes are drawn in order, later on top. A placement is rejected (and redrawn, up to
``_PLACEMENT_TRIES`` times, then the object is skipped) if it would leave an earlier object with
less than ``_MIN_VISIBLE`` of its pixels visible; boxes are of the visible (unoccluded) pixels.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlx_research.data.pipeline import checked_index

CLASS_NAMES = ("circle", "square", "triangle")
NUM_CLASSES = len(CLASS_NAMES)
_SPLITS = {"train": 0, "eval": 1, "val": 1, "test": 2}  # "val" is another name of "eval"
_PLACEMENT_TRIES = 10
_MIN_VISIBLE = 0.6
_COLOUR_CANDIDATES = 8


@functools.lru_cache(maxsize=1024)
def shape_mask(label: int, size: int) -> np.ndarray:
    """[size, size] bool pixels (read-only) of shape ``label`` drawn in a ``size x size`` square.

    Circle: pixel centres within ``size / 2`` of the square's centre. Square: every pixel.
    Triangle: isosceles, apex at the top centre, base on the bottom edge.
    """
    mask = _draw_mask(label, size)
    mask.flags.writeable = False
    return mask


def _draw_mask(label: int, size: int) -> np.ndarray:
    centres = np.arange(size, dtype=np.float32) + 0.5
    u, v = centres[None, :], centres[:, None]  # x (column) and y (row) of pixel centres
    half = size / 2
    if label == 1:
        return (u - half) ** 2 + (v - half) ** 2 <= half**2
    if label == 2:
        return np.ones((size, size), bool)
    if label == 3:
        return 2 * np.abs(u - half) <= v
    raise ValueError(f"label={label} must be 1 (circle), 2 (square) or 3 (triangle).")


def _smooth_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """[size, size, 3] float32: a random k x k colour grid upsampled bilinearly."""
    k = int(rng.integers(3, 9))
    grid = rng.uniform(0, 255, 3) + rng.normal(0, 45, (k, k, 3))
    pos = np.clip((np.arange(size) + 0.5) * k / size - 0.5, 0, k - 1)
    lo = np.minimum(pos.astype(int), k - 2)
    frac = (pos - lo).astype(np.float32)
    interp = np.zeros((size, k), np.float32)  # [size, k] bilinear weights, rows sum to 1
    interp[np.arange(size), lo] = 1 - frac
    interp[np.arange(size), lo + 1] = frac
    rows = np.tensordot(interp, grid.astype(np.float32), axes=1)  # [size, k, 3]
    return np.matmul(interp, rows)  # [size, size, 3]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """[size, size, 3] uint8 textured background: smooth noise, a gradient or stripes."""
    kind = int(rng.integers(3))
    if kind == 0:
        image = _smooth_noise(rng, size)
    else:
        angle = rng.uniform(0, 2 * np.pi)
        centres = np.arange(size, dtype=np.float32) + 0.5
        proj = centres[None, :] * np.cos(angle) + centres[:, None] * np.sin(angle)
        if kind == 1:  # linear gradient between two colours
            t = (proj - proj.min()) / max(float(np.ptp(proj)), 1e-6)
        else:  # stripes of a random period and phase
            period = rng.uniform(6, 32)
            t = 0.5 + 0.5 * np.sin(2 * np.pi * proj / period + rng.uniform(0, 2 * np.pi))
        first = rng.uniform(0, 255, 3).astype(np.float32)
        second = np.clip(first + rng.normal(0, 70, 3), 0, 255).astype(np.float32)
        image = first + t[..., None] * (second - first)
    if rng.random() < 0.5:  # fine grain on top
        grain = rng.random((size, size, 1), dtype=np.float32) - np.float32(0.5)
        image = image + np.float32(rng.uniform(6, 30)) * grain
    return np.clip(image, 0, 255).astype(np.uint8)


def render_example(
    rng: np.random.Generator,
    image_size: int,
    max_objects: int,
    min_size: int,
    max_size: int,
    empty_fraction: float = 0.1,
) -> dict[str, np.ndarray]:
    """Draws one raw detection example with ``rng`` (see the module docstring).

    Returns:
      {"image": [S, S, 3] uint8, "boxes": [n, 4] float32 xyxy pixels (tight around the visible
      pixels), "labels": [n] int32 in 1..3, "crowd": [n] bool (all False)}, n in 0..max_objects.
    """
    image = _background(rng, image_size)
    ids = np.zeros((image_size, image_size), np.int16)  # 0 background, k = k-th object (1-based)
    empty = rng.random() < empty_fraction or max_objects == 0
    wanted = 0 if empty else int(rng.integers(1, max_objects + 1))
    placed: list[tuple[int, int, int, int]] = []  # (label, size, x0, y0)
    visible: list[int] = []  # visible pixel count per placed object
    full: list[int] = []  # pixel count when drawn
    for _ in range(wanted):
        label = int(rng.integers(1, NUM_CLASSES + 1))
        for _ in range(_PLACEMENT_TRIES):
            size = int(rng.integers(min_size, max_size + 1))
            x0, y0 = (int(v) for v in rng.integers(0, image_size - size + 1, 2))
            mask = shape_mask(label, size)
            region = ids[y0 : y0 + size, x0 : x0 + size]
            lost = np.bincount(region[mask], minlength=len(placed) + 1)[1:]
            remaining = np.asarray(visible) - lost
            if np.all(remaining >= _MIN_VISIBLE * np.asarray(full)):
                break
        else:
            continue  # no placement keeps every object visible: skip this one
        pixels = image[y0 : y0 + size, x0 : x0 + size]
        candidates = rng.integers(0, 256, (_COLOUR_CANDIDATES, 3))
        mean = pixels[mask].mean(axis=0)
        colour = candidates[np.argmax(np.sum((candidates - mean) ** 2, axis=1))]
        pixels[mask] = colour
        region[mask] = len(placed) + 1
        visible = [int(v) for v in remaining] + [int(mask.sum())]
        full.append(int(mask.sum()))
        placed.append((label, size, x0, y0))
    boxes = np.zeros((len(placed), 4), np.float32)
    for k, (_, size, x0, y0) in enumerate(placed):
        own = ids[y0 : y0 + size, x0 : x0 + size] == k + 1
        rows, cols = np.flatnonzero(own.any(axis=1)), np.flatnonzero(own.any(axis=0))
        boxes[k] = (x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1)
    return {
        "image": image,
        "boxes": boxes,
        "labels": np.array([p[0] for p in placed], np.int32),
        "crowd": np.zeros(len(placed), bool),
    }


class SyntheticShapes:
    """Circles, squares and triangles with tight boxes, indexed like a grain data source.

    Example ``i`` is rendered from ``np.random.default_rng([seed, split_id, i])``: a textured
    background (smooth colour noise, a gradient or stripes), then 0 objects with probability
    ``empty_fraction``, else ``n ~ U{1..max_objects}`` placement attempts of a uniform class, a
    uniform integer size in ``[min_size, max_size]``, a uniform position fully inside the image
    and a colour contrasting with what lies beneath (partial overlaps allowed, see the module
    docstring). Raw examples follow the detection data contract (``crowd`` all False).

    Args:
      num_examples: ``len(self)``; e.g. ``10**9`` for an unlimited training stream.
      image_size: square image side ``S`` in pixels, at least 8.
      max_objects: most objects per image, at least 0.
      min_size: smallest shape side in pixels, at least 4.
      max_size: largest shape side, in ``[min_size, image_size]``.
      seed: base seed, >= 0.
      split: "train", "eval" (also called "val": the same examples) or "test".
      empty_fraction: probability of an image without objects, in [0, 1].

    Attributes:
      image_ids: ``range(1, num_examples + 1)``, the COCO image id of each index.
      class_names: ``CLASS_NAMES``; ``num_classes``: 3.
    """

    class_names = CLASS_NAMES
    num_classes = NUM_CLASSES

    def __init__(
        self,
        num_examples: int,
        image_size: int = 128,
        max_objects: int = 6,
        min_size: int = 12,
        max_size: int = 48,
        seed: int = 0,
        split: str = "train",
        empty_fraction: float = 0.1,
    ) -> None:
        if split not in _SPLITS:
            raise ValueError(f"split={split!r} must be one of {sorted(_SPLITS)}.")
        if num_examples < 0:
            raise ValueError(f"num_examples={num_examples} must be >= 0.")
        if image_size < 8:
            raise ValueError(f"image_size={image_size} must be >= 8.")
        if max_objects < 0:
            raise ValueError(f"max_objects={max_objects} must be >= 0.")
        if not 4 <= min_size <= max_size <= image_size:
            raise ValueError(
                f"need 4 <= min_size={min_size} <= max_size={max_size} <= image_size={image_size}."
            )
        if seed < 0:
            raise ValueError(f"seed={seed} must be >= 0.")
        if not 0.0 <= empty_fraction <= 1.0:
            raise ValueError(f"empty_fraction={empty_fraction} must lie in [0, 1].")
        self.num_examples = num_examples
        self.image_size = image_size
        self.max_objects = max_objects
        self.min_size = min_size
        self.max_size = max_size
        self.seed = seed
        self.split = split
        self.empty_fraction = empty_fraction
        self.image_ids = range(1, num_examples + 1)

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        """Returns raw example ``index`` (negative indices count from the end)."""
        index = checked_index(index, self.num_examples)
        rng = np.random.default_rng([self.seed, _SPLITS[self.split], index])
        return render_example(
            rng, self.image_size, self.max_objects, self.min_size, self.max_size,
            self.empty_fraction,
        )


def _coco_dict(source: Any, file_names: bool) -> tuple[dict[str, Any], list[np.ndarray]]:
    """(COCO instances dict, images) of every example of a raw detection ``source``."""
    names: Sequence[str] = getattr(source, "class_names", CLASS_NAMES)
    image_ids = getattr(source, "image_ids", range(1, len(source) + 1))
    images, annotations, pixels = [], [], []
    for index in range(len(source)):
        example: Mapping[str, np.ndarray] = source[index]
        image_id = int(image_ids[index])
        height, width = example["image"].shape[:2]
        entry = {"id": image_id, "height": int(height), "width": int(width)}
        if file_names:
            entry["file_name"] = f"{image_id}.png"
            pixels.append(example["image"])
        images.append(entry)
        crowd = example.get("crowd", np.zeros(len(example["labels"]), bool))
        for box, label, is_crowd in zip(example["boxes"], example["labels"], crowd, strict=True):
            x1, y1, x2, y2 = (float(v) for v in box)
            annotations.append({
                "id": len(annotations) + 1,  # pycocotools treats id 0 as unmatched
                "image_id": image_id,
                "category_id": int(label),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": (x2 - x1) * (y2 - y1),
                "iscrowd": int(bool(is_crowd)),
            })
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(names)]
    coco = {
        "info": {"description": f"{type(source).__name__}"},
        "licenses": [],
        "categories": categories,
        "images": images,
        "annotations": annotations,
    }
    return coco, pixels


def coco_ground_truth(source: Any) -> dict[str, Any]:
    """The COCO instances dict of a raw detection ``source`` (e.g. a `SyntheticShapes` split),
    in memory, for evaluating it with pycocotools; the same dict `write_coco` writes, less the
    ``file_name`` of each image.

    Image ids come from ``source.image_ids`` (index + 1 if absent), category ids are the labels
    (names from ``source.class_names``), annotation ids count from 1, ``bbox`` is xywh and
    ``area`` the box's ``w * h``. Renders every example: meant for evaluation-sized splits.
    """
    return _coco_dict(source, file_names=False)[0]


def write_coco(source: Any, folder: str | os.PathLike, file_name: str = "instances.json") -> Path:
    """Writes ``source`` as a COCO-format folder: ``folder/images/<image id>.png`` and the
    instances JSON ``folder/<file_name>`` (see `coco_ground_truth`, plus each image's
    ``file_name``), readable by `mlx_research.data.coco.CocoDetection(folder, file_name)`.

    Returns:
      The path of the JSON file.
    """
    from PIL import Image

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    coco, pixels = _coco_dict(source, file_names=True)
    for entry, image in zip(coco["images"], pixels, strict=True):
        Image.fromarray(image).save(folder / "images" / entry["file_name"], compress_level=1)
    path = folder / file_name
    path.write_text(json.dumps(coco))
    return path
