"""The hash32 PRNG: bits equal a numpy evaluation of the formula, and the statistics of a dropout
mask (keep rate, independence of neighbours, of keys and of steps) hold."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from mlx_research.prng import HASH32, RNG_IMPLS, step_key


def _numpy_bits(key: np.ndarray, n: int) -> np.ndarray:
    """bits[i] = fmix32(fmix32(i ^ k0) + k1) in numpy uint32 arithmetic (wrapping)."""

    def fmix(h):
        h = h ^ (h >> np.uint32(16))
        h = h * np.uint32(0x85EBCA6B)
        h = h ^ (h >> np.uint32(13))
        h = h * np.uint32(0xC2B2AE35)
        return h ^ (h >> np.uint32(16))

    with np.errstate(over="ignore"):
        return fmix(fmix(np.arange(n, dtype=np.uint32) ^ key[0]) + key[1])


def _key(seed: int) -> jax.Array:
    return step_key(jax.random.PRNGKey(seed), "hash32")


def test_bits_equal_the_formula_in_numpy():
    key = _key(3)
    data = np.asarray(jax.random.key_data(key))
    expected = _numpy_bits(data, 24)
    np.testing.assert_array_equal(np.asarray(jax.random.bits(key, (4, 6))), expected.reshape(4, 6))
    np.testing.assert_array_equal(np.asarray(jax.random.bits(key, (5,), jnp.uint8)),
                                  (expected[:5] & 0xFF).astype(np.uint8))
    with jax.enable_x64(True):
        wide = np.asarray(jax.random.bits(key, (3,), jnp.uint64))
    pairs = expected[:6].astype(np.uint64).reshape(3, 2)
    np.testing.assert_array_equal(wide, (pairs[:, 0] << np.uint64(32)) | pairs[:, 1])


def test_keys_split_and_fold_in_as_threefry():
    raw = jax.random.PRNGKey(7)
    key = step_key(raw, "hash32")
    np.testing.assert_array_equal(jax.random.key_data(jax.random.fold_in(key, 5)),
                                  jax.random.fold_in(raw, 5))
    np.testing.assert_array_equal(jax.random.key_data(jax.random.split(key, 3)),
                                  jax.random.split(raw, 3))
    assert step_key(raw, "threefry2x32") is raw
    with pytest.raises(ValueError, match="rng_impl must be one of"):
        step_key(raw, "philox")
    assert RNG_IMPLS == ("threefry2x32", "hash32")


def test_uniform_passes_a_chi_square_test():
    u = np.asarray(jax.random.uniform(_key(0), (200_000,)))
    counts = np.histogram(u, bins=100, range=(0.0, 1.0))[0]
    assert stats.chisquare(counts).pvalue > 1e-4
    assert abs(u.mean() - 0.5) < 5 * np.sqrt(1 / 12 / u.size)


def test_dropout_masks_have_the_keep_rate_and_no_correlation():
    n = 1000
    keep = np.asarray(jax.random.bernoulli(_key(1), 0.9, (n, n))).astype(np.float64)
    sigma = np.sqrt(0.9 * 0.1 / keep.size)
    assert abs(keep.mean() - 0.9) < 5 * sigma
    bound = 5 / np.sqrt(keep.size)
    # neighbours along both axes, and the masks of two steps (fold_in) and of two seeds
    other_step = np.asarray(jax.random.bernoulli(jax.random.fold_in(_key(1), 1), 0.9, (n, n)))
    other_seed = np.asarray(jax.random.bernoulli(_key(2), 0.9, (n, n)))
    for a, b in ((keep[:, 1:], keep[:, :-1]), (keep[1:], keep[:-1]), (keep, other_step),
                 (keep, other_seed)):
        assert abs(np.corrcoef(a.ravel(), np.asarray(b, np.float64).ravel())[0, 1]) < bound


def test_same_key_same_mask_and_too_many_words_are_refused():
    key = _key(4)
    np.testing.assert_array_equal(jax.random.bernoulli(key, 0.5, (64,)),
                                  jax.random.bernoulli(key, 0.5, (64,)))
    with pytest.raises(ValueError, match="2\\*\\*32 counter"):
        jax.jit(lambda k: jax.random.bits(k, (2**16, 2**16))).lower(key)
    assert jax.random.key_impl(key) == HASH32
