"""What every detector offers: a model, a criterion and a postprocess, and the targets they take.

A detector (`faster_rcnn.py`, `yolo.py`, `detr.py`) is three parts:

- the ``nn.Module``: images (and their valid size) -> raw outputs; in training it may also take
  the targets and a PRNG key (Faster R-CNN samples anchors and RoIs against them);
- a criterion: ``criterion(outputs, targets) -> ((loss_sum, weight), metrics)``; the trainer
  divides ``loss_sum`` by ``weight`` (summed over micro-batches and devices);
- a postprocess: ``postprocess(outputs, image_hw) -> detections``, the dict
  ``{"boxes" [B, D, 4] float32 xyxy pixels of the resized image, "scores" [B, D],
  "labels" [B, D] int32 in 1..K, "valid" [B, D] bool}``.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import jax


class DetectionTargets(NamedTuple):
    """Padded ground truth of a batch; an image may have no valid box.

    Attributes:
      boxes: [B, M, 4] float32 xyxy pixels of the resized image (padding rows anything finite).
      labels: [B, M] int32 in 1..K (padding rows anything).
      valid: [B, M] bool, False for padding.
      image_hw: [B, 2] int, valid (unpadded) height and width of each image.
    """

    boxes: jax.Array
    labels: jax.Array
    valid: jax.Array
    image_hw: jax.Array


class Criterion(Protocol):
    """A detector's training loss."""

    def __call__(
        self, outputs: Any, targets: DetectionTargets
    ) -> tuple[tuple[jax.Array, jax.Array], dict[str, jax.Array]]:
        """(model outputs, targets) -> ((loss_sum, weight), {metric: [] float32})."""


class Postprocess(Protocol):
    """A detector's outputs -> detections."""

    def __call__(self, outputs: Any, image_hw: jax.Array) -> dict[str, jax.Array]:
        """(model outputs, image_hw [B, 2]) -> {"boxes", "scores", "labels", "valid"} [B, D]."""
