"""R2Gen's image transforms for report generation, applied to each view of a study separately.

Training (torchvision ``Resize(resize)``, ``RandomCrop(crop)``, ``RandomHorizontalFlip()``,
``ToTensor()``, ``Normalize(mean, std)``): the shorter side is resized to ``resize`` with the
aspect ratio kept (the longer side ``int(resize * long / short)``, as torchvision computes it),
a ``crop x crop`` window is cut at a uniformly drawn offset and flipped left-right with
probability 0.5. Evaluation (``Resize((crop, crop))``, ``ToTensor()``, ``Normalize``): both sides
are resized to ``crop``. Resizing is PIL's bilinear filter on the uint8 image (what torchvision
runs for PIL images), then values are divided by 255 and normalised in float32. R2Gen calls the
transform once per view, so every view gets its own crop offset and flip.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from mlx_research.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def shorter_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(new height, new width) of torchvision's ``Resize(size)``: the shorter side becomes
    ``size``, the longer ``int(size * long / short)`` (truncated)."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


class ReportImageTransform:
    """Resizes, crops, flips and normalises the views of one study.

    Args:
      resize: training resize of the shorter side (R2Gen: 256).
      crop: output side (R2Gen: 224); training crops it from the resized image, evaluation
        resizes to it directly. At most ``resize``.
      train: random crop and flip (True) or plain resize (False).
      hflip: training flips left-right with probability 0.5 (R2Gen); False for data whose reports
        name sides (the synthetic studies), where a flip would contradict the report.
      mean, std: per-channel normalisation of the [0, 1] values, one number per input channel
        (ImageNet's three for RGB; the caller's one for grayscale).
    """

    def __init__(
        self,
        *,
        resize: int = 256,
        crop: int = 224,
        train: bool,
        hflip: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        if not (isinstance(crop, int) and isinstance(resize, int) and 1 <= crop <= resize):
            raise ConfigError(f"image sizes crop={crop!r} and resize={resize!r} must be integers "
                              "with 1 <= crop <= resize.")
        self.mean = np.asarray(mean, np.float32).reshape(-1)
        self.std = np.asarray(std, np.float32).reshape(-1)
        if self.mean.shape != self.std.shape or np.any(self.std <= 0):
            raise ConfigError(f"image normalisation mean={mean!r}, std={std!r} must have the same "
                              "length and positive std.")
        self.resize, self.crop, self.train, self.hflip = resize, crop, train, hflip

    def __call__(
        self, views: np.ndarray | Sequence[np.ndarray], rng: np.random.Generator | None = None
    ) -> np.ndarray:
        """Transforms the views of a study.

        Args:
          views: uint8 [V, H, W, C] or [V, H, W] (grayscale, C = 1), or a list of V arrays
            [H_v, W_v, C] / [H_v, W_v] whose sizes may differ; C is 1 or 3 and equals
            ``len(mean)``.
          rng: required for training; per view, in this order, the crop's top offset
            ``rng.integers(0, H' - crop + 1)``, its left offset ``rng.integers(0, W' - crop + 1)``
            (H', W' the resized size) and, with ``hflip``, the flip ``rng.random() < 0.5``.

        Returns:
          float32 [V, crop, crop, C].
        """
        if self.train and rng is None:
            raise ValueError("the training transform needs an rng (numpy Generator).")
        return np.stack([self._view(np.asarray(view), rng) for view in views])

    def _view(self, view: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        if view.dtype != np.uint8 or view.ndim not in (2, 3):
            raise ValueError(f"a view must be uint8 [H, W] or [H, W, C]; got {view.dtype} "
                             f"{list(view.shape)}.")
        channels = 1 if view.ndim == 2 else view.shape[2]
        if channels not in (1, 3) or channels != self.mean.size:
            raise ValueError(f"a view has {channels} channel(s); mean/std have {self.mean.size} "
                             "(1 or 3 channels, as many as mean and std).")
        image = Image.fromarray(view.reshape(view.shape[:2]) if channels == 1 else view)
        height, width = view.shape[:2]
        if self.train:
            new_height, new_width = shorter_side_size(height, width, self.resize)
            image = image.resize((new_width, new_height), Image.Resampling.BILINEAR)
            top = int(rng.integers(0, new_height - self.crop + 1))
            left = int(rng.integers(0, new_width - self.crop + 1))
            image = image.crop((left, top, left + self.crop, top + self.crop))
            if self.hflip and rng.random() < 0.5:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        else:
            image = image.resize((self.crop, self.crop), Image.Resampling.BILINEAR)
        pixels = np.asarray(image, np.float32).reshape(self.crop, self.crop, channels)
        return (pixels / np.float32(255.0) - self.mean) / self.std
