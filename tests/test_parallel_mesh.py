"""Tests for mlx_research.parallel.mesh and mlx_research.parallel.sharding."""

import json

import flax.linen as nn
import jax
import ml_collections
import pytest
from jax.sharding import PartitionSpec as P

from mlx_research.parallel.mesh import create_mesh, resolve_axis_sizes
from mlx_research.parallel.sharding import DEFAULT_RULES, FSDP_RULES, get_rules
from mlx_research.testing import run_with_devices


@pytest.mark.parametrize("axes, expected", [
    (None, (8, 1, 1)),
    ({"data": -1}, (8, 1, 1)),
    ({"data": 2, "model": 4}, (2, 4, 1)),
    ({"data": -1, "model": 2}, (4, 2, 1)),
    ({"data": 2, "model": 2, "stage": 2}, (2, 2, 2)),
    ({"model": 2, "stage": -1}, (1, 2, 4)),
    (ml_collections.ConfigDict({"data": -1, "model": 2, "stage": 1}), (4, 2, 1)),
])
def test_resolve_axis_sizes(axes, expected):
    assert resolve_axis_sizes(axes, 8) == expected


@pytest.mark.parametrize("axes, message", [
    ({"tensor": 2}, "unknown mesh axes ['tensor']"),
    ({"data": -1, "model": -1}, "at most one axis may be -1"),
    ({"data": 0}, "sizes are positive ints or -1"),
    ({"data": 2.0}, "sizes are positive ints or -1"),
    ({"data": -1, "model": 3}, "8 devices are not divisible by the fixed sizes' product 3"),
    ({"data": 2, "model": 2}, "need 4 devices, but 8 are available"),
])
def test_resolve_axis_sizes_errors(axes, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        resolve_axis_sizes(axes, 8)


def test_create_mesh_single_device_and_error():
    device = jax.devices()[:1]
    mesh = create_mesh(devices=device)
    assert mesh.axis_names == ("data", "model", "stage")
    assert dict(mesh.shape) == {"data": 1, "model": 1, "stage": 1}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    with pytest.raises(ValueError, match="need 2 devices, but 1 are available"):
        create_mesh({"model": 2}, devices=device)


def test_get_rules():
    assert get_rules("default") is DEFAULT_RULES
    assert get_rules("fsdp") is FSDP_RULES
    from_config = [["batch", "data"], ["mlp", ["model", "data"]], ["embed", None]]
    assert get_rules(from_config) == (("batch", "data"), ("mlp", ("model", "data")),
                                      ("embed", None))
    with pytest.raises(ValueError, match="unknown sharding rules 'zero'"):
        get_rules("zero")
    with pytest.raises(ValueError, match="is not a"):
        get_rules([("batch", "data", "model")])
    with pytest.raises(ValueError, match="maps to 3"):
        get_rules([("batch", 3)])


def test_rule_tables_resolve_with_flax():
    def resolve(names, rules):
        return nn.logical_to_mesh_axes(names, rules)

    assert resolve(("embed", "mlp"), DEFAULT_RULES) == P(None, "model")
    assert resolve(("embed", "mlp"), FSDP_RULES) == P("data", "model")
    assert resolve(("vocab", "embed"), FSDP_RULES) == P("model", "data")
    assert resolve(("embed", "heads", "kv"), FSDP_RULES) == P("data", "model", None)
    assert resolve(("layers", "embed", "mlp"), FSDP_RULES) == P("stage", "data", "model")
    # A mesh axis is used at most once per array and earlier rules win: activations keep their
    # batch on "data" and leave "embed" replicated even under FSDP.
    assert resolve(("batch", "length", "embed"), FSDP_RULES) == P("data", None, None)
    assert resolve(("batch", "length", "heads", "kv"), DEFAULT_RULES) == P("data", None, "model",
                                                                           None)
    assert dict(FSDP_RULES) == {**dict(DEFAULT_RULES), "embed": "data"}


_SHARDING_SNIPPET = """
import json
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P
from mlx_research.parallel.mesh import create_mesh
from mlx_research.parallel.sharding import (
    batch_sharding, bytes_per_device, logical_shardings, shard_tree)

out = {"meshes": {}}
meshes = {"default": None, "data": {"data": -1}, "d2m4": {"data": 2, "model": 4},
          "d4m2": {"data": 4, "model": 2}, "d2m2s2": {"data": 2, "model": 2, "stage": 2}}
for key, axes in meshes.items():
    mesh = create_mesh(axes)
    ids = np.vectorize(lambda d: d.id)(mesh.devices)
    out["meshes"][key] = {"names": list(mesh.axis_names), "shape": list(mesh.devices.shape),
                "ids": ids.tolist()}


class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), ("embed", "mlp")), (16, 32))
        bias = self.param(
            "bias", nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)), (32,))
        scale = self.param("scale", nn.initializers.ones, (16,))
        return (x * scale) @ kernel + bias


mesh = create_mesh({"data": 2, "model": 4})
x = jnp.ones((8, 16))
init = lambda: Block().init(jax.random.key(0), x)
abstract = jax.eval_shape(init)
host_params = nn.unbox(jax.device_get(jax.jit(init)()))
for rules in ("default", "fsdp"):
    shardings = logical_shardings(abstract, mesh, rules)
    params = jax.jit(init, out_shardings=shardings)()
    tx = optax.adam(1e-3)
    opt_shardings = logical_shardings(jax.eval_shape(tx.init, params), mesh, rules)
    opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(params)
    unboxed = nn.unbox(params)
    placed = shard_tree(host_params, shardings)
    out[rules] = {
        "specs": {k: str(s.spec) for k, s in shardings["params"].items()},
        "actual": {k: str(v.sharding.spec) for k, v in unboxed["params"].items()},
        "placed": {k: str(v.sharding.spec) for k, v in placed["params"].items()},
        "mu_kernel": str(nn.unbox(opt_state[0].mu)["params"]["kernel"].sharding.spec),
        "count": str(opt_state[0].count.sharding.spec),
        "bytes": bytes_per_device(unboxed),
        "bytes_abstract": bytes_per_device(abstract, shardings),
        "bytes_placed": bytes_per_device(placed),
    }
replicated = jax.device_put(host_params, NamedSharding(mesh, P()))
out["bytes_replicated"] = bytes_per_device(replicated)
out["bytes_unsharded_abstract"] = bytes_per_device(abstract)
batch = jax.device_put(jnp.zeros((8, 3)), batch_sharding(mesh))
out["batch_shard_shape"] = list(batch.addressable_shards[0].data.shape)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def sharding_run():
    return json.loads(run_with_devices(_SHARDING_SNIPPET).strip().splitlines()[-1])


@pytest.mark.slow
def test_mesh_shapes_and_layout(sharding_run):
    expected = {"default": [8, 1, 1], "data": [8, 1, 1], "d2m4": [2, 4, 1], "d4m2": [4, 2, 1],
                "d2m2s2": [2, 2, 2]}
    for key, shape in expected.items():
        assert sharding_run["meshes"][key]["names"] == ["data", "model", "stage"]
        assert sharding_run["meshes"][key]["shape"] == shape
    # model innermost (neighbouring devices), stage outermost.
    assert sharding_run["meshes"]["d4m2"]["ids"] == [[[0], [1]], [[2], [3]], [[4], [5]], [[6], [7]]]
    ids = sharding_run["meshes"]["d2m2s2"]["ids"]
    assert [ids[0][0][0], ids[0][1][0]] == [0, 1]
    assert sorted(ids[d][m][0] for d in range(2) for m in range(2)) == [0, 1, 2, 3]


@pytest.mark.slow
def test_logical_shardings_and_placement(sharding_run):
    default, fsdp = sharding_run["default"], sharding_run["fsdp"]
    assert default["specs"] == {"kernel": "P(None, 'model')", "bias": "P('model',)",
                                "scale": "P()"}
    assert fsdp["specs"] == {"kernel": "P('data', 'model')", "bias": "P('model',)",
                             "scale": "P()"}
    for run in (default, fsdp):
        assert run["actual"] == run["specs"]
        assert run["placed"] == run["specs"]
        assert run["count"] == "P()"
    assert fsdp["mu_kernel"] == "P('data', 'model')"
    assert sharding_run["batch_shard_shape"] == [4, 3]


@pytest.mark.slow
def test_bytes_per_device_shrinks(sharding_run):
    kernel, bias, scale = 16 * 32 * 4, 32 * 4, 16 * 4
    assert sharding_run["bytes_replicated"] == kernel + bias + scale
    assert sharding_run["bytes_unsharded_abstract"] == kernel + bias + scale
    default, fsdp = sharding_run["default"], sharding_run["fsdp"]
    for run in (default, fsdp):
        assert run["bytes"] == run["bytes_abstract"] == run["bytes_placed"]
    assert default["bytes"] == kernel // 4 + bias // 4 + scale
    assert fsdp["bytes"] == kernel // 8 + bias // 4 + scale
