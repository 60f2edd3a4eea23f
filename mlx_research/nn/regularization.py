"""Weight penalties, weight-decay masks and dropout.

Parameters are selected by regular expressions matched with ``re.search``
against the ``"/"``-joined path of each leaf, e.g.
``"encoder/layer_0/attn/query/kernel"`` (names from
``jax.tree_util.tree_flatten_with_path``). Flax metadata boxes
(``nn.LogicallyPartitioned``, ``nn.Partitioned``) are treated as leaves: the
path stops at the box and its unboxed value is used.

``Dropout`` is ``flax.linen.Dropout``; ``dropout`` is its functional twin with
``torch.nn.functional.dropout`` semantics.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mlx_research.tree import path_name

Array = jax.Array
PyTree = Any

DEFAULT_EXCLUDE: tuple[str, ...] = (
    r"(^|/)(bias|scale)$",
    r"[Nn]orm(?![a-z])[^/]*/",
)
"""Biases and scales anywhere, and every parameter under a norm module.

A norm module is a path element containing ``norm``/``Norm`` not followed by a
lower-case letter (``LayerNorm_0``, ``norm1``, ``final_norm``), so that names
such as ``normal_memory`` or ``abnormal_head`` keep their weight decay.
"""

Dropout = nn.Dropout


def _is_box(x: Any) -> bool:
    return isinstance(x, nn.meta.AxisMetadata)


def _selected(name: str, include: Sequence[str] | None, exclude: Sequence[str] | None) -> bool:
    if include is not None and not any(re.search(p, name) for p in include):
        return False
    return not (exclude and any(re.search(p, name) for p in exclude))


def decay_mask(
    params: PyTree,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = DEFAULT_EXCLUDE,
) -> PyTree:
    """Marks the parameters that a penalty or weight decay applies to.

    A leaf is selected if its path matches some ``include`` pattern (all leaves
    when ``include`` is None) and no ``exclude`` pattern.

    Args:
      params: parameter pytree, possibly holding flax metadata boxes.
      include: regular expressions; None selects every leaf.
      exclude: regular expressions; None or empty excludes nothing.

    Returns:
      Pytree of Python bools with the structure of the unboxed ``params`` (a
      prefix of the boxed tree), usable as the ``mask`` of
      ``optax.add_decayed_weights`` / ``optax.adamw`` / ``optax.masked``.
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, _: _selected(path_name(path), include, exclude), params, is_leaf=_is_box
    )


def _selected_leaves(
    params: PyTree, include: Sequence[str] | None, exclude: Sequence[str] | None
) -> list[Array]:
    """Unboxed selected leaves, promoted to at least float32 for accumulation."""
    flat, _ = jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_box)
    leaves = [
        jnp.asarray(leaf.unbox() if _is_box(leaf) else leaf)
        for path, leaf in flat
        if _selected(path_name(path), include, exclude)
    ]
    return [w.astype(jnp.promote_types(w.dtype, jnp.float32)) for w in leaves]


def l1_penalty(
    params: PyTree,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = DEFAULT_EXCLUDE,
) -> Array:
    """Sum of absolute values ``sum |w|`` over the selected parameters.

    Args:
      params: parameter pytree, possibly holding flax metadata boxes.
      include: regular expressions selecting leaves by path (see ``decay_mask``).
      exclude: regular expressions removing leaves by path.

    Returns:
      Scalar; 0.0 when nothing is selected. Its gradient is ``sign(w)``.
    """
    leaves = _selected_leaves(params, include, exclude)
    # w * sign(w) == |w| with gradient sign(w), 0 at w == 0 (jnp.abs has gradient 1 there).
    return sum((jnp.sum(w * jnp.sign(w)) for w in leaves), start=jnp.zeros((), jnp.float32))


def l2_penalty(
    params: PyTree,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = DEFAULT_EXCLUDE,
) -> Array:
    """Half the sum of squares ``0.5 * sum w^2`` over the selected parameters.

    The gradient is ``w``, so adding ``wd * l2_penalty(params)`` to the loss
    matches ``torch.optim.SGD(weight_decay=wd)``.

    Args:
      params: parameter pytree, possibly holding flax metadata boxes.
      include: regular expressions selecting leaves by path (see ``decay_mask``).
      exclude: regular expressions removing leaves by path.

    Returns:
      Scalar; 0.0 when nothing is selected.
    """
    leaves = _selected_leaves(params, include, exclude)
    return 0.5 * sum((jnp.sum(jnp.square(w)) for w in leaves), start=jnp.zeros((), jnp.float32))


def dropout(x: Array, rate: float, key: Array | None, deterministic: bool = False) -> Array:
    """Inverted dropout, as ``torch.nn.functional.dropout``.

    Each element is kept with probability ``1 - rate`` and scaled by
    ``1 / (1 - rate)``, so the expectation is unchanged.

    Args:
      x: any shape.
      rate: drop probability in ``[0, 1]`` (a Python float); 1 gives zeros.
      key: PRNG key for the mask; may be None when ``deterministic`` or ``rate == 0``.
      deterministic: if True return ``x`` unchanged (evaluation).

    Returns:
      Array with the shape and dtype of ``x``.

    Raises:
      ValueError: if ``rate`` is outside ``[0, 1]``, or a key is needed but missing.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"dropout: rate must be in [0, 1], got {rate}")
    if deterministic or rate == 0.0:
        return x
    if rate == 1.0:
        return jnp.zeros_like(x)
    if key is None:
        raise ValueError("dropout: a PRNG `key` is required unless deterministic=True")
    keep_prob = 1.0 - rate
    keep = jax.random.bernoulli(key, keep_prob, x.shape)
    return jax.lax.select(keep, x / jnp.asarray(keep_prob, x.dtype), jnp.zeros_like(x))
