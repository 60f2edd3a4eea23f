"""Orbax checkpoints of the train state and the data-iterator state, saved together.

Layout: WORKDIR/checkpoints/<step>/{state, data, checksums.json}. Saves are asynchronous and atomic
(orbax writes a temporary directory, we add the checksums of its files, orbax renames it). A restore
targets an abstract state whose leaves carry the shardings (any mesh). It first checks the files
against their checksums and the saved tree against the target: a corrupt or partial checkpoint is
moved to checkpoints/corrupt/<step> (kept; no longer counted by `keep`; its step can be written
again), a tree that does not fit the model raises `CheckpointMismatch` and stays in place. Every
problem is one line (a warning or a CheckpointError); orbax's tracebacks are kept off the log.
"""

from __future__ import annotations

import contextlib
import gc
import glob
import logging
import os
import re
import sys
from typing import Any, Iterator

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from mlx_research.train import checksums

log = logging.getLogger(__name__)
CORRUPT = "corrupt"  # subdirectory holding the checkpoints moved aside


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or restored (one line naming the step and directory)."""


class CheckpointCorrupt(CheckpointError):
    """A checkpoint failed verification (or, unverified, restoration); moved to corrupt/<step>."""


class CheckpointMismatch(CheckpointError):
    """A checkpoint's tree (paths, shapes, dtypes) differs from the restore target; kept."""


class _QuietOrbax(logging.Filter):
    """On the absl logger (orbax logs through absl): drops orbax's records carrying a traceback
    (the failure reaches our caller as one line) and, inside `_quiet`, all its warnings."""

    depth = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if f"{os.sep}orbax{os.sep}" not in record.pathname or record.levelno < logging.WARNING:
            return True
        return not (record.exc_info or self.depth)


_QUIET = _QuietOrbax()


@contextlib.contextmanager
def _quiet(collect: bool = False) -> Iterator[None]:
    """Orbax's warnings off the log while we read checkpoints (we report each problem once);
    with `collect`, also the tracebacks of the array reads orbax abandons on an error (printed
    through sys.unraisablehook when collected)."""
    _QUIET.depth += 1
    hook = sys.unraisablehook
    sys.unraisablehook = (lambda unraisable: None) if collect else hook
    try:
        yield
    finally:
        if collect:
            gc.collect()
        sys.unraisablehook = hook
        _QUIET.depth -= 1


def _reason(e: BaseException) -> str:
    """One line for an exception: the OS error where there is one, else type and message."""
    for cause in (e, e.__cause__, e.__context__):
        if isinstance(cause, OSError) and cause.errno:
            return f"[Errno {cause.errno}] {cause.strerror}"
    code = re.search(r"os_error_code='?(\d+)", str(e))  # tensorstore's wording of an OS error
    if code:
        return f"[Errno {code.group(1)}] {os.strerror(int(code.group(1)))}"
    text = " ".join(str(e).split())[:300]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _first_difference(saved: dict[tuple, Any], target: dict[tuple, Any]) -> str | None:
    """The first path (in the target's order) missing on one side or with another shape or
    dtype, as one line; None if the trees agree."""
    for keys in [*target, *(k for k in saved if k not in target)]:
        path = "/".join(str(k) for k in keys)
        if keys not in target:
            return f"{path} is in the checkpoint but not in the model"
        if keys not in saved:
            return f"{path} is in the model but not in the checkpoint"
        was, now = saved[keys], target[keys]
        was = (tuple(getattr(was, "shape", ())), str(getattr(was, "dtype", now.dtype)))
        now = (tuple(now.shape), str(now.dtype))
        if was != now:
            return f"{path}: checkpoint {was[0]} {was[1]}, model {now[0]} {now[1]}"
    return None


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


class Checkpointer:
    """Saves and restores (train state, data-iterator state) pairs under `directory`, keeping the
    newest `keep` (>= 1) complete checkpoints."""

    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
        if keep < 1:
            raise CheckpointError(f"checkpoint keep={keep}: at least 1 checkpoint must be kept")
        self.directory = os.path.abspath(directory)
        self._async = async_save
        self._saving: int | None = None  # the step whose save may still be in flight
        logging.getLogger("absl").addFilter(_QUIET)
        os.makedirs(self.directory, exist_ok=True)
        for name in sorted(os.listdir(self.directory)) if jax.process_index() == 0 else []:
            if name.isdigit() and not self._complete(self._step_dir(int(name))):  # a stray,
                error = self._move_aside(int(name), "no committed state item", init=True)
                log.warning("%s", error)  # so that it never counts toward `keep`
        _sync("checkpointer_strays_moved")
        callback = ocp.AsyncOptions(post_finalization_callback=self._write_checksums)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
            async_options=callback if async_save else None,
            cleanup_tmp_directories=True,  # left by a killed or failed save
        )
        handlers = {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()}
        with _quiet():
            self.manager = ocp.CheckpointManager(
                self.directory, item_handlers=handlers, options=options
            )

    def _step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    @staticmethod
    def _complete(step_dir: str) -> bool:
        """A committed step folder (what orbax writes when a save completes), else a stray."""
        markers = ("commit_success.txt", "_CHECKPOINT_METADATA")
        return os.path.isdir(os.path.join(step_dir, "state")) and any(
            os.path.exists(os.path.join(step_dir, m)) for m in markers
        )

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints on disk, ascending."""
        with _quiet():
            self.manager.reload()
        return sorted(self.manager.all_steps())

    # ------------------------------------------------------------------ saving
    def _write_checksums(self) -> None:
        """Orbax's post-finalization callback (primary process, before the commit rename)."""
        tmp = glob.glob(os.path.join(self.directory, f"{self._saving}.orbax-checkpoint-tmp*"))
        if len(tmp) == 1:  # else `_finish` writes them after the commit
            checksums.write(tmp[0])

    def _finish(self) -> None:
        """Waits for the pending save; CheckpointError naming the step if it failed."""
        step = self._saving
        if step is None:
            return
        try:
            self.manager.wait_until_finished()
            step_dir = self._step_dir(step)
            unsummed = not os.path.exists(os.path.join(step_dir, checksums.FILENAME))
            if jax.process_index() == 0 and os.path.isdir(step_dir) and unsummed:
                checksums.write(step_dir)
        except Exception as e:  # pylint: disable=broad-except
            raise self._write_error(step, e) from None
        finally:
            self._saving = None

    def _write_error(self, step: int, e: Exception) -> CheckpointError:
        return CheckpointError(
            f"writing checkpoint step {step} in {self.directory} failed: {_reason(e)}"
        )

    def save(self, step: int, state: Any, data_state: dict[str, Any] | None) -> None:
        """Starts saving (asynchronously) unless `step` is already saved. A failed write raises
        CheckpointError here, or at the next `save`, `wait` or `close`."""
        self._finish()
        if step in self.steps():  # read from disk: what `keep` counts
            return
        items = {"state": ocp.args.StandardSave(state)}
        if data_state is not None:
            items["data"] = ocp.args.JsonSave(data_state)
        self._saving = step
        try:
            self.manager.save(step, args=ocp.args.Composite(**items), force=True)
        except Exception as e:  # pylint: disable=broad-except
            self._saving = None
            raise self._write_error(step, e) from None
        if not self._async:
            self._finish()

    # ------------------------------------------------------------------ restoring
    def _saved_tree(self, step: int) -> dict[tuple, Any]:
        with _quiet():
            return ocp.tree.to_flat_dict(self.manager.item_metadata(step)["state"].tree)

    def mismatch(self, step: int, abstract_state: Any) -> str | None:
        """The first difference (path, shape, dtype) between checkpoint `step`'s saved tree and
        `abstract_state`, as one line, or None if they agree."""
        try:
            saved = self._saved_tree(step)
        except Exception as e:  # pylint: disable=broad-except
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory}: unreadable metadata ({_reason(e)})"
            ) from None
        return _first_difference(saved, ocp.tree.to_flat_dict(abstract_state))

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any] | None]:
        """Restores checkpoint `step` onto the shardings of `abstract_state` (ShapeDtypeStruct
        leaves). CheckpointMismatch if the saved tree differs from the target; CheckpointCorrupt,
        the step moved aside, if it fails its checksums (or, unverified, to restore)."""
        if step not in self.steps():
            raise CheckpointError(
                f"no checkpoint for step {step} in {self.directory} "
                f"(available: {self.steps() or 'none'})"
            )
        step_dir = self._step_dir(step)
        try:
            verified = checksums.verify(step_dir)
            if not verified:
                log.warning(
                    "checkpoint step %d in %s has no %s (older version, or killed before it was "
                    "written); restoring it unverified", step, self.directory, checksums.FILENAME,
                )
            saved = self._saved_tree(step)
        except Exception as e:  # pylint: disable=broad-except
            reason = str(e) if isinstance(e, checksums.ChecksumError) else _reason(e)
            raise self._move_aside(step, reason) from None
        problem = _first_difference(saved, ocp.tree.to_flat_dict(abstract_state))
        if problem:
            raise CheckpointMismatch(
                f"checkpoint step {step} in {self.directory} does not fit the model ({problem}); "
                "left in place: use the config it was written with, or another workdir"
            )
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if os.path.isdir(os.path.join(step_dir, "data")):
            items["data"] = ocp.args.JsonRestore()
        try:
            with _quiet(collect=True):
                restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # pylint: disable=broad-except
            if not verified:
                raise self._move_aside(step, _reason(e)) from None
            raise CheckpointError(  # the files are as written: not corruption (memory, devices..)
                f"checkpoint step {step} in {self.directory} matches its checksums but could "
                f"not be restored ({_reason(e)}); left in place"
            ) from None
        return restored["state"], restored.get("data")

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict[str, Any] | None] | None:
        """The newest checkpoint that restores, as (step, state, data_state); None if there is
        none. Each corrupt one is moved aside with one warning line and the previous one tried;
        CheckpointMismatch propagates at once (a changed model leaves checkpoints intact)."""
        steps = self.steps()
        for step in reversed(steps):
            try:
                return (step, *self.restore(step, abstract_state))
            except CheckpointCorrupt as e:
                log.warning("%s; trying the previous one", e)
        if steps:
            raise CheckpointError(
                f"none of the checkpoints {steps} in {self.directory} could be restored; "
                f"moved to {os.path.join(self.directory, CORRUPT)}"
            )
        return None

    def _move_aside(self, step: int, reason: str, init: bool = False) -> CheckpointCorrupt:
        """Moves step `step` to corrupt/<step> (suffixed if taken) and returns the error to report.
        Called by every process (`init`: by process 0 alone, before the manager exists)."""
        corrupt = os.path.join(self.directory, CORRUPT)
        target, n = os.path.join(corrupt, str(step)), 1
        while os.path.exists(target):
            target, n = os.path.join(corrupt, f"{step}.{n}"), n + 1
        if not init:
            _sync(f"checkpoint_{step}_move_aside")  # all have looked before process 0 moves
        if jax.process_index() == 0:
            os.makedirs(corrupt, exist_ok=True)
            os.rename(self._step_dir(step), target)
        if not init:
            _sync(f"checkpoint_{step}_moved_aside")
            self.steps()  # reloads orbax's list of steps, which `keep` counts
        return CheckpointCorrupt(
            f"checkpoint step {step} in {self.directory} is corrupt or partial ({reason}); "
            f"moved to {target}"
        )

    # ------------------------------------------------------------------ lifecycle
    def reached_preemption(self, step: int) -> bool:
        """Multi-host-safe check for a preemption notice (Cloud TPU maintenance events)."""
        return self.manager.reached_preemption(step)

    def wait(self) -> None:
        """Blocks until pending saves are on disk (CheckpointError if one failed)."""
        self._finish()

    def close(self) -> None:
        try:
            self._finish()
        finally:
            self.manager.close()


def abstract_like(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStruct leaves of `tree` carrying `shardings`: the target of a restore."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )
