"""Tasks plug a model family into the generic trainer; each is a module, found by name.

`config.task = "seq2seq"` names `mlx_research.train.tasks.seq2seq`; a dotted name such as
`"my_project.tasks.segmentation"` names any importable module. The module defines `Task`.
"""

from __future__ import annotations

import importlib

from mlx_research.train.tasks.base import Task


def get_task(name: str) -> type[Task]:
    """The `Task` class of the task module `name`."""
    module_name = name if "." in name else f"mlx_research.train.tasks.{name}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if not module_name.startswith(str(e.name)):
            raise
        raise ValueError(f"unknown task {name!r}: no module {module_name}") from None
    return module.Task
