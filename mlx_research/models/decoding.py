"""Autoregressive decoding with static shapes (jit-friendly): greedy and beam search.

Both searches are driven by a step function

    step(tokens: [N] int32, cache) -> (logits: [N, V] float, cache)

that consumes the previous token of every row (BOS at the first step) and returns the logits of
the next one. ``cache`` is any pytree (a model's key/value cache, a token buffer, the encoder
memory, ...) whose non-scalar leaves all have the rows N as leading axis; scalar leaves (e.g. the
current position) are shared by every row. Beam search tiles and reorders the cache by gathering
that axis, so a step must not keep per-row state anywhere else.

`prefix_step` turns a full-prefix logits function (no cache: re-runs the whole prefix at every
step, O(T^2) in all) into such a step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
Cache = Any
Step = Callable[[Array, Cache], tuple[Array, Cache]]


def shift_right(targets: Array, bos_id: int) -> Array:
    """[B, T] target ids -> teacher-forcing decoder inputs [B, T]: BOS, then targets[:, :-1]."""
    bos = jnp.full((targets.shape[0], 1), bos_id, targets.dtype)
    return jnp.concatenate([bos, targets[:, :-1]], axis=1)


def _check_rows(cache: Cache, rows: int) -> None:
    for leaf in jax.tree.leaves(cache):
        if jnp.ndim(leaf) and jnp.shape(leaf)[0] != rows:
            raise ValueError(
                f"cache leaves need the {rows} rows as leading axis; got shape {jnp.shape(leaf)}"
            )


def tile_cache(cache: Cache, beam_size: int) -> Cache:
    """Repeats every row of ``cache`` K times: row ``b`` becomes rows ``b * K ... b * K + K - 1``.

    Args:
      cache: pytree whose non-scalar leaves are ``[B, ...]``.
      beam_size: K.

    Returns:
      The pytree with non-scalar leaves ``[B * K, ...]`` (scalars unchanged).
    """
    return jax.tree.map(
        lambda x: x if jnp.ndim(x) == 0 else jnp.repeat(x, beam_size, axis=0), cache
    )


def gather_cache(cache: Cache, rows: Array) -> Cache:
    """Selects ``rows`` ``[M]`` int of every non-scalar leaf ``[N, ...]`` -> ``[M, ...]``."""
    return jax.tree.map(lambda x: x if jnp.ndim(x) == 0 else jnp.take(x, rows, axis=0), cache)


def greedy_search(
    step: Step,
    cache: Cache,
    *,
    batch_size: int,
    max_len: int,
    bos_id: int,
    eos_id: int,
    pad_id: int,
) -> Array:
    """Greedy (argmax) decoding; stops early once every row has produced EOS.

    Finished rows are fed ``pad_id`` and their outputs are ``pad_id``.

    Args:
      step: ``(tokens [B] int32, cache) -> (logits [B, V], cache)`` (see the module doc).
      cache: the step's initial cache for the ``batch_size`` rows.
      batch_size: B.
      max_len: number of generated positions (EOS included).
      bos_id: first input token.
      eos_id: end of sequence.
      pad_id: fills the positions after the first EOS.

    Returns:
      ``[B, max_len]`` int32 predicted tokens, without BOS, ``pad_id`` after the first EOS.
    """
    _check_rows(cache, batch_size)

    def cond(state: tuple) -> Array:
        t, _, _, _, done = state
        return (t < max_len) & ~jnp.all(done)

    def body(state: tuple) -> tuple:
        t, last, cache, out, done = state
        logits, cache = step(last, cache)
        token = jnp.where(done, pad_id, jnp.argmax(logits, axis=-1).astype(jnp.int32))
        out = lax.dynamic_update_slice_in_dim(out, token[:, None], t, axis=1)
        return t + 1, token, cache, out, done | (token == eos_id)

    state = (
        jnp.zeros((), jnp.int32),
        jnp.full((batch_size,), bos_id, jnp.int32),
        cache,
        jnp.full((batch_size, max_len), pad_id, jnp.int32),
        jnp.zeros((batch_size,), bool),
    )
    return lax.while_loop(cond, body, state)[3]


def beam_search(
    step: Step,
    cache: Cache,
    *,
    batch_size: int,
    beam_size: int,
    max_len: int,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    length_penalty: float = 1.0,
) -> tuple[Array, Array]:
    """Beam search (fairseq's rules); returns the best finished hypothesis of every example.

    ``cache`` is for the ``batch_size`` examples: it is tiled here to ``batch_size * beam_size``
    rows (row ``b * K + k`` is beam k of example b) and reordered by gathering axis 0 after every
    step, so ``step`` sees ``N = batch_size * beam_size`` rows.

    At every step each of the K alive hypotheses is extended by every token. Among these K * V
    candidates, ranked by summed log-probability:

    - a candidate ending in EOS is *finished* if it ranks in the top K; EOS candidates ranked
      lower are dropped (so ``beam_size=1`` is greedy search exactly, up to exact float ties);
    - at the last step (``max_len`` tokens) every candidate ends, EOS or not;
    - the K best candidates that do not end become the new alive hypotheses.

    Finished hypotheses are never extended. An example is done once K hypotheses have finished
    (fairseq's stopping rule; the search stops when every example is done or at ``max_len``).
    A finished hypothesis of ``L`` generated tokens (EOS included) scores
    ``sum(log_probs) / L ** length_penalty`` (``length_penalty=0``: the raw sum). Hypotheses with
    log-probability ``-inf`` (e.g. the empty beams of the first step) never finish.

    Args:
      step: ``(tokens [N] int32, cache) -> (logits [N, V], cache)`` (see the module doc).
      cache: the step's initial cache for the ``batch_size`` examples (non-scalar leaves
        ``[B, ...]``).
      batch_size: B.
      beam_size: K.
      max_len: maximum number of generated tokens (EOS included).
      bos_id: first input token.
      eos_id: end of sequence.
      pad_id: fills the positions after EOS.
      length_penalty: exponent of the length normalisation.

    Returns:
      ``(tokens [B, max_len] int32, scores [B] float32)``: the best hypothesis (without BOS,
      ``pad_id`` after EOS) and its score.
    """
    _check_rows(cache, batch_size)
    b, k = batch_size, beam_size
    cache = tile_cache(cache, k)
    rows = jnp.arange(b)[:, None] * k  # first row of every example

    def cond(state: tuple) -> Array:
        t, num_finished = state[0], state[-1]
        return (t < max_len) & ~jnp.all(num_finished >= k)

    def body(state: tuple) -> tuple:
        t, last, cache, alive, alive_logp, best, best_score, num_finished = state
        logits, cache = step(last, cache)
        vocab = logits.shape[-1]
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(b, k, vocab)
        cand = (alive_logp[:, :, None] + logp).reshape(b, k * vocab)
        ends = (jnp.arange(k * vocab) % vocab == eos_id) | (t == max_len - 1)  # [K * V]

        def extend(index: Array) -> tuple[Array, Array, Array]:
            """Candidate indices [B, M] -> (parent beams, tokens, sequences [B, M, max_len])."""
            parent, token = index // vocab, (index % vocab).astype(jnp.int32)
            seqs = jnp.take_along_axis(alive, parent[:, :, None], axis=1)
            return parent, token, lax.dynamic_update_slice_in_dim(seqs, token[..., None], t, 2)

        # Finish the ending candidates among the top K.
        top_logp, top = lax.top_k(cand, k)
        finishing = ends[top] & jnp.isfinite(top_logp) & (num_finished < k)[:, None]
        length = (t + 1).astype(jnp.float32)
        score = jnp.where(finishing, top_logp / length**length_penalty, -jnp.inf)
        i = jnp.argmax(score, axis=1)[:, None]
        new_score = jnp.take_along_axis(score, i, axis=1)[:, 0]
        new_seq = jnp.take_along_axis(extend(top)[2], i[:, :, None], axis=1)[:, 0]
        better = new_score > best_score
        best = jnp.where(better[:, None], new_seq, best)
        best_score = jnp.where(better, new_score, best_score)
        num_finished = num_finished + finishing.sum(axis=1, dtype=jnp.int32)

        # The K best candidates that go on.
        alive_logp, index = lax.top_k(jnp.where(ends, -jnp.inf, cand), k)
        parent, token, alive = extend(index)
        cache = gather_cache(cache, (rows + parent).reshape(-1))
        return t + 1, token.reshape(-1), cache, alive, alive_logp, best, best_score, num_finished

    state = (
        jnp.zeros((), jnp.int32),
        jnp.full((b * k,), bos_id, jnp.int32),
        cache,
        jnp.full((b, k, max_len), pad_id, jnp.int32),
        jnp.where(jnp.arange(k) == 0, 0.0, -jnp.inf).astype(jnp.float32)[None].repeat(b, 0),
        jnp.full((b, max_len), pad_id, jnp.int32),
        jnp.full((b,), -jnp.inf, jnp.float32),
        jnp.zeros((b,), jnp.int32),
    )
    state = lax.while_loop(cond, body, state)
    return state[5], state[6]


def prefix_cache(batch_size: int, max_len: int, pad_id: int, context: Any = None) -> dict:
    """The initial cache of a `prefix_step`.

    Args:
      batch_size: rows B.
      max_len: length of the decoder input buffer (the number of steps).
      pad_id: fills the not yet generated positions of the buffer.
      context: pytree passed to the logits function (non-scalar leaves ``[B, ...]``), e.g. the
        encoder memory.

    Returns:
      ``{"tokens": [B, max_len] int32 (pad), "position": int32 scalar 0, "context": context}``.
    """
    return {
        "tokens": jnp.full((batch_size, max_len), pad_id, jnp.int32),
        "position": jnp.zeros((), jnp.int32),
        "context": context,
    }


def prefix_step(logits_fn: Callable[[Array, Any], Array]) -> Step:
    """A step without a cache that re-runs the decoder on the whole token buffer.

    The step writes its input token at ``position`` of the buffer (BOS at 0), runs
    ``logits_fn(buffer [N, L], context) -> [N, L, V]`` (causal: logits at t only depend on tokens
    ``<= t``) and returns the logits at ``position``; O(L) work per step.

    Args:
      logits_fn: full-prefix decoder.

    Returns:
      A step whose cache is a `prefix_cache`.
    """

    def step(tokens: Array, cache: dict) -> tuple[Array, dict]:
        position = cache["position"]
        buffer = lax.dynamic_update_slice_in_dim(cache["tokens"], tokens[:, None], position, axis=1)
        logits = lax.dynamic_index_in_dim(
            logits_fn(buffer, cache["context"]), position, axis=1, keepdims=False
        )
        return logits.astype(jnp.float32), {**cache, "tokens": buffer, "position": position + 1}

    return step

