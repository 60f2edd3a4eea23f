"""Tests for mlx_research.train.metrics: JSON lines, PNGs, TensorBoard events, progress lines."""

import io
import json
import struct

import ml_collections
import numpy as np
import pytest
from PIL import Image
from tensorboardX.proto import event_pb2

from mlx_research.train.metrics import MetricWriter, ProgressLogger, read_metrics


def _tb_scalars(workdir) -> dict[tuple[str, int], float]:
    """Parses the TFRecord-framed event files: u64 length, u32 crc, payload, u32 crc."""
    values = {}
    for path in sorted((workdir / "tensorboard").glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 16 + length
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    values[(value.tag, event.step)] = value.simple_value
    return values


def test_scalars_round_trip_through_jsonl_and_tensorboard(tmp_path):
    writer = MetricWriter(tmp_path / "run")
    writer.write_scalars(10, {"loss": np.float32(0.5), "acc": np.array(0.25)})
    writer.write_scalars(20, {"loss": 0.125, "lr": 3})
    writer.close()
    rows = read_metrics(tmp_path / "run")
    assert rows == [{"step": 10, "loss": 0.5, "acc": 0.25}, {"step": 20, "loss": 0.125, "lr": 3.0}]
    assert all(type(v) is float for row in rows for k, v in row.items() if k != "step")
    tb = _tb_scalars(tmp_path / "run")
    assert tb[("loss", 10)] == 0.5 and tb[("acc", 10)] == 0.25 and tb[("lr", 20)] == 3.0


def test_images_written_as_png_and_to_tensorboard(tmp_path):
    gray = np.array([[0.0, 0.2, 1.0], [1.5, -0.3, 0.6]])
    rgb = np.arange(2 * 4 * 3, dtype=np.uint8).reshape(2, 4, 3)
    single = np.full((3, 5, 1), 0.2, np.float32)
    with MetricWriter(tmp_path) as writer:
        writer.write_images(7, {"gray": gray, "rgb": rgb, "val/single": single})
    with Image.open(tmp_path / "images" / "gray_00000007.png") as im:
        assert im.size == (3, 2) and im.mode == "L"
        np.testing.assert_array_equal(np.asarray(im), [[0, 51, 255], [255, 0, 153]])
    with Image.open(tmp_path / "images" / "rgb_00000007.png") as im:
        assert im.size == (4, 2) and im.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(im), rgb)
    with Image.open(tmp_path / "images" / "val_single_00000007.png") as im:
        assert im.size == (5, 3)
        np.testing.assert_array_equal(np.asarray(im), 51)
    events = b"".join(p.read_bytes() for p in (tmp_path / "tensorboard").iterdir())
    assert b"val/single" in events and b"\x89PNG" in events


def test_bad_image_shape_is_rejected(tmp_path):
    with MetricWriter(tmp_path) as writer, pytest.raises(ValueError, match="shape"):
        writer.write_images(0, {"bad": np.zeros((2, 2, 2))})


def test_write_config_from_configdict_and_dict(tmp_path):
    config = ml_collections.ConfigDict({"optim": {"lr": 3e-4}, "name": "x", "sizes": (1, 2)})
    with MetricWriter(tmp_path / "a") as writer:
        writer.write_config(config)
    with MetricWriter(tmp_path / "b") as writer:
        writer.write_config({"seed": 1})
    expected = {"optim": {"lr": 3e-4}, "name": "x", "sizes": [1, 2]}
    assert json.loads((tmp_path / "a" / "config.json").read_text()) == expected
    assert json.loads((tmp_path / "b" / "config.json").read_text()) == {"seed": 1}


def test_disabled_writer_writes_nothing(tmp_path):
    writer = MetricWriter(tmp_path / "run", enabled=False)
    writer.write_scalars(1, {"loss": 1.0})
    writer.write_images(1, {"im": np.zeros((2, 2))})
    writer.write_config({"a": 1})
    writer.flush()
    writer.close()
    assert not (tmp_path / "run").exists()


class _FakeClock:
    def __init__(self, times):
        self._times = iter(times)

    def __call__(self) -> float:
        return next(self._times)


def test_progress_line_format_rate_and_eta():
    stream = io.StringIO()
    clock = _FakeClock([0.0, 4.0, 12.0])
    logger = ProgressLogger(2000, every_steps=100, stream=stream, clock=clock)
    assert logger.update(50, {"loss": 2.0}) is None
    line = logger.update(200, {"loss": 1.2345, "acc": 0.53})
    # 200 steps in 4 s = 50 steps/s; 1800 remaining -> 36 s.
    assert line == "step  200/2000 | loss 1.2345 | acc 0.53 | 50.0 steps/s | ETA 0:00:36"
    assert logger.update(250) is None
    # Rate over the interval since the last line only: 100 steps in 8 s.
    assert logger.update(300) == "step  300/2000 | 12.5 steps/s | ETA 0:02:16"
    assert stream.getvalue().splitlines() == [line, "step  300/2000 | 12.5 steps/s | ETA 0:02:16"]


def test_progress_resumed_run_measures_from_start_step():
    stream = io.StringIO()
    logger = ProgressLogger(1000, start_step=150, every_steps=100, stream=stream,
                            clock=_FakeClock([10.0, 12.0]))
    assert logger.update(199) is None
    assert logger.update(230) == "step  230/1000 | 40.0 steps/s | ETA 0:00:19"
