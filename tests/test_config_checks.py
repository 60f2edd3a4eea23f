"""mlx_research.config_checks: closed ranges (NaN outside), choices, batch divisibility and
experiment presets, each failing with one line that names the key."""

import ml_collections
import pytest

from mlx_research.config_checks import (
    check_batch_divisible,
    check_choices,
    check_ranges,
    parse_presets,
)
from mlx_research.errors import ConfigError


def _config(**fields):
    c = ml_collections.ConfigDict(dict(batch_size=24, grad_accum_steps=3))
    c.evals = ml_collections.ConfigDict(dict(val=dict(batch_size=8), test=dict(batch_size=16)))
    c.model = ml_collections.ConfigDict(dict(dropout=0.1, norm="batch"))
    for key, value in fields.items():
        *sections, name = key.split(".")
        section = c
        for part in sections:
            section = section[part]
        section[name] = value
    return c


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
