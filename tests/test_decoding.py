"""Tests for mlx_research.models.decoding (greedy/beam search, `search`, `DecodeState`,
`cached_step`) and the seq2seq model's decoding step.

Search tests use a step whose logits come from a random table indexed by (example, generated
prefix); the prefix is read from the cache, so wrong tiling or reordering of the cache changes the
logits. Every hypothesis of such a model is enumerated and scored in numpy.
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.linen import meta
from scipy.special import log_softmax

from mlx_research.models.decoding import DecodeState, beam_search, cached_step, search
from mlx_research.models.seq2seq import Seq2SeqTransformer, make_step

PAD = -1  # search tests: outside the vocabulary, so a pad in the output is never a real token


# ---------------------------------------------------------------- a table "model" and numpy search


def code(prefix, vocab):
    """Index of a generated prefix: digits token + 1 in base vocab + 1."""
    return sum((tok + 1) * (vocab + 1) ** j for j, tok in enumerate(prefix))


def table_model(table, max_len):
    """step and cache of the model ``logits = table[example, code(prefix)]``.

    The cache holds the example index [N], the input history [N, max_len] (BOS, then generated
    tokens) and the position (scalar).
    """
    batch, _, vocab = table.shape
    weights = np.concatenate([[0], (vocab + 1) ** np.arange(max_len - 1)]).astype(np.int32)
    table = jnp.asarray(table)

    def step(tokens, cache):
        pos = cache["pos"]
        history = jax.lax.dynamic_update_slice_in_dim(cache["history"], tokens[:, None], pos, 1)
        seen = jnp.arange(max_len) <= pos
        index = jnp.sum(jnp.where(seen, (history + 1) * weights, 0), axis=1)
        logits = table[cache["example"], index]
        return logits, {**cache, "history": history, "pos": pos + 1}

    cache = {
        "example": jnp.arange(batch, dtype=jnp.int32),
        "history": jnp.zeros((batch, max_len), jnp.int32),
        "pos": jnp.zeros((), jnp.int32),
    }
    return step, cache


def random_table(seed, batch, vocab, max_len, scale=1.5):
    rng = np.random.default_rng(seed)
    return (scale * rng.normal(size=(batch, (vocab + 1) ** max_len, vocab))).astype(np.float32)


def hypotheses(table, example, eos, max_len):
    """Every finished hypothesis (tokens, summed log-prob) of one example, in float64."""
    vocab = table.shape[-1]
    logp = log_softmax(table[example].astype(np.float64), axis=-1)
    out = []

    def grow(prefix, total):
        for tok in range(vocab):
            seq, s = prefix + [tok], total + logp[code(prefix, vocab), tok]
            if tok == eos or len(seq) == max_len:
                out.append((seq, s))
            else:
                grow(seq, s)

    grow([], 0.0)
    return out


def np_best(table, example, eos, max_len, length_penalty):
    """(tokens padded to max_len, score) of the best hypothesis by exhaustive enumeration."""
    seq, s = max(hypotheses(table, example, eos, max_len),
                 key=lambda h: h[1] / len(h[0]) ** length_penalty)
    return seq + [PAD] * (max_len - len(seq)), s / len(seq) ** length_penalty


def np_greedy(table, example, eos, max_len):
    vocab, seq = table.shape[-1], []
    while len(seq) < max_len and (not seq or seq[-1] != eos):
        seq.append(int(np.argmax(table[example, code(seq, vocab)])))
    return seq + [PAD] * (max_len - len(seq))


def table_ids(table, max_len, eos):
    return dict(batch_size=table.shape[0], max_len=max_len, bos_id=table.shape[-1], eos_id=eos,
                pad_id=PAD)


def run_search(table, max_len, beam_size=1, length_penalty=1.0, eos=0):
    """Tokens of `search` (greedy for beam_size 1) on the table model."""
    step, cache = table_model(table, max_len)
    ids = table_ids(table, max_len, eos)
    run = jax.jit(lambda c: search(step, c, beam_size, length_penalty=length_penalty, **ids))
    return np.asarray(run(cache))


def run_beam_search(table, max_len, beam_size, length_penalty=1.0, eos=0):
    """(tokens, scores) of `beam_search` on the table model."""
    step, cache = table_model(table, max_len)
    ids = table_ids(table, max_len, eos)
    run = jax.jit(lambda c: beam_search(step, c, beam_size=beam_size,
                                        length_penalty=length_penalty, **ids))
    return tuple(np.asarray(a) for a in run(cache))


# ---------------------------------------------------------------- search tests


def test_greedy_search_matches_numpy_and_pads_after_eos():
    batch, vocab, max_len, eos = 6, 3, 5, 0
    table = random_table(0, batch, vocab, max_len)
    out = run_search(table, max_len, eos=eos)
    ref = np.array([np_greedy(table, b, eos, max_len) for b in range(batch)])
    np.testing.assert_array_equal(out, ref)
    assert (ref == PAD).any() and (ref != PAD).all(axis=1).any()  # early EOS and none


@pytest.mark.parametrize("vocab, max_len, length_penalty", [(4, 3, 1.0), (3, 4, 0.0), (3, 4, 0.6)])
def test_exhaustive_beam_search_returns_best_hypothesis(vocab, max_len, length_penalty):
    """A beam as wide as every step's candidates keeps every hypothesis: the best must win.

    The logits depend on the cache (example, prefix history), so this also checks that the cache
    is tiled per example and reordered with the beams.
    """
    batch, eos = 3, 1
    beam = (vocab - 1) ** (max_len - 1) * vocab  # candidates of the last step
    table = random_table(1, batch, vocab, max_len)
    tokens, scores = run_beam_search(table, max_len, beam, length_penalty, eos)
    refs = [np_best(table, b, eos, max_len, length_penalty) for b in range(batch)]
    for b, (ref_tokens, ref_score) in enumerate(refs):
        np.testing.assert_array_equal(tokens[b], ref_tokens)
        np.testing.assert_allclose(scores[b], ref_score, rtol=1e-5)
    np.testing.assert_array_equal(run_search(table, max_len, beam, length_penalty, eos), tokens)


@pytest.mark.slow
def test_length_penalty_can_change_the_winner():
    vocab, max_len, eos, batch = 3, 4, 0, 2
    beam = (vocab - 1) ** (max_len - 1) * vocab
    for seed in range(100):
        table = random_table(seed, batch, vocab, max_len)
        best = {lp: [np_best(table, b, eos, max_len, lp) for b in range(batch)] for lp in (0, 1)}
        if best[0][0][0] != best[1][0][0]:
            break
    else:
        pytest.fail("no table where the length penalty changes the winner")
    for lp in (0, 1):
        tokens, scores = run_beam_search(table, max_len, beam, float(lp), eos)
        searched = run_search(table, max_len, beam, float(lp), eos)
        for b in range(batch):
            np.testing.assert_array_equal(tokens[b], best[lp][b][0])
            np.testing.assert_array_equal(searched[b], best[lp][b][0])
            np.testing.assert_allclose(scores[b], best[lp][b][1], rtol=1e-5)


def test_beam_size_one_is_greedy_search():
    batch, vocab, max_len, eos = 8, 4, 5, 2
    table = random_table(2, batch, vocab, max_len)
    tokens, scores = run_beam_search(table, max_len, 1, eos=eos)
    greedy = run_search(table, max_len, eos=eos)
    np.testing.assert_array_equal(tokens, greedy)
    assert (greedy == PAD).any()
    for b in range(batch):  # the score is the greedy sequence's
        seq = [int(t) for t in greedy[b] if t != PAD]
        s = dict((tuple(h), v) for h, v in hypotheses(table, b, eos, max_len))[tuple(seq)]
        np.testing.assert_allclose(scores[b], s / len(seq), rtol=1e-5)


def test_beam_of_two_finds_what_greedy_misses():
    """Hand-made table: greedy takes token 1 (0.6) then EOS (0.55): 0.33; beam 2 also keeps
    token 2 (0.4), then EOS (0.99): 0.396."""
    vocab, max_len, eos = 3, 2, 0
    table = np.full((1, (vocab + 1) ** max_len, vocab), -30.0)
    table[0, code([], vocab)] = [-30.0, np.log(0.6), np.log(0.4)]
    table[0, code([1], vocab)] = [np.log(0.55), np.log(0.45), -30.0]
    table[0, code([2], vocab)] = [np.log(0.99), np.log(0.01), -30.0]
    table = table.astype(np.float32)
    greedy = run_beam_search(table, max_len, 1, 0.0, eos)
    two = run_beam_search(table, max_len, 2, 0.0, eos)
    np.testing.assert_array_equal(greedy[0][0], [1, 0])
    np.testing.assert_allclose(greedy[1][0], np.log(0.6 * 0.55), rtol=1e-4)
    np.testing.assert_array_equal(two[0][0], [2, 0])
    np.testing.assert_allclose(two[1][0], np.log(0.4 * 0.99), rtol=1e-4)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_search_ends_a_row_at_eos_and_pads_it(beam_size):
    """Example 0: after token 2, EOS has almost all the mass (best: [2, EOS], then pad); example 1
    never prefers EOS (best: four times token 2, no EOS)."""
    vocab, max_len, eos = 3, 4, 0
    table = np.tile(np.float32([-30.0, 0.0, np.log(2.0)]), (2, (vocab + 1) ** max_len, 1))
    table[0, code([2], vocab)] = [5.0, 0.0, 0.0]
    np.testing.assert_array_equal(run_search(table, max_len, beam_size, eos=eos),
                                  [[2, eos, PAD, PAD], [2, 2, 2, 2]])


def test_decode_state_records_keys_and_positions():
    valid = np.array([[True, False, True], [False, True, True]])
    for keep_first in (False, True):
        state = DecodeState(keep_first=keep_first)
        _, variables = state.apply({}, np.zeros_like(valid), mutable=["cache"])
        positions = []
        for t in range(valid.shape[1]):
            (position, flags), variables = state.apply(variables, valid[:, t:t + 1],
                                                       mutable=["cache"])
            positions.append(int(position))
        expected = valid.copy()
        expected[:, 0] |= keep_first
        assert positions == [0, 1, 2]
        np.testing.assert_array_equal(flags, expected)
        with pytest.raises(ValueError, match="one position"):
            state.apply(variables, valid[:, :2], mutable=["cache"])


# ---------------------------------------------------------------- seq2seq model

VOCAB, BOS, MAX_LEN = 8, 1, 6
KW = dict(vocab_size=VOCAB, d_model=16, nhead=2, num_encoder_layers=2, num_decoder_layers=2,
          dim_feedforward=32, dropout=0.0)


def model_and_variables(pipeline=False, seed=0):
    """A tiny model (kernels scaled up for less repetitive predictions), padded inputs [4, 5]."""
    model = Seq2SeqTransformer(**KW, pipeline=pipeline)
    rng = np.random.default_rng(seed)
    inputs = rng.integers(3, VOCAB, (4, 5)).astype(np.int32)
    inputs[1, 3:] = inputs[3, 2:] = 0
    variables = meta.unbox(jax.jit(model.init)(jax.random.key(seed), inputs, inputs[:, :MAX_LEN]))
    variables = jax.tree_util.tree_map_with_path(
        lambda path, p: 3 * p if path[-1].key == "kernel" else p, variables)
    return model, variables, inputs


def full_recompute_greedy(model, variables, inputs, eos):
    """Independent greedy loop: argmax of the full forward on the prefix; pad (0) after EOS."""
    apply = jax.jit(model.apply)
    buf = np.zeros((inputs.shape[0], MAX_LEN), np.int32)
    buf[:, 0] = BOS
    out = np.zeros_like(buf)
    for t in range(MAX_LEN):
        out[:, t] = np.asarray(apply(variables, inputs, buf))[:, t].argmax(-1)
        if t + 1 < MAX_LEN:
            buf[:, t + 1] = out[:, t]
    if eos is not None:
        after = np.cumsum(out == eos, axis=1) - (out == eos) > 0
        out[after] = 0
    return out


def generate(model, variables, inputs, beam_size=1, length_penalty=1.0, **ids):
    """`make_step` and `search`: [B, MAX_LEN] tokens."""
    step, cache = make_step(model, variables, inputs, MAX_LEN)
    return search(step, cache, beam_size, batch_size=inputs.shape[0], max_len=MAX_LEN,
                  length_penalty=length_penalty, **ids)


def pick_eos(unmasked):
    """A token (not pad/BOS) that greedy emits in some rows but not in all."""
    present = [set(row.tolist()) - {0, BOS} for row in unmasked]
    some = set().union(*present) - set.intersection(*present)
    assert some, "change the model seed: every row generates the same tokens"
    return min(some)


@pytest.mark.slow
def test_cached_decode_step_equals_full_decode():
    model, variables, inputs = model_and_variables()
    rng = np.random.default_rng(5)
    dec = rng.integers(0, VOCAB, (4, MAX_LEN)).astype(np.int32)
    dec[:, 0] = BOS
    dec[0, 2] = dec[2, 4] = 0  # padding tokens among the decoder inputs are masked as keys

    @jax.jit
    def cached(variables):
        memory = model.apply(variables, inputs, method=Seq2SeqTransformer.encode)
        step, cache = cached_step(model, variables, Seq2SeqTransformer.decode_step,
                                  (memory, inputs), MAX_LEN)
        cache, logits = jax.lax.scan(lambda c, t: step(t, c)[::-1], cache, dec.T)
        return jnp.swapaxes(logits, 0, 1), cache["model"]

    logits, cache = cached(variables)
    full = jax.jit(model.apply)(variables, inputs, dec)
    np.testing.assert_allclose(logits, full, rtol=1e-5, atol=1e-5)
    layer = cache["decoder"]["layers_0"]["self_attn"]
    assert layer["cached_key"].shape == (4, MAX_LEN, 2, 8)
    assert int(layer["cache_index"]) == int(cache["decode_state"]["position"]) == MAX_LEN
    np.testing.assert_array_equal(cache["decode_state"]["valid"], dec != 0)


@pytest.mark.parametrize("pipeline", [False, True])
@pytest.mark.slow
def test_generate_equals_full_recompute_greedy(pipeline):
    """Cached (or, pipelined, buffer-recomputing) greedy `generate` vs an independent loop."""
    model, variables, inputs = model_and_variables(pipeline)
    eos = pick_eos(full_recompute_greedy(model, variables, inputs, None))
    ref = full_recompute_greedy(model, variables, inputs, eos)
    assert (ref[:, :-1] == eos).any() and (ref != eos).all(axis=1).any()  # early EOS, and none

    run = jax.jit(lambda v, x: generate(model, v, x, bos_id=BOS, eos_id=eos, pad_id=0))
    np.testing.assert_array_equal(run(variables, inputs), ref)


@pytest.mark.parametrize("pipeline", [False, True])
@pytest.mark.slow
def test_beam_search_scores_equal_teacher_forced_scores(pipeline):
    """Beam search on the model: each returned score is the teacher-forced score of its tokens
    (catches a cache that is not reordered with the beams); `search` returns the tokens."""
    model, variables, inputs = model_and_variables(pipeline, seed=1)
    eos = pick_eos(full_recompute_greedy(model, variables, inputs, None))
    ids = dict(bos_id=BOS, eos_id=eos, pad_id=0)
    lp = 0.7

    @jax.jit
    def run(variables, inputs):
        step, cache = make_step(model, variables, inputs, MAX_LEN)
        beams = beam_search(step, cache, batch_size=4, beam_size=3, length_penalty=lp,
                            max_len=MAX_LEN, **ids)
        return beams, generate(model, variables, inputs, beam_size=3, length_penalty=lp, **ids)

    (tokens, scores), generated = jax.tree.map(np.asarray, run(variables, inputs))
    np.testing.assert_array_equal(generated, tokens)
    assert (tokens == eos).any()

    ended = np.cumsum(tokens == eos, axis=1) - (tokens == eos) > 0
    lengths = MAX_LEN - ended.sum(1)
    dec = np.concatenate([np.full((4, 1), BOS, np.int32), tokens[:, :-1]], axis=1)
    logp = log_softmax(np.asarray(jax.jit(model.apply)(variables, inputs, dec), np.float64), -1)
    token_logp = np.take_along_axis(logp, tokens[..., None].clip(0), axis=-1)[..., 0]
    ref = np.where(ended, 0.0, token_logp).sum(1) / lengths**lp
    np.testing.assert_allclose(scores, ref, rtol=1e-4, atol=1e-5)
