"""Pretrained weights for a fresh run (`config.init_from`): read a file or another run, merge.

Weights are flat {"<collection>/<module path>/<leaf>": numpy array} dicts, e.g.
{"params/backbone/conv1/kernel": ..., "batch_stats/backbone/bn1/mean": ...}. `init_from.path` is
  - a file:               "/data/resnet50.npz" or "/data/resnet50.safetensors"
  - another run's workdir: "/runs/pretrain"              (its latest checkpoint)
  - its checkpoints dir:   "/runs/pretrain/checkpoints"  (the latest step in it)
  - one checkpoint:        "/runs/pretrain/checkpoints/5000"
From a checkpoint only the params and the model_state collections are read (no optimizer state).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import safetensors.numpy

from mlx_research.errors import ConfigError
from mlx_research.tree import flatten, path_name


def _latest_step_dir(checkpoints: str) -> str:
    steps = [int(n) for n in os.listdir(checkpoints)
             if n.isdigit() and os.path.isdir(os.path.join(checkpoints, n, "state"))]
    if not steps:
        raise ConfigError(f"init_from.path: no checkpoint in {checkpoints}")
    return os.path.join(checkpoints, str(max(steps)))


def _load_checkpoint(step_dir: str) -> dict[str, np.ndarray]:
    with ocp.PyTreeCheckpointer() as checkpointer:
        path = os.path.join(os.path.abspath(step_dir), "state")
        metadata = checkpointer.metadata(path).item_metadata
        item = {k: metadata[k] for k in ("params", "model_state") if k in metadata}
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
        restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
            item=item, restore_args=restore_args, partial_restore=True))
    return flatten({"params": restored.get("params", {}), **restored.get("model_state", {})})


def load_variables(path: str) -> dict[str, np.ndarray]:
    """Flat {"/"-joined key: numpy array} weights from .npz, .safetensors or an Orbax checkpoint.

    Example: `load_variables("/runs/pretrain")["params/backbone/conv1/kernel"]`; the path may
    also be "/runs/pretrain/checkpoints", "/runs/pretrain/checkpoints/5000" or "/data/w.npz".

    Raises:
      ConfigError: naming the path, if it does not exist, has an unknown format, holds no
        checkpoint or cannot be read.
    """
    try:
        if os.path.isfile(path) and path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        if os.path.isfile(path) and path.endswith(".safetensors"):
            return safetensors.numpy.load_file(path)
        if os.path.isfile(path):
            raise ConfigError(
                f"init_from.path {path}: unknown format (.npz, .safetensors or a run)")
        if not os.path.isdir(path):
            raise ConfigError(f"init_from.path {path} does not exist")
        if os.path.isdir(os.path.join(path, "state")):
            return _load_checkpoint(path)
        workdir_checkpoints = os.path.join(path, "checkpoints")
        return _load_checkpoint(_latest_step_dir(
            workdir_checkpoints if os.path.isdir(workdir_checkpoints) else path))
    except ConfigError:
        raise
    except Exception as e:  # pylint: disable=broad-except
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        raise ConfigError(
            f"init_from.path {path} cannot be read ({type(e).__name__}: {reason})") from e


def save_variables(path: str, variables: Any) -> None:
    """Writes a nested variables tree as "/"-keyed .npz, or .safetensors if `path` ends so.

    bfloat16 and other ml_dtypes floats are widened (exactly) to float32 in .npz, which cannot hold
    them; .safetensors keeps them. Example: `save_variables("/tmp/w.npz", {"params": params})`.
    """
    flat = {k: np.asarray(v, order="C") for k, v in flatten(variables).items()}
    if path.endswith(".safetensors"):
        safetensors.numpy.save_file(flat, path)
    elif path.endswith(".npz"):
        flat = {k: v.astype(np.float32) if v.dtype.kind == "V" and jnp.issubdtype(
            v.dtype, jnp.floating) else v for k, v in flat.items()}
        with open(path, "wb") as f:
            np.savez(f, **flat)
    else:
        raise ValueError(f"save_variables: {path} is neither .npz nor .safetensors")


def _castable(value: np.ndarray, dtype: np.dtype) -> bool:
    """Lossless in kind: any safe cast, float<->float, int/bool->float, int->int if values fit."""
    src = value.dtype
    if np.can_cast(src, dtype, "safe") or (jnp.issubdtype(dtype, jnp.floating) and (
            jnp.issubdtype(src, jnp.floating) or jnp.issubdtype(src, jnp.integer) or src == bool)):
        return True
    if jnp.issubdtype(src, jnp.integer) and jnp.issubdtype(dtype, jnp.integer):
        info = np.iinfo(dtype)
        return value.size == 0 or (info.min <= value.min() and value.max() <= info.max)
    return False


def merge_pretrained(variables: Any, loaded: dict[str, np.ndarray], *, prefix: str = "",
                     exclude: Sequence[str] = (), source: str = "") -> Any:
    """`variables` (same structure) with the `loaded` values in place, cast to the target dtypes.

    A loaded key "<collection>/<rest>" goes to "<collection>/<prefix>/<rest>", e.g. with
    prefix="encoder/backbone" "params/conv1/kernel" fills "params/encoder/backbone/conv1/kernel".
    Loaded keys matching an `exclude` regex (re.search) are skipped. Every leaf under
    "<collection>/<prefix>/" of each collection in `loaded` must be filled, unless its loaded name
    is excluded; leaves elsewhere keep their fresh values. Leaves may be numpy/jax arrays or
    jax.ShapeDtypeStruct; filled leaves become numpy arrays.

    Raises:
      ConfigError: one line naming the key and `source`: a loaded key with no target, a target
        the file lacks, a shape mismatch, or a dtype that cannot be cast safely.
    """
    prefix = prefix.strip("/")
    try:
        patterns = [re.compile(p) for p in ((exclude,) if isinstance(exclude, str) else exclude)]
    except re.error as e:
        raise ConfigError(f"init_from.exclude: invalid regex {e.pattern!r} ({e})") from e
    excluded = lambda key: any(p.search(key) for p in patterns)  # noqa: E731

    def target(key: str) -> str:  # "<collection>/<rest>" -> "<collection>/<prefix>/<rest>"
        collection, _, rest = key.partition("/")
        return "/".join(s for s in (collection, prefix, rest) if s)

    leaves, treedef = jax.tree_util.tree_flatten_with_path(variables)
    names = [path_name(p) for p, _ in leaves]
    kept, known = {target(k): k for k in sorted(loaded) if not excluded(k)}, set(names)
    if extra := [k for t, k in kept.items() if t not in known]:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise ConfigError(f"init_from.path {source}: {extra[0]!r}{more} has no model parameter "
                          f"{target(extra[0])!r} (init_from.prefix={prefix!r}; skip it with "
                          "init_from.exclude)")
    for collection in sorted({k.partition("/")[0] for k in loaded}):
        scope = "/".join(s for s in (collection, prefix) if s) + "/"
        for name in names:
            source_key = collection + "/" + name[len(scope):]
            if name.startswith(scope) and name not in kept and not excluded(source_key):
                raise ConfigError(f"init_from.path {source} lacks {source_key!r} for model "
                                  f"parameter {name!r} (keep it fresh: init_from.exclude)")
    out = [leaf for _, leaf in leaves]
    for i, name in enumerate(names):
        if name not in kept:
            continue
        key, value, dtype = kept[name], np.asarray(loaded[kept[name]]), np.dtype(out[i].dtype)
        if value.shape != tuple(out[i].shape):
            raise ConfigError(f"init_from.path {source}: {key!r} has shape {value.shape}, "
                              f"model parameter {name!r} has {tuple(out[i].shape)}")
        if not _castable(value, dtype):
            raise ConfigError(f"init_from.path {source}: {key!r} of dtype {value.dtype} cannot be "
                              f"cast safely to model parameter {name!r}'s {dtype}")
        out[i] = value.astype(dtype, copy=False)
    return jax.tree_util.tree_unflatten(treedef, out)
