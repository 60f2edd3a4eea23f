"""Autoregressive decoding with static shapes (jit-friendly)."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def greedy_decode(
    logits_fn: Callable[[jax.Array], jax.Array],
    batch_size: int,
    length: int,
    bos_id: int,
    eos_id: int,
    pad_id: int = 0,
) -> jax.Array:
    """Greedy decoding by re-running the decoder on the whole prefix at every position.

    Args:
        logits_fn: decoder inputs [B, length] int32 -> logits [B, length, V]; causal, so the logits at
            position t only see tokens <= t.
        batch_size, length: output shape; `length` includes the EOS token.
        bos_id, eos_id, pad_id: special tokens; positions after the first EOS become `pad_id`.
    Returns:
        [B, length] int32 predicted tokens (without the leading BOS).
    """
    tokens = jnp.full((batch_size, length), pad_id, jnp.int32).at[:, 0].set(bos_id)
    out = jnp.full((batch_size, length), pad_id, jnp.int32)

    def step(t, carry):
        tokens, out = carry
        next_token = jnp.argmax(logits_fn(tokens)[:, t], axis=-1).astype(jnp.int32)
        out = out.at[:, t].set(next_token)
        tokens = jax.lax.dynamic_update_slice_in_dim(
            tokens, next_token[:, None], jnp.minimum(t + 1, length - 1), axis=1
        )
        return tokens, out

    _, out = jax.lax.fori_loop(0, length, step, (tokens, out))
    finished_before = jnp.cumsum(out == eos_id, axis=1) - (out == eos_id) > 0
    return jnp.where(finished_before, pad_id, out)
