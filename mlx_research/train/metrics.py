"""Run outputs: scalars as JSON lines and TensorBoard, images as PNGs, a console progress line.

Layout of a workdir written by :class:`MetricWriter`::

  workdir/metrics.jsonl                 one {"step": ..., name: value, ...} object per line
  workdir/tensorboard/                  tensorboardX event files (scalars and images)
  workdir/images/{name}_{step:08d}.png  images ("/" in a name becomes "_")
  workdir/config.json                   the run's configuration
"""

from __future__ import annotations

import datetime
import json
import math
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Self, TextIO

import numpy as np
from PIL import Image
from tensorboardX import SummaryWriter

_METRICS_FILE = "metrics.jsonl"


def _to_uint8_image(image: Any) -> np.ndarray:
    """Converts ``[H, W]`` or ``[H, W, C]`` (C in 1, 3, 4) uint8 or [0, 1] float to uint8 HW(C)."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (3, 4)):
        raise ValueError(f"image shape {image.shape} is not [H, W] or [H, W, C] with C in 1, 3, 4.")
    if image.dtype == np.uint8:
        return image
    return np.round(np.clip(image.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


class MetricWriter:
    """Writes scalars, images and the config of one run; a no-op when ``enabled=False``.

    Args:
      workdir: run directory, created if missing.
      enabled: False on non-primary hosts: nothing is created or written.
    """

    def __init__(self, workdir: str | Path, *, enabled: bool = True) -> None:
        self.workdir = Path(workdir)
        self.enabled = enabled
        self._tb: SummaryWriter | None = None
        if enabled:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._tb = SummaryWriter(logdir=str(self.workdir / "tensorboard"))

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        """Appends ``{"step": step, **scalars}`` to metrics.jsonl and logs them to TensorBoard.

        Args:
          step: training step.
          scalars: name -> Python, numpy or 0-d jax number; stored as a float.
        """
        if not self.enabled:
            return
        values = {name: float(value) for name, value in scalars.items()}
        with open(self.workdir / _METRICS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": int(step), **values}) + "\n")
        for name, value in values.items():
            self._tb.add_scalar(name, value, global_step=int(step))

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        """Saves each image as a PNG and to TensorBoard.

        Args:
          step: training step.
          images: name -> ``[H, W]`` or ``[H, W, C]`` (C in 1, 3, 4) array, uint8 or float in
            [0, 1] (clipped).
        """
        if not self.enabled:
            return
        image_dir = self.workdir / "images"
        image_dir.mkdir(exist_ok=True)
        for name, image in images.items():
            pixels = _to_uint8_image(image)
            file_name = f"{name.replace('/', '_')}_{int(step):08d}.png"
            Image.fromarray(pixels).save(image_dir / file_name)
            dataformats = "HW" if pixels.ndim == 2 else "HWC"
            self._tb.add_image(name, pixels, global_step=int(step), dataformats=dataformats)

    def write_config(self, config: Any) -> None:
        """Writes config.json from an ``ml_collections.ConfigDict`` or a plain mapping."""
        if not self.enabled:
            return
        as_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        text = json.dumps(as_dict, indent=2, sort_keys=True, default=str)
        (self.workdir / "config.json").write_text(text + "\n", encoding="utf-8")

    def flush(self) -> None:
        """Flushes pending TensorBoard events (the JSON lines are written immediately)."""
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """Flushes and closes the TensorBoard writer; later writes are an error."""
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_metrics(workdir: str | Path) -> list[dict[str, float]]:
    """Reads back the scalars written by :meth:`MetricWriter.write_scalars`, in write order."""
    with open(Path(workdir) / _METRICS_FILE, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class ProgressLogger:
    """Prints a one-line progress report at most once every ``every_steps`` steps.

    A line is printed when ``step`` enters a new multiple of ``every_steps``, e.g.
    ``step   200/2000 | loss 1.2345 | acc 0.53 | 45.2 steps/s | ETA 0:00:39``. The rate is
    measured over the steps and wall time since the previous line (or since construction), and
    the ETA extrapolates it to ``total_steps``.

    Args:
      total_steps: last step of the run.
      start_step: step the run starts (or resumes) from.
      every_steps: printing interval in steps.
      stream: where lines go.
      clock: seconds as a float; ``time.perf_counter`` unless a test injects a fake.
    """

    def __init__(
        self,
        total_steps: int,
        *,
        start_step: int = 0,
        every_steps: int = 100,
        stream: TextIO = sys.stdout,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if every_steps < 1:
            raise ValueError(f"every_steps={every_steps} must be >= 1.")
        self.total_steps = total_steps
        self.every_steps = every_steps
        self.stream = stream
        self._clock = clock
        self._last_step = start_step
        self._last_time = clock()

    def update(self, step: int, scalars: Mapping[str, Any] | None = None) -> str | None:
        """Records that ``step`` finished; prints and returns the line if one is due.

        Args:
          step: the step just completed.
          scalars: name -> number shown as ``name value`` (5 significant digits).

        Returns:
          The printed line, or None when no line was due.
        """
        if step // self.every_steps <= self._last_step // self.every_steps:
            return None
        now = self._clock()
        elapsed = now - self._last_time
        rate = (step - self._last_step) / elapsed if elapsed > 0 else math.inf
        eta = datetime.timedelta(seconds=round(max(self.total_steps - step, 0) / rate))
        width = len(str(self.total_steps))
        parts = [f"step {step:>{width}}/{self.total_steps}"]
        parts += [f"{name} {float(value):.5g}" for name, value in (scalars or {}).items()]
        parts += [f"{rate:.1f} steps/s", f"ETA {eta}"]
        line = " | ".join(parts)
        print(line, file=self.stream, flush=True)
        self._last_step, self._last_time = step, now
        return line
