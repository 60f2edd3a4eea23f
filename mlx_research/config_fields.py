"""Config fields declared on the dataclasses they configure (leaf module: imports nothing of the
package).

A model, criterion or postprocess field declared with `config_field` is the config field
``model.<name>`` of the tasks that use that class: the field's default is the config default
(its only one), and its range and choices sit on the same line. Fields declared plainly
(``num_classes``, ``dtype``, ``vocab_size``, ...) are runtime arguments that tasks pass
themselves. `mlx_research.config_checks` builds ``config.model`` from these declarations, checks
it and turns it back into constructor arguments.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

_KEY = "config_field"  # the dataclass field metadata key holding the range and choices


class ConfigField(NamedTuple):
    """A declared config field: its default, closed range (None = unbounded) and choices."""

    default: Any
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None


def config_field(default: Any, *, low: float | None = None, high: float | None = None,
                 choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field that is a config field, with its default, its closed range
    ``[low, high]`` (None: unbounded) and its allowed values (None: any)."""
    return dataclasses.field(default=default, metadata={_KEY: (low, high, choices)})


def config_fields(cls: type) -> dict[str, ConfigField]:
    """{name: ConfigField} of the fields of dataclass `cls` declared with `config_field`
    (inherited ones first), in declaration order."""
    return {f.name: ConfigField(f.default, *f.metadata[_KEY])
            for f in dataclasses.fields(cls) if _KEY in f.metadata}
