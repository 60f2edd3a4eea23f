"""mlx_research.config_checks: closed ranges (NaN outside), choices, batch divisibility and
experiment presets, each failing with one line that names the key; ``config.model`` built from
`config_fields` declarations, checked, and turned back into constructor arguments."""

import dataclasses
import json

import flax.linen as nn
import ml_collections
import pytest

from mlx_research.config_checks import (
    check_batch_divisible,
    check_choices,
    check_model_config,
    check_ranges,
    from_config,
    model_config,
    parse_presets,
)
from mlx_research.config_fields import ConfigField, config_field, config_fields
from mlx_research.errors import ConfigError
from mlx_research.train.tasks import get_task
from tests.configs import override


def _config(**fields):
    c = ml_collections.ConfigDict(dict(batch_size=24, grad_accum_steps=3))
    c.evals = ml_collections.ConfigDict(dict(val=dict(batch_size=8), test=dict(batch_size=16)))
    c.model = ml_collections.ConfigDict(dict(dropout=0.1, norm="batch"))
    return override(c, fields)


@pytest.mark.parametrize("value, ok", [
    (0.0, True), (0.5, True), (0.99, True), (-0.01, False), (1.0, False), (float("nan"), False)])
def test_ranges_are_closed_and_nan_is_outside(value, ok):
    config = _config(**{"model.dropout": value})
    if ok:
        check_ranges(config, {"model.dropout": (0, 0.99)})
    else:
        with pytest.raises(ConfigError, match=r"^config: 'model.dropout' must be in \[0, 0.99\]"):
            check_ranges(config, {"model.dropout": (0, 0.99)})


def test_an_open_upper_bound_names_the_lower_one():
    check_ranges(_config(), {"batch_size": (1, None)})
    with pytest.raises(ConfigError, match="'batch_size' must be >= 32, got 24"):
        check_ranges(_config(), {"batch_size": (32, None)})


def test_choices():
    check_choices(_config(), {"model.norm": ("batch", "group")})
    with pytest.raises(ConfigError, match="'model.norm' must be one of group, layer; got 'batch'"):
        check_choices(_config(), {"model.norm": ("group", "layer")})


def test_batch_divisible_checks_the_micro_batch_and_every_eval_batch():
    check_batch_divisible(_config(), 8, "8 devices")  # micro-batch 24 / 3 = 8, evals 8 and 16
    with pytest.raises(ConfigError, match="batch_size / grad_accum_steps = 8 is not divisible by "
                                          "the 3 devices"):
        check_batch_divisible(_config(), 3, "the 3 devices")  # 24 is, the micro-batch 8 is not
    with pytest.raises(ConfigError, match="evals.test.batch_size = 6 is not divisible by 4 dev"):
        check_batch_divisible(_config(**{"evals.test.batch_size": 6}), 4, "4 devices")


def test_presets():
    assert parse_presets(None, ("a", "b"), "x.py") == []
    assert parse_presets("b,a,", ("a", "b"), "x.py") == ["b", "a"]
    with pytest.raises(ValueError, match=r"x.py: unknown preset 'c' \(known: a, b\)"):
        parse_presets("a,c", ("a", "b"), "x.py")


class _Net(nn.Module):
    num_classes: int
    width: int = config_field(8, low=1)
    dropout: float = config_field(0.1, low=0, high=0.99)
    dtype: str = "float32"


class _DeepNet(_Net):
    act: str = config_field("relu", choices=("relu", "gelu"))
    sizes: tuple = config_field(((1, 2), (3,)))


@dataclasses.dataclass(frozen=True)
class _Head:
    input_hw: tuple
    thresh: float = config_field(0.5, low=0, high=1)


def test_config_fields_are_the_declared_ones_inherited_first():
    assert config_fields(_DeepNet) == {
        "width": ConfigField(8, 1, None, None), "dropout": ConfigField(0.1, 0, 0.99, None),
        "act": ConfigField("relu", None, None, ("relu", "gelu")),
        "sizes": ConfigField(((1, 2), (3,)), None, None, None)}
    assert config_fields(_Head) == {"thresh": ConfigField(0.5, 0, 1, None)}


def test_model_config_holds_the_defaults_in_declaration_order():
    model = model_config(_DeepNet, _Head)
    assert list(json.loads(model.to_json())) == ["width", "dropout", "act", "sizes", "thresh"]
    assert model.to_dict() == dict(width=8, dropout=0.1, act="relu", sizes=((1, 2), (3,)),
                                   thresh=0.5)
    assert _Net(num_classes=3).width == 8 and _Head((4, 4)).thresh == 0.5


def test_a_field_declared_twice_is_refused():
    with pytest.raises(ValueError, match="'model.width' of _DeepNet is declared by an earlier"):
        model_config(_Net, _DeepNet)


@pytest.mark.parametrize("key, value, message", [
    ("width", 0, r"^config: 'model.width' must be >= 1, got 0$"),
    ("dropout", 1.0, r"^config: 'model.dropout' must be in \[0, 0.99\], got 1.0$"),
    ("act", "tanh", r"^config: 'model.act' must be one of relu, gelu; got 'tanh'$"),
    ("thresh", -0.5, r"^config: 'model.thresh' must be in \[0, 1\], got -0.5$"),
])
def test_check_model_config_names_the_field(key, value, message):
    config = ml_collections.ConfigDict(dict(model=model_config(_DeepNet, _Head)))
    check_model_config(config, _DeepNet, _Head)
    config.model[key] = value
    with pytest.raises(ConfigError, match=message):
        check_model_config(config, _DeepNet, _Head)


def test_from_config_round_trip():
    model = model_config(_DeepNet, _Head)
    assert from_config(_DeepNet, model, num_classes=3) == _DeepNet(num_classes=3)
    model.update(width=16, act="gelu", thresh=0.25)
    net = from_config(_DeepNet, model, num_classes=3, dtype="bfloat16")
    assert (net.num_classes, net.width, net.dropout, net.act, net.dtype) == (
        3, 16, 0.1, "gelu", "bfloat16")
    assert from_config(_Head, model, input_hw=(4, 4)) == _Head((4, 4), thresh=0.25)
    with pytest.raises(TypeError, match="multiple values for keyword argument 'width'"):
        from_config(_DeepNet, model, num_classes=3, width=4)


@pytest.mark.parametrize("task", ["faster_rcnn", "yolo", "detr", "report", "nadm", "mkmia",
                                  "seq2seq"])
def test_every_task_model_config_is_its_parts_fields(task):
    """config.model of every task holds exactly the config fields of its model parts, with the
    values the tasks always had (spot checks), and passes its checks."""
    cls = get_task(task)
    config = cls.default_config()
    names = [name for part in cls.model_parts for name in config_fields(part)]
    assert list(json.loads(config.model.to_json())) == names  # config.json's order
    check_model_config(config, *cls.model_parts)
    expected = {"faster_rcnn": ("box_detections_per_img", 100), "yolo": ("grid_size", 7),
                "detr": ("num_queries", 100), "report": ("d_model", 512),
                "nadm": ("semantic_topk", 25), "mkmia": ("align_dim", 64),
                "seq2seq": ("d_model", 128)}[task]
    assert config.model[expected[0]] == expected[1]
