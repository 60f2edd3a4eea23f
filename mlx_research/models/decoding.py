"""Autoregressive decoding with static shapes (jit-friendly): decoding state, steps and search.

Searches are driven by a step function

    step(tokens: [N] int32, cache) -> (logits: [N, V] float, cache)

that consumes the previous token of every row (BOS at the first step) and returns the logits of
the next one. ``cache`` is any pytree (a model's key/value cache, a token buffer, the encoder
memory, ...) whose non-scalar leaves all have the rows N as leading axis; scalar leaves (e.g. the
current position) are shared by every row. Beam search tiles and reorders the cache by gathering
that axis, so a step must not keep per-row state anywhere else. `search` runs greedy search
(beam size 1) or beam search.

A model supplies its step in one of two ways:

- `cached_step`: an incremental-decoding method of the model, ``method(tokens [B, T], *context)
  -> logits [B, T, V]``, that keeps its state (key/value cache, recurrent memory, a
  `DecodeState`) in the ``"cache"`` collection; the model owns that layout.
- `prefix_step`: a full-prefix logits function (no cache: re-runs the whole prefix at every step,
  O(T^2) in all).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
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


def search(
    step: Step,
    cache: Cache,
    beam_size: int,
    *,
    batch_size: int,
    max_len: int,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    length_penalty: float = 1.0,
) -> Array:
    """Greedy search (``beam_size == 1``) or beam search's best hypothesis.

    Args:
      step: ``(tokens [N] int32, cache) -> (logits [N, V], cache)`` (see the module doc).
      cache: the step's initial cache for the ``batch_size`` examples.
      beam_size: K; 1 for `greedy_search`, otherwise `beam_search`.
      batch_size: B.
      max_len: maximum number of generated tokens (EOS included).
      bos_id: first input token.
      eos_id: end of sequence.
      pad_id: fills the positions after EOS.
      length_penalty: beam search's length-normalisation exponent (see `beam_search`).

    Returns:
      ``[B, max_len]`` int32 tokens without BOS, ``pad_id`` after the first EOS.
    """
    ids = dict(batch_size=batch_size, max_len=max_len, bos_id=bos_id, eos_id=eos_id,
               pad_id=pad_id)
    if beam_size == 1:
        return greedy_search(step, cache, **ids)
    return beam_search(step, cache, beam_size=beam_size, length_penalty=length_penalty, **ids)[0]


class DecodeState(nn.Module):
    """Incremental-decoding state of a model, in the ``"cache"`` collection.

    ``position``: int32 scalar, the position of the next decoder input (initially 0);
    ``valid``: ``[B, T_max]`` bool, which decoder inputs written so far are keys (not padding),
    initially False.

    Attributes:
      keep_first: position 0 is always a key (R2Gen keeps its BOS, whose id is the pad id).
    """

    keep_first: bool = False

    @nn.compact
    def __call__(self, valid: Array) -> tuple[Array | None, Array]:
        """Creates the state from ``valid: [B, T_max]``, or records one position ``[B, 1]``.

        Returns:
          ``(None, valid)`` at creation; afterwards ``(position written, valid [B, T_max])``.

        Raises:
          ValueError: after creation, ``valid`` is not one position.
        """
        initialized = self.has_variable("cache", "valid")
        cached = self.variable("cache", "valid", jnp.zeros, valid.shape, bool)
        position = self.variable("cache", "position", lambda: jnp.zeros((), jnp.int32))
        if not initialized:
            return None, valid
        if valid.shape[1] != 1:
            raise ValueError(f"incremental decoding takes one position; got {valid.shape[1]}")
        index = position.value
        if self.keep_first:
            valid = valid | (index == 0)
        cached.value = lax.dynamic_update_slice_in_dim(cached.value, valid, index, axis=1)
        position.value = index + 1
        return index, cached.value


def cached_step(
    model: nn.Module,
    variables: dict[str, Any],
    method: Callable[..., Array],
    context: tuple[Array, ...],
    max_len: int,
) -> tuple[Step, dict[str, Any]]:
    """The step of a model's incremental-decoding method, and its initial cache.

    ``method(module, tokens [B, T] int32, *context) -> logits [B, T, V]`` decodes with the
    ``"cache"`` collection: called without it (``"cache"`` mutable) on the full length
    ``T = max_len``, it creates the cache; called with it on one position ``T = 1``, it returns
    that position's logits and updates the cache. The initial cache is created here under
    ``jax.eval_shape`` (no compute) and filled with zeros, so a zero cache must be a valid start.

    Args:
      model: the model.
      variables: ``{"params": ..., other collections}`` (a ``"cache"`` among them is ignored).
      method: the incremental-decoding method, e.g. ``Model.decode_step``.
      context: the method's further arguments, arrays ``[B, ...]`` (e.g. the encoder output).
      max_len: T_max, the number of decoding steps.

    Returns:
      ``(step, cache)``: ``step(tokens [N] int32, cache) -> (logits [N, V], cache)``;
      ``cache = {"model": the "cache" collection, "context": context}`` (batch-leading, so beam
      search tiles and reorders the context with the model's cache).
    """
    variables = {name: tree for name, tree in variables.items() if name != "cache"}
    batch_size = jax.tree.leaves(context)[0].shape[0]

    def create(variables: dict[str, Any], context: tuple[Array, ...]) -> dict[str, Any]:
        tokens = jnp.zeros((batch_size, max_len), jnp.int32)
        _, state = model.apply(variables, tokens, *context, method=method, mutable=["cache"])
        return state["cache"]

    def step(tokens: Array, cache: dict[str, Any]) -> tuple[Array, dict[str, Any]]:
        logits, state = model.apply(
            {**variables, "cache": cache["model"]}, tokens[:, None], *cache["context"],
            method=method, mutable=["cache"],
        )
        return logits[:, 0], {**cache, "model": state["cache"]}

    shapes = jax.eval_shape(create, variables, context)
    return step, {"model": jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes),
                  "context": context}


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

