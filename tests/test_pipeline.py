"""Tests for mlx_research.parallel.pipeline (GPipe over the "stage" mesh axis)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mlx_research.parallel.mesh import create_mesh
from mlx_research.parallel.pipeline import bubble_fraction, pipeline_apply
from mlx_research.testing import run_with_devices

# Helpers shared by the in-process tests and the 8-device subprocess snippet, which imports them.


def reference(W, b, x, c):
    """float64 forward of y = x + tanh(x @ W[s] + b[s]) over s, and the gradients of sum(y * c)."""
    W, b, h, g = (np.asarray(a, np.float64) for a in (W, b, x, c))
    inputs, activations = [], []
    for s in range(W.shape[0]):
        t = np.tanh(h @ W[s] + b[s])
        inputs.append(h)
        activations.append(t)
        h = h + t
    grad_W, grad_b = np.zeros_like(W), np.zeros_like(b)
    for s in reversed(range(W.shape[0])):
        grad_z = g * (1.0 - activations[s] ** 2)
        grad_W[s] = inputs[s].T @ grad_z
        grad_b[s] = grad_z.sum(0)
        g = g + grad_z @ W[s].T
    return h, grad_W, grad_b, g


def stage_fn(params, x):
    return x + jnp.tanh(x @ params["W"] + params["b"])


def problem(num_stages, batch, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    W = (rng.normal(size=(num_stages, dim, dim)) * 0.5).astype(np.float32)
    b = (rng.normal(size=(num_stages, dim)) * 0.1).astype(np.float32)
    x = rng.normal(size=(batch, dim)).astype(np.float32)
    c = rng.normal(size=(batch, dim)).astype(np.float32)
    return W, b, x, c


def pipeline_errors(mesh, num_microbatches, batch, in_sharding=None):
    """Forward max error and relative gradient errors of pipeline_apply vs `reference`."""
    W, b, x, c = problem(mesh.shape["stage"], batch)
    params = {"W": W, "b": b}
    if in_sharding is not None:  # weights also split over "model" (a no-op where it has size 1)
        params = {"W": jax.device_put(W, NamedSharding(mesh, P("stage", None, "model"))),
                  "b": jax.device_put(b, NamedSharding(mesh, P("stage", "model")))}
        x = jax.device_put(x, in_sharding)

    def loss(params, x):
        y = pipeline_apply(stage_fn, params, x, mesh=mesh, num_microbatches=num_microbatches)
        return jnp.sum(y * c), y

    (_, y), (grads, grad_x) = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(params, x)
    ref_y, ref_W, ref_b, ref_x = reference(W, b, x, c)
    rel = lambda a, r: float(np.abs(np.asarray(a, np.float64) - r).max() / np.abs(r).max())
    return {"forward": float(np.abs(np.asarray(y, np.float64) - ref_y).max()),
            "grad_W": rel(grads["W"], ref_W), "grad_b": rel(grads["b"], ref_b),
            "grad_x": rel(grad_x, ref_x), "out_spec": str(getattr(y.sharding, "spec", None))}


# (mesh axes, num_microbatches, batch): M < S, M == S, M > S; data x stage both ways; and with
# tensor-parallel weights, since only the stage axis is manual.
_CONFIGS = {
    "stage2": ({"stage": 2}, 4, 8),
    "stage4": ({"stage": 4}, 2, 8),
    "stage8": ({"stage": 8}, 8, 16),
    "data2_stage4": ({"data": 2, "stage": 4}, 4, 16),
    "data4_stage2": ({"data": 4, "stage": 2}, 2, 16),
    "data2_model2_stage2": ({"data": 2, "model": 2, "stage": 2}, 2, 8),
}

_SNIPPET = """
import json
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from mlx_research.parallel.mesh import create_mesh
from mlx_research.parallel.pipeline import pipeline_apply
from tests.test_pipeline import _CONFIGS, pipeline_errors, problem

out = {}
for name, (axes, num_microbatches, batch) in _CONFIGS.items():
    size = int(np.prod(list(axes.values())))
    mesh = create_mesh(axes, devices=jax.devices()[:size])
    sharding = NamedSharding(mesh, P("data")) if "data" in axes else None
    out[name] = pipeline_errors(mesh, num_microbatches, batch, sharding)


# Bubble iterations must not evaluate stage_fn where its derivative is singular (a norm at 0):
# zero cotangents times an infinite Jacobian would turn the gradients into NaN.
def norm_stage(params, x):
    return x + jnp.tanh(x @ params["W"]) * jnp.linalg.norm(x, axis=-1, keepdims=True)


mesh = create_mesh({"stage": 2}, devices=jax.devices()[:2])
W, _, x, _ = problem(2, 4)
grad = jax.jit(jax.grad(lambda W: jnp.sum(pipeline_apply(
    norm_stage, {"W": W}, x, mesh=mesh, num_microbatches=2))))(W)
out["norm_stage_grad_finite"] = bool(np.isfinite(np.asarray(grad)).all())
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def pipeline_run():
    return json.loads(run_with_devices(_SNIPPET).strip().splitlines()[-1])


@pytest.mark.parametrize("name", sorted(_CONFIGS))
@pytest.mark.slow
def test_pipeline_matches_sequential_stages(pipeline_run, name):
    errors = pipeline_run[name]
    assert errors["forward"] < 1e-5
    for key in ("grad_W", "grad_b", "grad_x"):
        assert errors[key] < 1e-4, (key, errors[key])
    if "data" in _CONFIGS[name][0]:
        assert errors["out_spec"].startswith("P('data'"), errors["out_spec"]


@pytest.mark.slow
def test_pipeline_gradients_finite_through_bubbles(pipeline_run):
    assert pipeline_run["norm_stage_grad_finite"]


def test_single_stage_is_direct_call():
    mesh = create_mesh(devices=jax.devices()[:1])
    errors = pipeline_errors(mesh, num_microbatches=2, batch=4)
    assert errors["forward"] < 1e-5
    for key in ("grad_W", "grad_b", "grad_x"):
        assert errors[key] < 1e-4, (key, errors[key])


@pytest.mark.parametrize("stages, micro, expected", [
    (1, 4, 0.0), (2, 1, 0.5), (4, 4, 3 / 7), (2, 8, 1 / 9), (8, 24, 7 / 31)])
def test_bubble_fraction(stages, micro, expected):
    assert bubble_fraction(stages, micro) == pytest.approx(expected, rel=1e-12)


def test_argument_errors():
    mesh = create_mesh(devices=jax.devices()[:1])
    params = {"W": jnp.zeros((1, 2, 2)), "b": jnp.zeros((1, 2))}
    x = jnp.zeros((6, 2))
    with pytest.raises(ValueError, match="batch size 6 is not divisible by num_microbatches=4"):
        pipeline_apply(stage_fn, params, x, mesh=mesh, num_microbatches=4)
    with pytest.raises(ValueError, match=r"stage_params\['W'\] has shape \(2, 2, 2\)"):
        pipeline_apply(stage_fn, {"W": jnp.zeros((2, 2, 2)), "b": params["b"]}, x, mesh=mesh,
                       num_microbatches=2)
    with pytest.raises(ValueError, match="no pipeline axis 'stage'"):
        pipeline_apply(stage_fn, params, x, mesh=Mesh(np.array(jax.devices()[:1]), ("x",)),
                       num_microbatches=2)
    with pytest.raises(ValueError, match="num_stages >= 1"):
        bubble_fraction(0, 4)
