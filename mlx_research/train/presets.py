"""Experiment presets: the `:ARG` of `./launch.sh EXPERIMENT.py:ARG`, applied by one helper.

An experiment file builds its config and ends with

    return apply_presets(config, arg, {"quick": quick, "runlocal": runlocal(6, ...)}, __file__)

`arg` holds comma-separated preset names, applied in the order given; an unknown name is one
ValueError naming the file and the known presets (a file without presets passes `{}`, so any
`:ARG` is refused). `runlocal` builds the smoke-test preset every built-in experiment has.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from mlx_research.config_checks import parse_presets

Preset = Callable[[ml_collections.ConfigDict], None]


def runlocal(steps: int, *, log_every: int = 2, checkpoint_every: int | None = None,
             eval_every: int | None = None, **eval_settings: Any) -> Preset:
    """The smoke-test preset: `steps` training steps with progress every `log_every`, a checkpoint
    every `checkpoint_every` and each evaluator every `eval_every` steps (default: at the end
    only), every `config.evals` entry updated with `eval_settings` (e.g. num_examples=16,
    batch_size=8)."""

    def apply(config: ml_collections.ConfigDict) -> None:
        config.total_steps, config.log_every = steps, log_every
        config.checkpoint.every_steps = checkpoint_every or steps
        for entry in config.evals.values():
            entry.update(every_steps=eval_every or steps, **eval_settings)

    return apply


def apply_presets(config: ml_collections.ConfigDict, arg: str | None,
                  presets: Mapping[str, Preset], source: str,
                  overrides: str | None = None) -> ml_collections.ConfigDict:
    """Applies the presets named in `arg` ("a,b") to `config` (in place) and returns it.

    Args:
      config: the experiment's config.
      arg: the text after the config file's ":" (None or "" = no preset).
      presets: name -> function changing the config.
      source: the experiment file (its name appears in errors).
      overrides: a config section (e.g. "data") whose fields `arg` may also set as
        "field=value" items (the value converted to the field's type).
    """
    names = []
    for item in filter(None, (arg or "").split(",")):
        if overrides and "=" in item:
            key, value = item.split("=", 1)
            section = config[overrides]
            if key not in section:
                raise ValueError(f"{os.path.basename(source)}: unknown preset key {key!r} "
                                 f"({overrides} fields: {', '.join(section)})")
            section[key] = type(section[key])(value)
        else:
            names.append(item)
    for name in parse_presets(",".join(names), tuple(presets), os.path.basename(source)):
        presets[name](config)
    return config
