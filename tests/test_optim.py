"""Optimizer and schedule built from config.optim, against closed forms."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mlx_research.train.config import trainer_defaults
from mlx_research.train.optim import lr_multiplier_tree, make_optimizer, make_schedule


def optim(**kw):
    c = trainer_defaults().optim
    c.update(kw)
    return c


def test_warmup_cosine_schedule():
    s = make_schedule(optim(lr=0.1, warmup_steps=10, end_lr_factor=0.1), total_steps=110)
    assert float(s(0)) == 0.0
    np.testing.assert_allclose(float(s(5)), 0.05, rtol=1e-6)
    np.testing.assert_allclose(float(s(10)), 0.1, rtol=1e-6)
    t = (60 - 10) / 100  # halfway through the cosine
    want = 0.01 + (0.1 - 0.01) * 0.5 * (1 + math.cos(math.pi * t))
    np.testing.assert_allclose(float(s(60)), want, rtol=1e-5)
    np.testing.assert_allclose(float(s(110)), 0.01, rtol=1e-5)


def test_step_schedule_with_warmup():
    s = make_schedule(optim(lr=1.0, schedule="step", warmup_steps=4, decay_boundaries=(10, 20),
                            decay_factor=0.5), total_steps=30)
    got = [float(s(i)) for i in (2, 4, 9, 10, 19, 20, 29)]
    np.testing.assert_allclose(got, [0.5, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25], rtol=1e-6)


def test_lr_multipliers_weight_decay_mask_and_clipping():
    params = {"backbone": {"conv": {"kernel": jnp.ones(3)}, "bn": {"scale": jnp.ones(3)}},
              "head": {"kernel": jnp.ones(3), "bias": jnp.ones(3)}}
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    assert lr_multiplier_tree(params, {"^backbone/": 0.1}) == {
        "backbone": {"conv": {"kernel": 0.1}, "bn": {"scale": 0.1}},
        "head": {"kernel": 1.0, "bias": 1.0}}
    tx, _ = make_optimizer(optim(name="sgd", lr=0.2, schedule="constant", momentum=0.0,
                                 weight_decay=0.1, lr_multipliers={"^backbone/": 0.1}),
                           params, total_steps=10)
    updates, _ = tx.update(grads, tx.init(params), params)
    # SGD with L2-style decay on kernels only: -lr * mult * (g + wd * p)
    np.testing.assert_allclose(updates["backbone"]["conv"]["kernel"], -0.2 * 0.1 * 0.6)
    np.testing.assert_allclose(updates["backbone"]["bn"]["scale"], -0.2 * 0.1 * 0.5)
    np.testing.assert_allclose(updates["head"]["kernel"], -0.2 * 0.6)
    np.testing.assert_allclose(updates["head"]["bias"], -0.2 * 0.5)

    tx, _ = make_optimizer(optim(name="sgd", lr=1.0, schedule="constant", momentum=0.0,
                                 grad_clip_norm=0.5), params, total_steps=10)
    updates, _ = tx.update(grads, tx.init(params), params)
    norm = float(optax.tree.norm(updates))
    np.testing.assert_allclose(norm, 0.5, rtol=1e-6)  # |g| = 0.5 * sqrt(12) > 0.5 -> clipped


def test_adamw_decoupled_decay_masked():
    params = {"dense": {"kernel": jnp.full(2, 2.0), "bias": jnp.full(2, 2.0)}}
    grads = jax.tree.map(jnp.zeros_like, params)
    tx, _ = make_optimizer(optim(lr=0.1, schedule="constant", weight_decay=0.01), params, 5)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["dense"]["kernel"], -0.1 * 0.01 * 2.0, rtol=1e-6)
    np.testing.assert_allclose(updates["dense"]["bias"], 0.0)


def test_unknown_schedule_raises():
    with pytest.raises(ValueError, match="poly"):
        make_schedule(optim(schedule="poly"), 10)
