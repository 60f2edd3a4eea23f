"""Checks of config fields that tasks and the trainer share, each failing with one line that
names the key, and ``config.model`` built from the dataclasses it configures (leaf module:
imports only `mlx_research.errors` and `mlx_research.config_fields`)."""

from __future__ import annotations

from typing import Any, TypeVar

import ml_collections

from mlx_research.config_fields import ConfigField, config_fields
from mlx_research.errors import ConfigError

T = TypeVar("T")


def _get(config: Any, key: str) -> Any:
    for part in key.split("."):
        config = config[part]
    return config


def check_ranges(config: ml_collections.ConfigDict, ranges: dict[str, tuple]) -> None:
    """Raises ConfigError naming the first field of `ranges` ({dotted key: (low, high)}, closed,
    None = unbounded) whose value lies outside (NaN included)."""
    for key, (low, high) in ranges.items():
        value = _get(config, key)
        if not ((low is None or value >= low) and (high is None or value <= high)):
            bound = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise ConfigError(f"config: {key!r} must be {bound}, got {value!r}")


def check_choices(config: ml_collections.ConfigDict, choices: dict[str, tuple]) -> None:
    """Raises ConfigError naming the first field of `choices` ({dotted key: allowed}) whose
    value is not allowed."""
    for key, allowed in choices.items():
        value = _get(config, key)
        if value not in allowed:
            raise ConfigError(f"config: {key!r} must be one of {', '.join(allowed)}; got {value!r}")


def check_batch_divisible(config: ml_collections.ConfigDict, divisor: int, what: str) -> None:
    """Raises ConfigError unless the micro-batch (batch_size / grad_accum_steps) and every
    evaluator's batch_size (`config.evals` filled in by `validate`) are multiples of `divisor`
    (`what` names it, e.g. "the 8 data devices")."""
    sizes = {"batch_size / grad_accum_steps": config.batch_size // config.grad_accum_steps}
    sizes.update({f"evals.{name}.batch_size": entry.batch_size
                  for name, entry in config.evals.items()})
    for name, size in sizes.items():
        if size % divisor:
            raise ConfigError(f"config: {name} = {size} is not divisible by {what}")


def parse_presets(arg: str | None, known: tuple[str, ...], source: str) -> list[str]:
    """The presets of an experiment argument ("a,b" after the config file's ":"), each one of
    `known`; an unknown one raises ValueError naming `source` (the config file) and the choices."""
    items = [item for item in (arg or "").split(",") if item]
    for item in items:
        if item not in known:
            choices = f"known: {', '.join(known)}" if known else "it has no presets"
            raise ValueError(f"{source}: unknown preset {item!r} ({choices})")
    return items


def model_config(*classes: type) -> ml_collections.ConfigDict:
    """``config.model`` of a task: the `config_fields` of `classes` (its model, then e.g. its
    criterion and postprocess) with their defaults, in that order. A name declared by two of
    them raises ValueError (every field has one default)."""
    return ml_collections.ConfigDict({name: f.default for name, f in _declared(classes).items()})


def check_model_config(config: ml_collections.ConfigDict, *classes: type) -> None:
    """Raises ConfigError naming the first ``model.<name>`` of `classes`' config fields whose
    value is not one of its choices or lies outside its range."""
    declared = _declared(classes)
    check_choices(config, {f"model.{name}": f.choices for name, f in declared.items()
                           if f.choices is not None})
    check_ranges(config, {f"model.{name}": (f.low, f.high) for name, f in declared.items()
                          if (f.low, f.high) != (None, None)})


def from_config(cls: type[T], model: ml_collections.ConfigDict, **runtime: Any) -> T:
    """``cls(**runtime, **values)``: `runtime` arguments (``num_classes``, ``dtype``, ...) and
    the values in `model` (``config.model``) of `cls`'s config fields."""
    return cls(**runtime, **{name: model[name] for name in config_fields(cls)})


def _declared(classes: tuple[type, ...]) -> dict[str, ConfigField]:
    declared: dict[str, ConfigField] = {}
    for cls in classes:
        for name, field in config_fields(cls).items():
            if name in declared:
                raise ValueError(f"config field 'model.{name}' of {cls.__name__} is declared by "
                                 f"an earlier class too")
            declared[name] = field
    return declared
