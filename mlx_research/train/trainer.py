"""The generic trainer: one path from config to checkpoints and metrics for every task.

Reads top to bottom: config -> mesh -> task and input -> abstract state and shardings ->
optimizer -> jitted steps -> initial state (checkpoint, or seed + init_from) -> evaluators (built
by name from `config.evals`, each run by `evaluation.loop`) -> training loop (logging, evaluations
at each evaluator's steps, checkpoints, preemption, non-finite guard).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from mlx_research.config_checks import check_batch_divisible
from mlx_research.data.pipeline import (
    make_train_iterator,
    to_global_batch,
    transformed_train_stream,
)
from mlx_research.errors import ConfigError
from mlx_research.evaluation.loop import EvaluationLoop
from mlx_research.nn.barrier import CPU_COMPILER_OPTIONS
from mlx_research.parallel.mesh import create_mesh
from mlx_research.parallel.sharding import batch_sharding, get_rules, logical_shardings
from mlx_research.train import config as config_lib
from mlx_research.train.checkpoint import Checkpointer, CheckpointMismatch, abstract_like
from mlx_research.train.init_from import load_variables, merge_pretrained
from mlx_research.train.metrics import MetricWriter, ProgressLogger
from mlx_research.train.optim import (
    group_learning_rates,
    make_optimizer,
    map_opt_state_params,
)
from mlx_research.train.state import TrainState
from mlx_research.train.step import make_train_step
from mlx_research.train.tasks import get_task
from mlx_research.train.workdir_lock import WorkdirLock


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/Inf loss, gradient or parameter; the run stopped."""


class Trainer:
    """Builds everything a run needs from `config` and owns `workdir` (checkpoints, metrics)."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, devices=None):
        """`devices`: the devices of the mesh (default all; a subset for tests and tools)."""
        # ---------------------------------------------------------------- config
        config_lib.validate(config)
        self.config, self.workdir = config, workdir
        self.is_primary = jax.process_index() == 0

        # ---------------------------------------------------------------- mesh
        try:
            self.mesh = create_mesh(dict(config.mesh), devices=devices)
        except ValueError as e:
            raise ConfigError(f"config: mesh: {e}") from None
        self.rules = get_rules(config.sharding_rules)
        data_shards = self.mesh.shape["data"]
        check_batch_divisible(
            config, data_shards, f"the {data_shards} data-parallel devices of mesh "
            f"{dict(self.mesh.shape)}"
        )

        # ---------------------------------------------------------------- task and input
        dtype = jnp.bfloat16 if config.compute_dtype == "bfloat16" else jnp.float32
        self.task = get_task(config.task)(config, dtype)
        self.batch_sharding = batch_sharding(self.mesh)
        self.train_source = self.task.train_source()
        example = transformed_train_stream(
            self.train_source, seed=config.seed, transform=self.task.train_transform
        )[0]
        self.init_batch = {k: np.stack([np.asarray(v)] * data_shards) for k, v in example.items()}

        # ---------------------------------------------------------------- state and shardings
        with self.mesh_context():
            boxed = jax.eval_shape(self.task.init_variables, jax.random.PRNGKey(0), self.init_batch)
            self.variable_shardings = logical_shardings(boxed, self.mesh, self.rules)
        abstract_params = nn.meta.unbox(boxed)["params"]  # outside the mesh: no constraints
        self.tx, self.schedule = make_optimizer(config.optim, abstract_params, config.total_steps)
        replicated = NamedSharding(self.mesh, P())
        abstract_opt = jax.eval_shape(self.tx.init, abstract_params)
        opt_shardings = map_opt_state_params(
            self.tx,
            lambda _, s: s,
            abstract_opt,
            self.variable_shardings["params"],
            transform_non_params=lambda _: replicated,
        )
        self.state_shardings = TrainState(
            step=replicated,
            params=self.variable_shardings["params"],
            model_state={k: v for k, v in self.variable_shardings.items() if k != "params"},
            opt_state=opt_shardings,
            rng=replicated,
            bad_step=replicated,
        )

        # ---------------------------------------------------------------- jitted steps
        self._init = jax.jit(self._init_state, out_shardings=self.state_shardings)
        learning_rates = lambda step: group_learning_rates(config.optim, self.schedule, step)
        self.train_step = jax.jit(
            make_train_step(self.task, self.tx, learning_rates, config.grad_accum_steps,
                            config.rng_impl),
            in_shardings=(self.state_shardings, self.batch_sharding),
            out_shardings=(self.state_shardings, replicated),
            donate_argnums=0,
            compiler_options=CPU_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None,
        )

        # ---------------------------------------------------------------- evaluators
        kinds = type(self.task).evaluator_kinds()
        self.evals = {
            name: EvaluationLoop(kinds[entry.type].build(self.task, entry),
                                 variable_shardings=self.variable_shardings,
                                 batch_sharding=self.batch_sharding, batch_size=entry.batch_size,
                                 num_workers=config.data.num_workers)
            for name, entry in config.evals.items()
        }
        # ---------------------------------------------------------------- workdir
        self.lock = self._lock_workdir() if self.is_primary else None
        try:
            self.checkpointer = Checkpointer(
                os.path.join(workdir, "checkpoints"),
                keep=config.checkpoint.keep,
                async_save=config.checkpoint.async_save,
            )
            self.writer = MetricWriter(workdir, enabled=self.is_primary)
            if self.is_primary:
                self.task.prepare_workdir(workdir)
        except BaseException:
            if self.lock:
                self.lock.release()
            raise
        self.preempted = False  # set when a SIGTERM/SIGINT stopped `train` early

    def _lock_workdir(self) -> WorkdirLock:
        try:
            os.makedirs(self.workdir, exist_ok=True)
            lock = WorkdirLock(os.path.join(self.workdir, "lock"))
            note = lock.acquire()
        except OSError as e:
            raise ConfigError(f"workdir {self.workdir}: {e.strerror or e}") from None
        if note:
            self._say(note)
        return lock

    def _say(self, message: str) -> None:
        """Console message from the primary process only."""
        if self.is_primary:
            print(message, flush=True)

    @contextlib.contextmanager
    def mesh_context(self):
        """Mesh and logical-axis rules in force while tracing model code."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            yield

    def _init_state(self, rng: jax.Array) -> TrainState:
        params_rng, dropout_rng = jax.random.split(rng)
        variables = nn.meta.unbox(self.task.init_variables(params_rng, self.init_batch))
        params = variables.pop("params")
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            model_state=variables,
            opt_state=self.tx.init(params),
            rng=dropout_rng,
            bad_step=jnp.full((), -1, jnp.int32),
        )

    def abstract_state(self) -> TrainState:
        """ShapeDtypeStructs of the state with this mesh's shardings (a restore target)."""
        with self.mesh_context():
            shapes = jax.eval_shape(self._init_state, jax.random.PRNGKey(0))
        return abstract_like(shapes, self.state_shardings)

    def fresh_state(self, seed: int | None = None) -> TrainState:
        """A new sharded state from `seed` (default config.seed), with `config.init_from`'s
        weights in place when it names a file or run."""
        seed = self.config.seed if seed is None else seed
        with self.mesh_context():
            state = self._init(jax.random.PRNGKey(seed))
        source = self.config.init_from
        if not source.path:
            return state
        variables = {"params": state.params, **state.model_state}
        merged = merge_pretrained(
            variables,
            load_variables(source.path),
            prefix=source.prefix,
            exclude=tuple(source.exclude),
            source=source.path,
        )
        merged = jax.tree.map(_put, merged, self.variable_shardings)
        self._say(f"initialised from {source.path}" + (f" at {source.prefix}" * bool(source.prefix)))
        params = merged.pop("params")
        return state.replace(params=params, model_state=merged)

    def initial_state(self) -> tuple[TrainState, dict | None]:
        """The latest restorable checkpoint of the workdir, else a fresh state (`fresh_state`).

        Raises ConfigError when the checkpoint cannot continue under this config: a changed model
        or optimizer (the state's shapes differ) or a changed batch_size (the data position counts
        batches). Other changed fields outside `config_lib.RESUMABLE_FIELDS` are reported.
        """
        saved = self._saved_config()
        changed = config_lib.changed_fields(saved, self.config) if saved else []
        try:
            restored = self.checkpointer.restore_latest(self.abstract_state())
        except CheckpointMismatch as e:
            raise ConfigError(
                f"cannot resume: {e}; config fields changed since that run: "
                f"{'; '.join(changed) or 'none recorded'} (use a new workdir to start afresh)"
            ) from None
        if restored is None:
            return self.fresh_state(), None
        step, state, data_state = restored
        if saved and saved.get("batch_size") != self.config.batch_size:
            raise ConfigError(
                f"cannot resume: 'batch_size' changed from {saved.get('batch_size')} to "
                f"{self.config.batch_size} since checkpoint step {step}; the data position counts "
                f"batches (use a new workdir, or the old batch_size)"
            )
        self._say(f"resumed from checkpoint step {step} in {self.checkpointer.directory}")
        unexpected = [c for c in changed if not c.startswith(config_lib.RESUMABLE_FIELDS)]
        if unexpected:
            self._say(f"warning: resuming with changed fields: {'; '.join(unexpected)}")
        return state, data_state

    def _saved_config(self) -> dict | None:
        """config.json of the run that last trained in this workdir, if any."""
        try:
            with open(os.path.join(self.workdir, "config.json")) as f:
                return json.load(f)
        except (FileNotFoundError, ValueError):
            return None

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, state: TrainState, names: list[str] | None = None) -> dict[str, float]:
        """Runs the evaluators `names` (default all) over their splits (`EvaluationLoop.run`).

        Returns {"<name>/<metric>": value} (empty on the other processes). Pictures of the first
        batch go to the workdir when `config.write_images` is set; an evaluator's own files to
        <workdir>/eval/<name>.
        """
        variables = {"params": state.params, **state.model_state}
        step = int(state.step)
        scores: dict[str, float] = {}
        for name in names or list(self.evals):
            with self.mesh_context():
                result = self.evals[name].run(
                    variables, step, outputs_dir=os.path.join(self.workdir, "eval", name),
                    pictures=self.config.write_images)
            if self.config.write_images:
                self.writer.write_images(step, {f"{name}_{k}": v for k, v in result.images.items()})
            scores.update({f"{name}/{k}": v for k, v in result.scores.items()})
        return scores

    def due_evaluators(self, step: int) -> list[str]:
        """The evaluators that run after training step `step`: each at its `every_steps` and all
        at the last step."""
        final = step == self.config.total_steps
        return [name for name, entry in self.config.evals.items()
                if final or (entry.every_steps and step % entry.every_steps == 0)]

    # ------------------------------------------------------------------ training loop
    def train_iterator(self):
        """This process's training batches (numpy), from the start of the data order."""
        c = self.config
        return make_train_iterator(self.train_source, global_batch_size=c.batch_size,
                                   seed=c.seed, transform=self.task.train_transform,
                                   num_workers=c.data.num_workers)

    def train(self) -> TrainState:
        """Trains to `config.total_steps`, resuming from the workdir's latest checkpoint."""
        c = self.config
        state, data_state = self.initial_state()
        self.writer.write_config(c)  # only once the checkpoint (if any) accepted this config
        start = int(state.step)
        it = self.train_iterator()
        if data_state is not None:
            it.set_state(data_state)
        progress = ProgressLogger(c.total_steps, start_step=start, every_steps=c.log_every)
        preempted = _SigtermFlag()
        pending: list[dict[str, jax.Array]] = []
        last_saved = start if start else None
        if start >= c.total_steps:
            self._say(f"step {start} already reached (total_steps={c.total_steps})")

        with self.mesh_context(), preempted, self._finish_saves():
            for step in range(start + 1, c.total_steps + 1):
                batch = to_global_batch(next(it), self.batch_sharding)
                state, metrics = self.train_step(state, batch)
                pending.append(metrics)
                final = step == c.total_steps
                stop = preempted.received or self.checkpointer.reached_preemption(step)
                save = final or stop or step % c.checkpoint.every_steps == 0
                evaluate = self.due_evaluators(step)
                if step % c.log_every == 0 or save or evaluate:
                    self._check_finite(state, last_saved)
                if step % c.log_every == 0 or final:
                    scalars = {
                        k: float(v)
                        for k, v in jax.device_get(
                            jax.tree.map(lambda *xs: jnp.mean(jnp.stack(xs)), *pending)
                        ).items()
                    }
                    pending.clear()
                    if self.is_primary:
                        progress.update(step, scalars)
                    self.writer.write_scalars(step, {f"train/{k}": v for k, v in scalars.items()})
                if save:
                    self.checkpointer.save(step, state, it.get_state())
                    last_saved = step
                if evaluate:
                    self._evaluate_and_report(state, step, evaluate)
                if stop:
                    self.preempted = True
                    self._say(
                        f"preemption signal: saved checkpoint step {step} in "
                        f"{self.checkpointer.directory}; exiting"
                    )
                    break
        self.writer.flush()
        if c.write_images and not self.preempted:
            self._say(f"prediction pictures: {os.path.join(self.workdir, 'images')}")
        return state

    @contextlib.contextmanager
    def _finish_saves(self):
        """Waits for checkpoints being written however the block ends (an exception in an
        evaluation must not leave a half-written step behind)."""
        try:
            yield
        finally:
            self.checkpointer.wait()

    def _check_finite(self, state: TrainState, last_saved: int | None) -> None:
        bad = int(state.bad_step)
        if bad >= 0:
            self.checkpointer.wait()
            kept = (
                f"last good checkpoint: step {last_saved}" if last_saved else "no checkpoint saved"
            )
            raise NonFiniteLossError(
                f"non-finite loss, gradient or parameter at step {bad + 1}; "
                f"run stopped, {kept} in {self.checkpointer.directory}"
            )

    def close(self) -> None:
        try:
            self.checkpointer.close()
            self.writer.close()
        finally:
            if self.lock:
                self.lock.release()

    def evaluate_checkpoint(
        self, step: int | None = None, evaluator: str | None = None
    ) -> dict[str, float]:
        """`--mode=eval`: restores checkpoint `step` (default: latest) and runs `evaluator`
        (default: every evaluator of `config.evals`)."""
        if evaluator is not None and evaluator not in self.evals:
            raise ConfigError(
                f"--eval={evaluator}: the config's evaluators (config.evals) are "
                f"{', '.join(self.evals) or 'none'}"
            )
        if step is None:  # the newest checkpoint that restores (corrupt ones are moved aside)
            restored = self.checkpointer.restore_latest(self.abstract_state())
            if restored is None:
                raise ConfigError(f"no checkpoint to evaluate in {self.checkpointer.directory}")
            step, state, _ = restored
        else:
            state, _ = self.checkpointer.restore(step, self.abstract_state())
        scores = self._evaluate_and_report(state, step, [evaluator] if evaluator else None)
        self.writer.flush()
        return scores

    def _evaluate_and_report(
        self, state: TrainState, step: int, names: list[str] | None = None
    ) -> dict[str, float]:
        """Evaluates, prints one line and writes the scores as "eval/<name>/<metric>" at `step`."""
        scores = self.evaluate(state, names)
        self._say(f"eval at step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        self.writer.write_scalars(step, {f"eval/{k}": v for k, v in scores.items()})
        return scores


def _put(value, sharding: NamedSharding) -> jax.Array:
    """A host value (the same on every process) or an existing array laid out by `sharding`."""
    if isinstance(value, jax.Array):
        return value
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


class _SigtermFlag:
    """Records SIGTERM (preemption) and the first Ctrl-C (SIGINT) while active instead of dying
    mid-step; a second Ctrl-C interrupts at once."""

    _SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received = False
        self._previous = {}

    def _handler(self, signum, frame):
        if signum == signal.SIGINT and self.received:
            signal.default_int_handler(signum, frame)
        self.received = True

    def __enter__(self):
        try:
            self._previous = {s: signal.signal(s, self._handler) for s in self._SIGNALS}
        except ValueError:  # not the main thread: leave the default handlers
            self._previous = {}
        return self

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        return False
