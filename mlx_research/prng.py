"""PRNG implementations for the random numbers of a train step (dropout masks, RReLU slopes).

JAX's default generator, threefry2x32, runs 20 cipher rounds per 64 random bits. On a CPU that
dominates dropout: a mask for 7.5M attention weights takes ~90 ms on 2 cores (NADM's memory read),
a large part of a step. ``"hash32"`` keeps threefry's keys (the same ``seed``, ``split`` and
``fold_in``, so a key means the same stream of keys) but draws the bits of one key from a
counter-based hash, murmur3's 32-bit finaliser applied twice::

    bits[i] = fmix32(fmix32(i ^ key[0]) + key[1])

one fused elementwise pass (~1 ms for the same mask). The finaliser is a bijection with full
avalanche, so distinct counters give distinct, well-mixed words; the statistics a dropout mask
needs (keep rate, no correlation between neighbours or between keys) are tested in
tests/test_prng.py. It is not a cryptographic or a long-period generator: use it for the noise of
training, not for sampling experiments that need the quality of threefry.

``jax.random`` functions accept keys of either implementation; `step_key` turns the trainer's
raw threefry key data into a key of the configured one.
"""

from __future__ import annotations

import math

import jax
import jax.extend.random as jex_random
import jax.numpy as jnp

Array = jax.Array

RNG_IMPLS = ("threefry2x32", "hash32")
"""Values of the trainer's ``rng_impl``."""

_THREEFRY = jex_random.threefry_prng_impl
_BITS_DTYPES = {8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32}


def fmix32(h: Array) -> Array:
    """murmur3's 32-bit finaliser (a bijection of uint32 with full avalanche)."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _hash_bits(key: Array, bit_width: int, shape: tuple[int, ...]) -> Array:
    """``shape`` random unsigned integers of ``bit_width`` bits from one key ``uint32[2]``."""
    words = math.prod(shape) * (2 if bit_width == 64 else 1)
    if words >= 2**32:
        raise ValueError(f"hash32 PRNG: {words} random words in one call exceed its 2**32 "
                         "counter; split the key (or use rng_impl='threefry2x32')")
    counter = jax.lax.iota(jnp.uint32, words)
    bits = fmix32(fmix32(counter ^ key[0]) + key[1])
    if bit_width == 64:
        pairs = bits.reshape(-1, 2).astype(jnp.uint64)
        return ((pairs[:, 0] << 32) | pairs[:, 1]).reshape(shape)
    return bits.astype(_BITS_DTYPES[bit_width]).reshape(shape)


HASH32 = jex_random.define_prng_impl(
    key_shape=(2,), seed=_THREEFRY.seed, split=_THREEFRY.split, fold_in=_THREEFRY.fold_in,
    random_bits=_hash_bits, name="hash32", tag="h32")
"""The ``"hash32"`` implementation (threefry keys, counter-hash bits)."""


def step_key(raw: Array, impl: str) -> Array:
    """The key of a train step for ``impl`` (one of `RNG_IMPLS`) from threefry key data
    ``uint32[2]``: the data itself for "threefry2x32", a typed "hash32" key otherwise."""
    if impl not in RNG_IMPLS:
        raise ValueError(f"rng_impl must be one of {RNG_IMPLS}, got {impl!r}")
    return raw if impl == "threefry2x32" else jax.random.wrap_key_data(raw, impl=HASH32)
