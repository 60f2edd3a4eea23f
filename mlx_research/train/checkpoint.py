"""Orbax checkpoints of the train state and the data-iterator state, saved together.

Layout: WORKDIR/checkpoints/<step>/{state, data}. Saves are asynchronous (training goes on while
a background thread writes) and atomic (orbax writes a temporary directory and renames it when
complete, so a run killed mid-save leaves the previous checkpoints intact). Restoring takes an
abstract state whose leaves carry the target shardings, so a checkpoint written on one mesh
restores onto any other.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """No usable checkpoint (one line naming the directory and step)."""


class Checkpointer:
    """Saves and restores (train state, data-iterator state) pairs under `directory`."""

    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=async_save
            ),
        )

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints on disk, ascending."""
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict[str, Any] | None) -> None:
        """Starts saving (asynchronously) unless `step` is already saved."""
        if step in self.manager.all_steps():
            return
        items = {"state": ocp.args.StandardSave(state)}
        if data_state is not None:
            items["data"] = ocp.args.JsonSave(data_state)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any] | None]:
        """Restores checkpoint `step` onto the shardings of `abstract_state` (ShapeDtypeStruct leaves)."""
        if step not in self.steps():
            raise CheckpointError(
                f"no checkpoint for step {step} in {self.directory} "
                f"(available: {self.steps() or 'none'})"
            )
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if os.path.isdir(os.path.join(self.directory, str(step), "data")):
            items["data"] = ocp.args.JsonRestore()
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"], restored.get("data")

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict[str, Any] | None] | None:
        """The newest checkpoint that restores; a corrupt or partial one is reported and skipped.

        Returns (step, state, data_state), or None if the directory holds no checkpoint.
        """
        steps = self.steps()
        for step in reversed(steps):
            try:
                return (step, *self.restore(step, abstract_state))
            except Exception as e:  # pylint: disable=broad-except
                reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                log.warning(
                    "checkpoint step %d in %s is corrupt or partial (%s: %s); trying the previous one",
                    step,
                    self.directory,
                    type(e).__name__,
                    reason[:200],
                )
        if steps:
            raise CheckpointError(
                f"none of the checkpoints {steps} in {self.directory} could be restored"
            )
        return None

    def reached_preemption(self, step: int) -> bool:
        """Multi-host-safe check for a preemption notice (Cloud TPU maintenance events)."""
        return self.manager.reached_preemption(step)

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStruct leaves of `tree` carrying `shardings`: the target of a restore."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )
