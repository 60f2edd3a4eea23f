"""Parity of ``mlx_research.data.detection_transforms`` with torchvision.transforms.v2, and the
speed of the synthetic shapes and the transforms.

torch is not a dependency of the package; the check runs once in a venv that has it (our data
modules need only numpy and PIL):

    /tmp/tvenv/bin/python -m benchmarks.parity.detection_transforms_parity

Compared on random uint8 images and random xyxy boxes (CPU, float32):
- ``horizontal_flip`` vs ``v2.functional.horizontal_flip`` (image and ``BoundingBoxes``).
- The eval resize vs ``v2.functional.resize(..., antialias=True)`` (bilinear) for sizes where
  ``H * scale`` and ``W * scale`` are integers (then one scale = torchvision's per-axis ratios):
  boxes, and image pixels (PIL's and torch's antialiased bilinear kernels differ slightly).
- For other sizes, how far our single ``scale`` puts boxes from torchvision's per-axis ratios
  (our image is resampled with the single scale, so our boxes match our pixels exactly).
Writes benchmarks/results/detection_transforms_parity.json.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.common import cpu_model, write_result
from mlx_research.data.detection_transforms import DetectionTransform, horizontal_flip
from mlx_research.data.shapes import SyntheticShapes


def _random_boxes(rng: np.random.Generator, n: int, height: int, width: int) -> np.ndarray:
    xy = rng.uniform(0, 1, (n, 2, 2)) * np.array([width, height])
    return np.concatenate([xy.min(axis=1), xy.max(axis=1)], axis=1).astype(np.float32)


def main() -> None:
    # No options; --help prints the summary.
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    import torch
    import torchvision
    from torchvision import tv_tensors
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    rng = np.random.default_rng(0)
    flip_box, flip_pixel = 0.0, 0
    for _ in range(20):
        height, width = (int(v) for v in rng.integers(5, 200, 2))
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        boxes = _random_boxes(rng, 10, height, width)
        ours_image, ours_boxes = horizontal_flip(image, boxes)
        tv_boxes = F.horizontal_flip(tv_tensors.BoundingBoxes(
            torch.from_numpy(boxes), format="XYXY", canvas_size=(height, width)))
        tv_image = F.horizontal_flip(torch.from_numpy(image).permute(2, 0, 1))
        flip_box = max(flip_box, float(np.abs(tv_boxes.numpy() - ours_boxes).max()))
        flip_pixel = max(flip_pixel, int(np.abs(
            tv_image.permute(1, 2, 0).numpy().astype(int) - ours_image.astype(int)).max()))

    exact_box, exact_pixel, exact_mean_pixel = 0.0, 0.0, []
    cases = [(400, 300, 200), (300, 400, 200), (128, 64, 256), (90, 60, 30), (500, 250, 100)]
    for height, width, size in cases:  # H * scale and W * scale integral
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        image = np.asarray(  # smooth content: the kernels' differences show on edges only
            torch.nn.functional.avg_pool2d(
                torch.from_numpy(image).permute(2, 0, 1).float()[None], 5, 1, 2
            )[0].permute(1, 2, 0).round().byte())
        boxes = _random_boxes(rng, 10, height, width)
        out = DetectionTransform(size, 10, train=False)(
            {"image": image, "boxes": boxes, "labels": np.ones(10, np.int32)})
        new_h, new_w = (int(v) for v in out["image_hw"])
        tv_image = F.resize(torch.from_numpy(image).permute(2, 0, 1), [new_h, new_w],
                            interpolation=InterpolationMode.BILINEAR, antialias=True)
        tv_boxes = F.resize(tv_tensors.BoundingBoxes(
            torch.from_numpy(boxes), format="XYXY", canvas_size=(height, width)), [new_h, new_w])
        valid = out["box_valid"]
        box_diff = np.abs(tv_boxes.numpy()[valid] - out["boxes"][valid])
        exact_box = max(exact_box, float(box_diff.max()))
        diff = np.abs(tv_image.permute(1, 2, 0).numpy() / 255.0 - out["image"][:new_h, :new_w])
        exact_pixel = max(exact_pixel, float(diff.max() * 255))
        exact_mean_pixel.append(float(diff.mean() * 255))

    rounding_box = 0.0
    for _ in range(50):  # general sizes: single scale vs per-axis ratios
        height, width = (int(v) for v in rng.integers(20, 1000, 2))
        size = int(rng.integers(16, 600))
        boxes = _random_boxes(rng, 10, height, width)
        out = DetectionTransform(size, 10, train=False)(
            {"image": np.zeros((height, width, 3), np.uint8), "boxes": boxes,
             "labels": np.ones(10, np.int32)})
        new_h, new_w = (int(v) for v in out["image_hw"])
        tv_boxes = F.resize(tv_tensors.BoundingBoxes(
            torch.from_numpy(boxes), format="XYXY", canvas_size=(height, width)), [new_h, new_w])
        valid = out["box_valid"]
        rounding_box = max(
            rounding_box, float(np.abs(tv_boxes.numpy()[valid] - out["boxes"][valid]).max()))

    shapes = SyntheticShapes(10**9)
    shapes[0]
    start = time.perf_counter()
    for i in range(300):
        shapes[i]
    shapes_ms = (time.perf_counter() - start) / 300 * 1e3
    transform = DetectionTransform(512, 100, train=True)
    example = {"image": rng.integers(0, 256, (480, 640, 3), dtype=np.uint8),
               "boxes": _random_boxes(rng, 20, 480, 640), "labels": np.ones(20, np.int32)}
    start = time.perf_counter()
    for _ in range(50):
        transform(example, rng)
    transform_ms = (time.perf_counter() - start) / 50 * 1e3

    result = {
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "machine": cpu_model(),
        "hflip_max_abs_box_diff": flip_box,
        "hflip_max_abs_pixel_diff": flip_pixel,
        "resize_integral_sizes_max_abs_box_diff": exact_box,
        "resize_integral_sizes_max_abs_pixel_diff_0_255": exact_pixel,
        "resize_integral_sizes_mean_abs_pixel_diff_0_255": float(np.mean(exact_mean_pixel)),
        "resize_general_sizes_max_abs_box_diff_vs_per_axis_ratio": rounding_box,
        "shapes_ms_per_128px_image": shapes_ms,
        "train_transform_ms_640x480_to_512": transform_ms,
    }
    write_result("detection_transforms_parity", result, echo=True)


if __name__ == "__main__":
    main()
