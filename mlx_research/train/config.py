"""Experiment config schema: the trainer's fields, the task's fields, the evaluators, validation.

An experiment file builds its config from `default_config(task)` and changes what it needs; the
trainer calls `validate(config)` before anything compiles, so a misspelt key or a wrong type fails
with one line that names the key.

Evaluators are declared by name under `config.evals`, big_vision style: each entry names the
evaluator kind in `type` (one of the task's `evaluator_kinds()`), its cadence `every_steps`, its
global `batch_size` and the kind's own settings; fields an entry leaves out take the kind's
defaults (`validate` fills them in). Scores are logged as `eval/<name>/<metric>`. Another
evaluator of an existing kind is one more entry, e.g. in an experiment file:

    config.evals.val_greedy = dict(type="report", split="val", beam_size=1, every_steps=500)
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections

from mlx_research.config_checks import check_choices, check_ranges
from mlx_research.errors import ConfigError
from mlx_research.nn.regularization import DEFAULT_EXCLUDE
from mlx_research.prng import RNG_IMPLS
from mlx_research.train.tasks import Task, get_task


def trainer_defaults() -> ml_collections.ConfigDict:
    """Fields every experiment has, with their meaning."""
    c = ml_collections.ConfigDict()
    c.task = ""  # task module under mlx_research/train/tasks/ (e.g. "seq2seq")
    c.seed = 0  # seeds parameters, dropout and data order
    # Random bits inside the train step (dropout masks): "threefry2x32" (JAX's default) or
    # "hash32" (same keys, bits from a counter hash; ~50x faster masks on CPU; mlx_research.prng)
    c.rng_impl = "threefry2x32"
    c.total_steps = 1000  # optimizer steps of the run
    c.batch_size = 64  # global batch (all hosts, all devices)
    c.grad_accum_steps = 1  # split each batch into this many sequential micro-batches
    c.compute_dtype = "float32"  # "float32" | "bfloat16" (activations; parameters stay float32)
    c.log_every = 50  # console + metrics.jsonl every N steps
    c.write_images = False  # pictures of predictions (PNG + TensorBoard) at each evaluation
    c.mesh = ml_collections.ConfigDict({"data": -1, "model": 1, "stage": 1})  # -1 = the rest
    c.sharding_rules = "default"  # "default" | "fsdp": logical-axis rules (mlx_research.parallel)
    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 500  # save every N steps, and always at the end
    c.checkpoint.keep = 3  # keep the last K checkpoints
    c.checkpoint.async_save = True  # write in a background thread while training goes on
    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamw"  # "adamw" | "sgd" (momentum)
    c.optim.lr = 1e-3  # peak learning rate
    c.optim.schedule = "cosine"  # "cosine" | "step" | "constant", after linear warmup
    c.optim.warmup_steps = 0
    c.optim.end_lr_factor = 0.0  # cosine: final lr = lr * end_lr_factor
    c.optim.decay_boundaries = ()  # step: steps at which lr *= decay_factor
    c.optim.decay_factor = 0.1
    c.optim.b1 = 0.9  # adamw
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.momentum = 0.9  # sgd (0 = plain SGD)
    c.optim.nesterov = False
    c.optim.weight_decay = 0.0  # decoupled (adamw) or L2-style added to gradients (sgd)
    c.optim.wd_exclude = DEFAULT_EXCLUDE  # regexes of parameters without decay (biases, norms)
    c.optim.grad_clip_norm = 0.0  # global-norm clipping if > 0
    # Parameter groups, over "/"-joined parameter paths (e.g. "backbone/layer1_0/conv1/kernel"),
    # matched with re.search. Command line: --config.optim.frozen="('^backbone/stem',)".
    c.optim.lr_multipliers = ()  # ((regex, factor), ...): lr x factor; the first match wins
    c.optim.frozen = ()  # (regex, ...): never updated, no optimizer state, no weight decay
    # Start from weights (a fresh run only; resuming reads the workdir's checkpoint instead).
    c.init_from = ml_collections.ConfigDict()
    c.init_from.path = ""  # .npz / .safetensors file, or another run's workdir / checkpoint dir
    c.init_from.prefix = ""  # module path the loaded tree goes under (e.g. "backbone")
    c.init_from.exclude = ()  # regexes of loaded keys to skip (e.g. "^params/fc/")
    c.data = ml_collections.ConfigDict()  # the task adds its fields (tasks/<name>.py)
    c.data.num_workers = 0  # threads reading and transforming examples (0 = one prefetch thread)
    c.evals = ml_collections.ConfigDict()  # evaluators by name (the task lists its defaults)
    return c


# Fields of every `config.evals` entry; a kind adds its own settings (and may change defaults).
EVALUATOR_FIELDS = dict(
    type="",  # the evaluator kind: one of the task's `evaluator_kinds()`
    every_steps=500,  # evaluate every N steps and always at the end (0 = only at the end)
    batch_size=64,  # global evaluation batch
)
_EVALUATOR_RANGES = {"every_steps": (0, None), "batch_size": (1, None)}


def _with_kind_defaults(task: type[Task], entry: ml_collections.ConfigDict
                        ) -> ml_collections.ConfigDict:
    """A copy of the `config.evals` entry `entry` with the fields it leaves out at its kind's
    defaults (its `type` must be one of `task.evaluator_kinds()`)."""
    settings = ml_collections.ConfigDict(
        dict(EVALUATOR_FIELDS, **task.evaluator_kinds()[entry.type].defaults, type=entry.type))
    settings.update(entry)
    return settings


def default_config(task: str) -> ml_collections.ConfigDict:
    """Trainer fields plus the task's `default_config()` (its `data` fields are merged into the
    trainer's, a task value winning; its `evals` entries come with every field filled in)."""
    c = trainer_defaults()
    c.task = task
    task_class = get_task(task)
    task_defaults = task_class.default_config()
    for key in task_defaults:
        if key == "data":
            c.data.update(task_defaults.data)
        elif key == "evals":
            for name, entry in task_defaults.evals.items():
                c.evals[name] = _with_kind_defaults(task_class, entry)
        else:
            c[key] = task_defaults[key]
    return c


def derived_config(task: str, base: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A config of ``task`` carrying every field of ``base``, another task's config (e.g. NADM or
    MKMIA on an R2Gen config: they subclass the report task); fields only ``task`` has keep their
    defaults. Configs built this way train the method with exactly the base's model size,
    optimiser, batch, steps, data and evaluation, so results compare at equal steps."""
    config = default_config(task)
    for key, value in base.items():
        if isinstance(value, ml_collections.ConfigDict):
            config[key].update(value)
        elif key != "task":
            config[key] = value
    return config


_NUMBER = (int, float)
_CHOICES = {
    "compute_dtype": ("float32", "bfloat16"),
    "rng_impl": RNG_IMPLS,
    "optim.name": ("adamw", "sgd"),
    "optim.schedule": ("cosine", "step", "constant"),
    "sharding_rules": ("default", "fsdp"),
}


# Closed ranges [low, high] of the trainer's numeric fields (None: unbounded).
_RANGES = {
    "seed": (0, 2**32 - 1),
    "total_steps": (1, None),
    "batch_size": (1, None),
    "grad_accum_steps": (1, None),
    "log_every": (1, None),
    "checkpoint.every_steps": (1, None),
    "checkpoint.keep": (1, None),
    "optim.lr": (0, None),
    "optim.warmup_steps": (0, None),
    "optim.end_lr_factor": (0, None),
    "optim.decay_factor": (0, None),
    "optim.b1": (0, 1),
    "optim.b2": (0, 1),
    "optim.eps": (0, None),
    "optim.momentum": (0, 1),
    "optim.weight_decay": (0, None),
    "optim.grad_clip_norm": (0, None),
    "data.num_workers": (0, None),
}


def _check(config: Any, reference: Any, prefix: str) -> None:
    for key in config.keys():
        name = f"{prefix}{key}"
        if key not in reference:
            raise ConfigError(f"config: unknown key {name!r}")
        got, want = config[key], reference[key]
        if isinstance(want, ml_collections.ConfigDict):
            if not isinstance(got, ml_collections.ConfigDict):
                raise ConfigError(
                    f"config: {name!r} must be a ConfigDict, got {type(got).__name__}"
                )
            _check(got, want, name + ".")
        elif isinstance(want, bool) or isinstance(got, bool):
            if type(got) is not type(want):
                raise ConfigError(f"config: {name!r} must be {type(want).__name__}, got {got!r}")
        elif isinstance(want, _NUMBER) and isinstance(got, _NUMBER):
            if isinstance(want, int) and not isinstance(got, int):
                raise ConfigError(f"config: {name!r} must be int, got {got!r}")
        elif (
            want is not None
            and got is not None
            and not isinstance(got, type(want))
            and not (isinstance(want, (tuple, list)) and isinstance(got, (tuple, list)))
        ):
            raise ConfigError(f"config: {name!r} must be {type(want).__name__}, got {got!r}")


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError (one line) on unknown keys, wrong types and inconsistent values; fills
    in the fields that `config.evals` entries leave out (their kinds' defaults)."""
    if not config.get("task"):
        raise ConfigError("config: 'task' is not set")
    try:
        reference = default_config(config.task)
    except ValueError as e:
        raise ConfigError(f"config: 'task': {e}") from None
    task = get_task(config.task)
    reference.evals = _evaluator_references(config, task)  # the entries' own names and kinds
    _check(config, reference, "")
    for name, entry in config.evals.items():
        config.evals[name] = _with_kind_defaults(task, entry)
    check_ranges(config, _RANGES)
    check_choices(config, _CHOICES)
    _check_evaluators(config, task)
    if config.init_from.path and not os.path.exists(config.init_from.path):
        raise ConfigError(f"config: 'init_from.path': {config.init_from.path} does not exist")
    if config.batch_size % config.grad_accum_steps:
        raise ConfigError(
            f"config: batch_size={config.batch_size} is not divisible by "
            f"grad_accum_steps={config.grad_accum_steps}"
        )
    task.validate_config(config)


def _evaluator_references(config: ml_collections.ConfigDict, task: type[Task]
                          ) -> ml_collections.ConfigDict:
    """{name: the default entry of its kind, every field filled in} for the entries of
    `config.evals`; ConfigError when `evals` or an entry is not a ConfigDict, or an entry's `type`
    is none of the task's evaluator kinds."""
    evals = config.get("evals")
    if not isinstance(evals, ml_collections.ConfigDict):
        raise ConfigError(f"config: 'evals' must be a ConfigDict, got {type(evals).__name__}")
    kinds = task.evaluator_kinds()
    references = ml_collections.ConfigDict()
    for name, entry in evals.items():
        if not isinstance(entry, ml_collections.ConfigDict):
            raise ConfigError(
                f"config: 'evals.{name}' must be a ConfigDict, got {type(entry).__name__}")
        if entry.get("type") not in kinds:
            raise ConfigError(f"config: 'evals.{name}.type' must be one of {', '.join(kinds)} "
                              f"(the evaluator kinds of task {config.task!r}); "
                              f"got {entry.get('type')!r}")
        references[name] = _with_kind_defaults(task, ml_collections.ConfigDict(
            {"type": entry.type}))
    return references


def _check_evaluators(config: ml_collections.ConfigDict, task: type[Task]) -> None:
    """Ranges and choices of every (filled in) `config.evals` entry: its kind's and the common
    ones."""
    kinds = task.evaluator_kinds()
    for name, entry in config.evals.items():
        kind = kinds[entry.type]
        ranges = {**_EVALUATOR_RANGES, **kind.ranges}
        check_ranges(config, {f"evals.{name}.{key}": bound for key, bound in ranges.items()})
        check_choices(config, {f"evals.{name}.{key}": allowed
                               for key, allowed in kind.choices.items()})


# Fields a resumed run may change: they alter neither what a checkpoint holds nor the data order.
RESUMABLE_FIELDS = (
    "total_steps", "log_every", "write_images", "checkpoint.", "evals.", "mesh.",
    "sharding_rules", "data.num_workers", "init_from.",
)


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"a.b": leaf} of a JSON object (dicts nested; lists are leaves)."""
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    return {k: v for key, value in tree.items() for k, v in _flat(value, f"{prefix}{key}.").items()}


def changed_fields(saved: dict[str, Any], config: ml_collections.ConfigDict) -> list[str]:
    """["key: old -> new", ...] for the fields of `config` that differ from `saved` (a run's
    config.json), in key order."""
    old, new = _flat(saved), _flat(json.loads(config.to_json()))
    return [f"{k}: {old.get(k, '(unset)')!r} -> {new.get(k, '(unset)')!r}"
            for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
