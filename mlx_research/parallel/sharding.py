"""Logical-axis sharding rules and helpers to place parameter trees on a mesh.

Model code names array dimensions with logical names ("batch", "length", "embed", "heads", "kv",
"mlp", "vocab", "layers"); a rule table maps each logical name to a mesh axis (or ``None``,
replicated). Flax resolves a table in order: for every array, each rule whose logical name occurs
in the array's names takes its mesh axis unless that axis is already used by an earlier rule for the
same array. Hence "batch" is listed first: under `FSDP_RULES`, activations
("batch", "length", "embed") keep batch on "data" and leave "embed" replicated, while parameters
("embed", "mlp") put "embed" on "data" and "mlp" on "model".
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, Sharding
from jax.sharding import PartitionSpec as P

MeshAxes = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxes], ...]

DEFAULT_RULES: Rules = (
    ("batch", "data"),
    ("length", None),
    ("embed", None),
    ("heads", "model"),
    ("kv", None),
    ("mlp", "model"),
    ("vocab", "model"),
    ("layers", "stage"),
)
"""Data parallelism over "data", tensor (Megatron) parallelism over "model", stages over "stage"."""

FSDP_RULES: Rules = tuple(
    (name, "data") if name == "embed" else (name, axes) for name, axes in DEFAULT_RULES)
"""`DEFAULT_RULES` with parameters' "embed" dimension also sharded over "data" (ZeRO-3 / FSDP)."""

_NAMED_RULES: dict[str, Rules] = {"default": DEFAULT_RULES, "fsdp": FSDP_RULES}


def _mesh_axes(value: Any, logical: str) -> MeshAxes:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(f"rule for {logical!r} maps to {value!r}; expected a mesh axis, a tuple of "
                     "mesh axes, or None")


def get_rules(name_or_pairs: str | Sequence[Sequence[Any]]) -> Rules:
    """Returns a rule table by name or normalises an explicit one (e.g. lists from a config).

    Args:
      name_or_pairs: "default" | "fsdp", or a sequence of (logical_name, mesh_axes) pairs where
        mesh_axes is a mesh axis name, a sequence of names, or None.

    Returns:
      A tuple of (logical_name, mesh_axes) pairs, mesh_axes a str, a tuple of str or None.

    Raises:
      ValueError: unknown table name or a malformed pair.
    """
    if isinstance(name_or_pairs, str):
        if name_or_pairs not in _NAMED_RULES:
            raise ValueError(f"unknown sharding rules {name_or_pairs!r}; expected one of "
                             f"{sorted(_NAMED_RULES)} or a list of (logical, mesh_axis) pairs")
        return _NAMED_RULES[name_or_pairs]
    rules = []
    for pair in name_or_pairs:
        if isinstance(pair, str) or len(pair) != 2 or not isinstance(pair[0], str):
            raise ValueError(f"sharding rule {pair!r} is not a (logical_name, mesh_axes) pair")
        rules.append((pair[0], _mesh_axes(pair[1], pair[0])))
    return tuple(rules)


def logical_shardings(tree: Any, mesh: Mesh, rules: str | Sequence[Sequence[Any]]) -> Any:
    """Maps a tree with logical-partitioning boxes to a tree of `NamedSharding`.

    Args:
      tree: e.g. ``jax.eval_shape(model.init, ...)`` or ``jax.eval_shape(tx.init, boxed_params)``;
        leaves boxed by `nn.with_logical_partitioning` (`nn.Partitioned`) get their logical names
        mapped by ``rules``; unboxed array leaves (step counters, plain params) are replicated.
      mesh: the device mesh.
      rules: anything `get_rules` accepts.

    Returns:
      A tree with a `NamedSharding` in place of every box / array leaf: a tree prefix of ``tree``
      (usable as ``jax.jit(init, out_shardings=...)``) with the structure of ``nn.unbox(tree)``.
    """
    logical_specs = nn.get_partition_spec(tree)
    return nn.logical_to_mesh_sharding(logical_specs, mesh, get_rules(rules))


def shard_tree(tree: Any, shardings: Any) -> Any:
    """`jax.device_put` of ``tree`` with ``shardings``, a tree prefix of ``tree``."""
    return jax.device_put(tree, shardings)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of an input batch: leading (batch) axis split over "data", the rest replicated."""
    return NamedSharding(mesh, P("data"))


def _leaf_device_bytes(leaf: Any, sharding: Sharding | None) -> tuple[dict[Any, int], int]:
    """Returns (bytes per device, bytes on every device) for one array-like leaf."""
    shape, itemsize = tuple(leaf.shape), np.dtype(leaf.dtype).itemsize
    if sharding is None:
        return {}, int(np.prod(shape)) * itemsize
    per_device = {}
    for device, index in sharding.devices_indices_map(shape).items():
        counts = [len(range(*s.indices(n))) for s, n in zip(index, shape)]
        per_device[device] = int(np.prod(counts)) * itemsize
    return per_device, 0


def bytes_per_device(tree: Any, shardings: Any = None) -> int:
    """Largest number of bytes any one device holds for a tree of (possibly sharded) arrays.

    Args:
      tree: leaves are `jax.Array`s or `jax.ShapeDtypeStruct`s (boxed leaves are looked through).
      shardings: optional tree prefix of ``tree`` with a `Sharding` per subtree (e.g. from
        `logical_shardings`); by default each leaf's own ``.sharding`` is used. Leaves without a
        sharding count in full on every device.

    Returns:
      max over devices of the summed shard sizes, in bytes.
    """
    leaves = jax.tree.leaves(tree)
    if shardings is None:
        leaf_shardings = [getattr(leaf, "sharding", None) for leaf in leaves]
    else:
        leaf_shardings = jax.tree.leaves(jax.tree.broadcast(shardings, tree))
    totals: dict[Any, int] = {}
    everywhere = 0
    for leaf, sharding in zip(leaves, leaf_shardings, strict=True):
        per_device, replicated = _leaf_device_bytes(leaf, sharding)
        everywhere += replicated
        for device, nbytes in per_device.items():
            totals[device] = totals.get(device, 0) + nbytes
    return max(totals.values(), default=0) + everywhere
