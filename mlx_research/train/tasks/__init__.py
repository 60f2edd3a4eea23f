"""Tasks plug a model family into the generic trainer; each is a module here, found by name."""

from __future__ import annotations

import importlib

from mlx_research.train.tasks.base import Task


def get_task(name: str) -> type[Task]:
    """The `Task` class of module `mlx_research.train.tasks.<name>`."""
    try:
        module = importlib.import_module(f"mlx_research.train.tasks.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"mlx_research.train.tasks.{name}":
            raise
        raise ValueError(
            f"unknown task {name!r}: no module mlx_research/train/tasks/{name}.py"
        ) from None
    return module.Task
