"""Names of pytree leaves: the "/"-joined key paths that regexes in configs select."""

from __future__ import annotations

from typing import Any

import jax


def path_name(path: tuple[Any, ...]) -> str:
    """The "/"-joined name of a `jax.tree_util` key path, e.g. "encoder/layers_0/kernel"."""
    parts = []
    for entry in path:
        if isinstance(entry, jax.tree_util.DictKey):
            parts.append(str(entry.key))
        elif isinstance(entry, jax.tree_util.GetAttrKey):
            parts.append(entry.name)
        elif isinstance(entry, jax.tree_util.SequenceKey):
            parts.append(str(entry.idx))
        elif isinstance(entry, jax.tree_util.FlattenedIndexKey):
            parts.append(str(entry.key))
        else:
            parts.append(str(entry))
    return "/".join(parts)


def flatten(tree: Any, is_leaf=None) -> dict[str, Any]:
    """{"/"-joined path: leaf} of a pytree, in `jax.tree_util` order."""
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]
    return {path_name(path): leaf for path, leaf in leaves}
