"""Optimizer and schedule built from config.optim, against closed forms."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
import optax
import pytest

from mlx_research.errors import ConfigError
from mlx_research.train.config import trainer_defaults
from mlx_research.train.optim import (
    check_param_groups,
    group_learning_rates,
    lr_multiplier_tree,
    make_optimizer,
    make_schedule,
    map_opt_state_params,
)
from mlx_research.tree import flatten, path_name


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
    assert lr_multiplier_tree(params, (("^backbone/", 0.1),)) == {
        "backbone": {"conv": {"kernel": 0.1}, "bn": {"scale": 0.1}},
        "head": {"kernel": 1.0, "bias": 1.0}}
    tx, _ = make_optimizer(optim(name="sgd", lr=0.2, schedule="constant", momentum=0.0,
                                 weight_decay=0.1, lr_multipliers=(("^backbone/", 0.1),)),
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


# ------------------------------------------------------------------ parameter groups

def group_params():
    """backbone/stem (to freeze), backbone/layers.0 and layers.1, head; all leaves distinct."""
    return {
        "backbone": {
            "stem": {"kernel": jnp.full((4, 4), 1.5), "bias": jnp.full(4, -0.5)},
            "layers.0": {"kernel": jnp.full((2, 3), 2.0)},
            "layers.1": {"kernel": jnp.full((3, 2), -1.0)},
        },
        "head": {"kernel": jnp.full((2, 2), 0.5), "bias": jnp.full(2, 0.25)},
    }


def sgd(**kw):
    return optim(**{"name": "sgd", "lr": 0.1, "schedule": "constant", "momentum": 0.0, **kw})


def test_lr_multipliers_dotted_regexes_first_match_wins():
    params = group_params()
    pairs = ((r"layers\.0/", 0.5), ("^backbone/", 0.1), ("^head/kernel$", 2.0))
    assert lr_multiplier_tree(params, pairs) == {
        "backbone": {"stem": {"kernel": 0.1, "bias": 0.1}, "layers.0": {"kernel": 0.5},
                     "layers.1": {"kernel": 0.1}},
        "head": {"kernel": 2.0, "bias": 1.0}}
    # Same patterns, the broad one first: it wins for every backbone leaf.
    reordered = lr_multiplier_tree(params, (pairs[1], pairs[0]))
    assert reordered["backbone"]["layers.0"]["kernel"] == 0.1
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    tx, _ = make_optimizer(sgd(lr_multipliers=pairs), params, 10)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["backbone"]["layers.0"]["kernel"], -0.1 * 0.5 * 0.5)
    np.testing.assert_allclose(updates["backbone"]["layers.1"]["kernel"], -0.1 * 0.1 * 0.5)
    np.testing.assert_allclose(updates["head"]["kernel"], -0.1 * 2.0 * 0.5)
    np.testing.assert_allclose(updates["head"]["bias"], -0.1 * 0.5)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
@pytest.mark.slow
def test_frozen_parameters_never_move(name):
    params = group_params()
    config = optim(name=name, lr=0.1, schedule="constant", momentum=0.9, weight_decay=0.1,
                   wd_exclude=(), grad_clip_norm=1.0, frozen=("^backbone/stem/",),
                   lr_multipliers=(("^backbone/", 0.1),))
    tx, _ = make_optimizer(config, params, 10)
    state, p = tx.init(params), params
    for i in range(4):
        grads = jax.tree.map(lambda x: jnp.full_like(x, 0.3 * (i + 1)), p)
        updates, state = tx.update(grads, state, p)
        assert all(not np.any(np.asarray(u)) for u in jax.tree.leaves(updates["backbone"]["stem"]))
        p = optax.apply_updates(p, updates)
    for before, after in zip(jax.tree.leaves(params["backbone"]["stem"]),
                             jax.tree.leaves(p["backbone"]["stem"])):
        np.testing.assert_array_equal(np.asarray(after).view(np.uint32),
                                      np.asarray(before).view(np.uint32))
    for key in ("layers.0", "layers.1"):
        assert np.all(p["backbone"][key]["kernel"] != params["backbone"][key]["kernel"])
    assert all(np.all(a != b) for a, b in zip(jax.tree.leaves(p["head"]),
                                              jax.tree.leaves(params["head"])))


@pytest.mark.parametrize("name, moments", [("sgd", 1), ("adamw", 2)])
def test_frozen_parameters_hold_no_optimizer_state(name, moments):
    params = group_params()
    trainable = [x for n, x in flatten(params).items() if not n.startswith("backbone/stem/")]
    config = optim(name=name, momentum=0.9, frozen=("^backbone/stem/",))
    tx, _ = make_optimizer(config, params, 10)
    arrays = [x for x in jax.tree.leaves(tx.init(params)) if x.ndim > 0]  # all but step counts
    assert sorted(x.shape for x in arrays) == sorted([x.shape for x in trainable] * moments)
    assert sum(x.nbytes for x in arrays) == moments * sum(x.nbytes for x in trainable)
    # The same from abstract parameters, as the trainer builds it.
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    tx, _ = make_optimizer(config, abstract, 10)
    shapes = [x.shape for x in jax.tree.leaves(jax.eval_shape(tx.init, abstract)) if x.shape]
    assert sorted(shapes) == sorted([x.shape for x in trainable] * moments)


def test_clipping_ignores_frozen_gradients():
    params = group_params()
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.1), params)
    grads["backbone"]["stem"]["kernel"] = jnp.full((4, 4), 1e6)  # frozen: must not matter
    trainable_norm = 0.1 * math.sqrt(6 + 6 + 4 + 2)
    for clip, scale in ((1.0, 1.0), (0.2, 0.2 / trainable_norm)):  # under / over the clip
        assert (trainable_norm < clip) == (scale == 1.0)
        tx, _ = make_optimizer(sgd(lr=1.0, grad_clip_norm=clip, frozen=("^backbone/stem/",)),
                               params, 10)
        updates, _ = tx.update(grads, tx.init(params), params)
        np.testing.assert_allclose(updates["head"]["kernel"], -0.1 * scale, rtol=1e-6)
        np.testing.assert_allclose(updates["backbone"]["layers.1"]["kernel"], -0.1 * scale,
                                   rtol=1e-6)
        np.testing.assert_array_equal(updates["backbone"]["stem"]["kernel"], 0.0)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_weight_decay_skips_frozen_parameters(name):
    params = group_params()
    grads = jax.tree.map(jnp.zeros_like, params)
    config = optim(name=name, lr=0.1, schedule="constant", momentum=0.0, weight_decay=0.5,
                   wd_exclude=(), frozen=("^backbone/stem/kernel",))
    tx, _ = make_optimizer(config, params, 10)
    updates, _ = tx.update(grads, tx.init(params), params)
    # Zero gradients: the update is the decay alone, -lr * wd * p (adamw's Adam part is 0).
    np.testing.assert_array_equal(updates["backbone"]["stem"]["kernel"], 0.0)
    np.testing.assert_allclose(updates["backbone"]["stem"]["bias"], -0.1 * 0.5 * -0.5, rtol=1e-6)
    np.testing.assert_allclose(updates["head"]["kernel"], -0.1 * 0.5 * 0.5, rtol=1e-6)


def raw_optim(**kw):
    """config.optim without ConfigDict's type checks (which refuse a dict for a tuple field)."""
    return ml_collections.ConfigDict(dict(trainer_defaults().optim.to_dict(), **kw))


@pytest.mark.parametrize("kw, key, entry", [
    (dict(lr_multipliers={"^backbone/": 0.1}), "optim.lr_multipliers", "'^backbone/': 0.1"),
    (dict(lr_multipliers=("^backbone/", 0.1)), "optim.lr_multipliers", "'^backbone/'"),
    (dict(lr_multipliers=(("^backbone/",),)), "optim.lr_multipliers", "('^backbone/',)"),
    (dict(lr_multipliers=(("^backbone/", "0.1"),)), "optim.lr_multipliers", "'0.1'"),
    (dict(lr_multipliers=(("^backbone/", -1.0),)), "optim.lr_multipliers", "-1.0"),
    (dict(lr_multipliers=(("^backbone/[", 0.1),)), "optim.lr_multipliers", "'^backbone/['"),
    (dict(lr_multipliers=(("^backbon/", 0.1),)), "optim.lr_multipliers", "'^backbon/'"),
    (dict(frozen="^backbone/stem"), "optim.frozen", "'^backbone/stem'"),
    (dict(frozen=(3,)), "optim.frozen", "(3,)"),
    (dict(frozen=("^backbone/(stem",)), "optim.frozen", "'^backbone/(stem'"),
    (dict(frozen=("^backbone/layers.2",)), "optim.frozen", "'^backbone/layers.2'"),
    (dict(frozen=("^backbone/", "^head/")), "optim.frozen", "('^backbone/', '^head/')"),
])
def test_check_param_groups_names_key_and_entry(kw, key, entry):
    params = group_params()
    config = raw_optim(**kw)
    for call in (lambda: check_param_groups(config, params),
                 lambda: make_optimizer(config, params, 10)):
        with pytest.raises(ConfigError) as e:
            call()
        message = str(e.value)
        assert key in message and entry in message and "\n" not in message, message


def test_check_param_groups_messages():
    params = group_params()
    cases = {
        "does not compile": dict(frozen=("(",)),
        "matches no parameter (e.g. 'backbone/layers.0/kernel'": dict(frozen=("^neck/",)),
        "freezes all 6 parameters": dict(frozen=(".",)),
        "trailing comma": dict(lr_multipliers=("^head/", 2.0)),
        "factor must be >= 0": dict(lr_multipliers=(("^head/", float("nan")),)),
    }
    for text, kw in cases.items():
        with pytest.raises(ConfigError, match=re.escape(text)):
            check_param_groups(raw_optim(**kw), params)
    check_param_groups(optim(frozen=("^backbone/stem",), lr_multipliers=(("^head/", 0),)), params)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    check_param_groups(optim(frozen=("^backbone/stem",)), abstract)


def test_group_learning_rates_under_jit():
    config = optim(lr=0.2, schedule="constant", warmup_steps=10,
                   lr_multipliers=(("^backbone/", 0.1), (r"^head/layers\.0$", 2.0)))
    schedule = make_schedule(config, 100)
    rates = jax.jit(lambda step: group_learning_rates(config, schedule, step))(jnp.int32(5))
    lr = 0.2 * 5 / 10  # linear warmup
    assert set(rates) == {"lr", "lr/backbone", "lr/head_layers_.0"}
    assert all(re.fullmatch(r"lr(/[A-Za-z0-9_.-]+)?", k) for k in rates)
    np.testing.assert_allclose(float(rates["lr"]), lr, rtol=1e-6)
    np.testing.assert_allclose(float(rates["lr/backbone"]), lr * 0.1, rtol=1e-6)
    np.testing.assert_allclose(float(rates["lr/head_layers_.0"]), lr * 2.0, rtol=1e-6)
    assert set(group_learning_rates(optim(), schedule, 0)) == {"lr"}


def flatten_names(params):
    return jax.tree_util.tree_map_with_path(lambda path, _: path_name(path), params)


def test_state_shardings_from_param_shardings_with_frozen():
    params = group_params()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    tx, _ = make_optimizer(optim(frozen=("^backbone/stem/",)), abstract, 10)
    abstract_state = jax.eval_shape(tx.init, abstract)
    names = map_opt_state_params(tx, lambda _, n: n, abstract_state, flatten_names(params),
                                 transform_non_params=lambda _: "other")
    # Adam's two moments of each trainable parameter, two step counts, nothing for the stem.
    trainable = [n for n in jax.tree.leaves(flatten_names(params)) if "stem" not in n]
    assert sorted(jax.tree.leaves(names)) == sorted(trainable * 2 + ["other"] * 2)
    # Usable as jit shardings of the state: frozen slots stay empty MaskedNodes.
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = map_opt_state_params(tx, lambda _, s: s, abstract_state,
                                     jax.tree.map(lambda _: sharding, params),
                                     transform_non_params=lambda _: sharding)
    state = jax.jit(tx.init, out_shardings=shardings)(params)
    assert jax.tree.structure(state) == jax.tree.structure(tx.init(params))
