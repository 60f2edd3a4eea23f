"""Checks of config fields that tasks and the trainer share, each failing with one line that
names the key (leaf module: imports only `mlx_research.errors`)."""

from __future__ import annotations

from typing import Any

import ml_collections

from mlx_research.errors import ConfigError


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
