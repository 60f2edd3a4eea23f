"""config.init_from: reading pretrained weights (.npz, .safetensors, Orbax runs), merging them."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest

from mlx_research.errors import ConfigError
from mlx_research.train.checkpoint import Checkpointer
from mlx_research.train.init_from import load_variables, merge_pretrained, save_variables
from mlx_research.train.state import TrainState
from mlx_research.tree import flatten


def backbone(seed=0):
    """Variables of a small pretrained backbone: params and batch_stats."""
    r = np.random.default_rng(seed)
    return {
        "params": {"conv1": {"kernel": r.normal(size=(3, 3, 2, 4)).astype(np.float32),
                             "bias": r.normal(size=(4,)).astype(np.float32)},
                   "fc": {"kernel": r.normal(size=(4, 10)).astype(np.float32)}},
        "batch_stats": {"bn1": {"mean": r.normal(size=(4,)).astype(np.float32),
                                "var": r.uniform(size=(4,)).astype(np.float32)}},
    }


def model(prefix=("encoder", "backbone"), fc_out=10):
    """Fresh variables with `backbone()`'s shapes under `prefix`, a head beside it, a counter."""
    fresh = jax.tree.map(np.zeros_like, backbone())
    fresh["params"]["fc"]["kernel"] = np.zeros((4, fc_out), np.float32)

    def nest(tree):
        for name in reversed(prefix):
            tree = {name: tree}
        return tree

    params = nest(fresh["params"])
    params["head"] = {"kernel": np.full((4, 2), 7.0, np.float32)}
    stats = nest(fresh["batch_stats"])
    return {"params": params, "batch_stats": stats, "counters": {"n": np.ones((), np.int32)}}


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(x, y)


def flat_loaded(**overrides):
    flat = flatten(backbone())
    flat.update(overrides)
    return {k: v for k, v in flat.items() if v is not None}


@pytest.mark.parametrize("ext", ["npz", "safetensors"])
def test_file_round_trip(tmp_path, ext):
    tree = backbone()
    tree["params"]["scale"] = np.asarray(2.5, np.float32)  # a scalar
    tree["counters"] = {"n": np.arange(3, dtype=np.int32)}
    tree["params"]["conv1"]["bias"] = jnp.asarray(tree["params"]["conv1"]["bias"])  # a jax array
    path = str(tmp_path / f"weights.{ext}")
    save_variables(path, tree)
    loaded = load_variables(path)
    assert set(loaded) == set(flatten(tree)) and "params/conv1/kernel" in loaded
    assert_trees_equal(loaded, {k: np.asarray(v) for k, v in flatten(tree).items()})


def test_bfloat16_round_trip(tmp_path):
    tree = {"params": {"w": np.asarray([1.5, -2.0, 3.0], ml_dtypes.bfloat16)}}
    save_variables(str(tmp_path / "w.safetensors"), tree)
    assert load_variables(str(tmp_path / "w.safetensors"))["params/w"].dtype == ml_dtypes.bfloat16
    save_variables(str(tmp_path / "w.npz"), tree)  # widened exactly to float32; merge casts back
    merged = merge_pretrained(tree, load_variables(str(tmp_path / "w.npz")))
    assert_trees_equal(merged, tree)


def test_merge_under_prefix_leaves_the_rest_fresh():
    pretrained, fresh = backbone(), model()
    merged = merge_pretrained(fresh, flatten(pretrained), prefix="encoder/backbone", source="w.npz")
    assert_trees_equal(merged["params"]["encoder"]["backbone"], pretrained["params"])
    assert_trees_equal(merged["batch_stats"]["encoder"]["backbone"], pretrained["batch_stats"])
    assert_trees_equal(merged["params"]["head"], fresh["params"]["head"])
    assert_trees_equal(merged["counters"], fresh["counters"])
    assert np.all(fresh["params"]["encoder"]["backbone"]["fc"]["kernel"] == 0)  # input untouched
    # One level of prefix, and none (the file's tree is the model's).
    one = merge_pretrained(model(("backbone",)), flatten(pretrained), prefix="backbone/")
    assert_trees_equal(one["params"]["backbone"], pretrained["params"])
    root = merge_pretrained(jax.tree.map(np.zeros_like, pretrained), flatten(pretrained))
    assert_trees_equal(root, pretrained)


def test_merge_into_abstract_targets_casts_to_their_dtype():
    pretrained = backbone()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.bfloat16), model())
    merged = merge_pretrained(abstract, flatten(pretrained), prefix="encoder/backbone")
    assert jax.tree.structure(merged) == jax.tree.structure(abstract)
    kernel = merged["params"]["encoder"]["backbone"]["conv1"]["kernel"]
    assert isinstance(kernel, np.ndarray) and kernel.dtype == jnp.bfloat16
    expected = pretrained["params"]["conv1"]["kernel"].astype(jnp.bfloat16)
    np.testing.assert_array_equal(kernel, expected)
    assert isinstance(merged["params"]["head"]["kernel"], jax.ShapeDtypeStruct)  # outside: kept
    # int -> float is fine, float -> int is not.
    ints = merge_pretrained({"params": {"w": np.zeros(2, np.float32)}}, {"params/w": np.arange(2)})
    assert ints["params"]["w"].dtype == np.float32
    with pytest.raises(ConfigError, match="'params/w'.*cannot be cast safely"):
        merge_pretrained({"params": {"w": np.zeros(2, np.int32)}}, {"params/w": np.ones(2)})
    # int64 -> int32 only if the values fit.
    counter = {"counters": {"n": np.zeros((), np.int32)}}
    assert merge_pretrained(counter, {"counters/n": np.int64(5)})["counters"]["n"].dtype == np.int32
    with pytest.raises(ConfigError, match="'counters/n' of dtype int64 cannot be cast safely"):
        merge_pretrained(counter, {"counters/n": np.int64(2**40)})
    with pytest.raises(ConfigError, match="init_from.exclude"):
        merge_pretrained(counter, {"counters/n": np.int64(5)}, exclude=("(",))


def test_exclude_skips_keys_and_allows_them_missing():
    pretrained, fresh = backbone(), model(fc_out=3)  # a new head size: the file's fc does not fit
    loaded = flat_loaded(**{"params/fc/kernel": np.ones((4, 10), np.float32)})
    with pytest.raises(ConfigError, match="'params/fc/kernel' has shape"):
        merge_pretrained(fresh, loaded, prefix="encoder/backbone")
    merged = merge_pretrained(fresh, loaded, prefix="encoder/backbone", exclude=("^params/fc/",))
    np.testing.assert_array_equal(merged["params"]["encoder"]["backbone"]["fc"]["kernel"],
                                  np.zeros((4, 3), np.float32))  # fresh
    conv1 = merged["params"]["encoder"]["backbone"]["conv1"]
    assert_trees_equal(conv1, pretrained["params"]["conv1"])
    # An excluded key may be absent from the file.
    del loaded["params/fc/kernel"]
    with pytest.raises(ConfigError, match="'params/encoder/backbone/fc/kernel'"):
        merge_pretrained(fresh, loaded, prefix="encoder/backbone")
    merged = merge_pretrained(fresh, loaded, prefix="encoder/backbone", exclude=["fc/kernel$"])
    assert_trees_equal(merged["batch_stats"]["encoder"]["backbone"], pretrained["batch_stats"])


@pytest.mark.parametrize("case, key", [
    ("missing", "params/encoder/backbone/conv1/bias"),
    ("missing_stats", "batch_stats/encoder/backbone/bn1/var"),
    ("extra", "params/conv2/kernel"),
    ("shape", "params/conv1/kernel"),
])
def test_errors_name_the_key_and_source(case, key):
    loaded = {
        "missing": lambda: flat_loaded(**{"params/conv1/bias": None}),
        "missing_stats": lambda: flat_loaded(**{"batch_stats/bn1/var": None}),
        "extra": lambda: flat_loaded(**{"params/conv2/kernel": np.ones(3, np.float32)}),
        "shape": lambda: flat_loaded(**{"params/conv1/kernel": np.ones((3, 3, 2, 5), np.float32)}),
    }[case]()
    with pytest.raises(ConfigError) as e:
        merge_pretrained(model(), loaded, prefix="encoder/backbone", source="/data/w.npz")
    message = str(e.value)
    assert f"'{key}'" in message and "/data/w.npz" in message and "init_from" in message
    assert "\n" not in message
    if case == "shape":
        assert "(3, 3, 2, 5)" in message and "(3, 3, 2, 4)" in message


def write_run(workdir):
    """A run's checkpoints at steps 1 and 2 (TrainState with optimizer state), as a trainer's."""
    variables = {1: backbone(seed=1), 2: backbone(seed=2)}
    checkpointer = Checkpointer(str(workdir / "checkpoints"), async_save=False)
    for step, v in variables.items():
        params = jax.tree.map(jnp.asarray, v["params"])
        state = TrainState(step=jnp.int32(step), params=params,
                           model_state={"batch_stats": v["batch_stats"]},
                           opt_state=optax.adam(1e-3).init(params), rng=jax.random.key(0),
                           bad_step=jnp.int32(-1))
        checkpointer.save(step, state, {"epoch": 0})
    checkpointer.close()
    return variables


def test_load_from_orbax_checkpoints(tmp_path):
    variables = write_run(tmp_path)
    for path, step in [(tmp_path, 2), (tmp_path / "checkpoints", 2),
                       (tmp_path / "checkpoints" / "1", 1)]:
        loaded = load_variables(str(path))
        assert set(loaded) == set(flatten(variables[step])), path  # no opt_state, step, rng
        assert_trees_equal(loaded, flatten(variables[step]))
    merged = merge_pretrained(model(), load_variables(str(tmp_path)), prefix="encoder/backbone")
    assert_trees_equal(merged["params"]["encoder"]["backbone"], variables[2]["params"])


def test_bad_paths_raise_config_error(tmp_path):
    with pytest.raises(ConfigError, match=f"init_from.path {tmp_path / 'nope.npz'} does not exist"):
        load_variables(str(tmp_path / "nope.npz"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no checkpoint in .*empty"):
        load_variables(str(tmp_path / "empty"))
    (tmp_path / "w.pt").write_bytes(b"\0")
    with pytest.raises(ConfigError, match="w.pt: unknown format"):
        load_variables(str(tmp_path / "w.pt"))
    for name in ("bad.npz", "bad.safetensors"):
        (tmp_path / name).write_text("garbage")
        with pytest.raises(ConfigError, match=f"{name} cannot be read"):
            load_variables(str(tmp_path / name))
