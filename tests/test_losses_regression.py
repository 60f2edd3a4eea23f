"""Regression losses vs numpy formulas (torch semantics), in one jit program per test."""

import jax
import numpy as np
import pytest

from mlx_research.losses.regression import (
    huber_loss,
    l1_loss,
    mse_loss,
    reduce_loss,
    smooth_l1_loss,
)
from tests.numeric import num_grad

REDUCTIONS = ("none", "sum", "mean")
# Differences input - target, including |x| = beta = 1 and |x| = delta = 2 exactly, and 0.
DIFF = np.array([[-3.0, -2.0, -1.0, -0.4], [0.0, 0.3, 1.0, 2.5]], np.float32)
TARGET = np.array([[0.5, -1.0, 2.0, 0.0], [1.0, -0.2, 0.1, 3.0]], np.float32)
INPUT = TARGET + DIFF


def np_smooth_l1(d, beta):
    d = np.asarray(d, np.float64)
    return (
        np.abs(d)
        if beta == 0
        else np.where(np.abs(d) < beta, 0.5 * d**2 / beta, np.abs(d) - 0.5 * beta)
    )


def np_huber(d, delta):
    d = np.asarray(d, np.float64)
    return np.where(np.abs(d) < delta, 0.5 * d**2, delta * (np.abs(d) - 0.5 * delta))


LOSSES = {
    "l1": (l1_loss, {}, lambda d: np.abs(d)),
    "mse": (mse_loss, {}, lambda d: np.asarray(d, np.float64) ** 2),
    "smooth_l1": (smooth_l1_loss, {}, lambda d: np_smooth_l1(d, 1.0)),
    "smooth_l1_beta_0.5": (smooth_l1_loss, {"beta": 0.5}, lambda d: np_smooth_l1(d, 0.5)),
    "smooth_l1_beta_0": (smooth_l1_loss, {"beta": 0.0}, lambda d: np_smooth_l1(d, 0.0)),
    "huber": (huber_loss, {}, lambda d: np_huber(d, 1.0)),
    "huber_delta_2": (huber_loss, {"delta": 2.0}, lambda d: np_huber(d, 2.0)),
}


def test_values_all_reductions_and_gradients():
    def run(x):
        values = {
            name: {r: fn(x, TARGET, reduction=r, **kw) for r in REDUCTIONS}
            for name, (fn, kw, _) in LOSSES.items()
        }
        grads = {
            name: jax.grad(lambda v: fn(v, TARGET, reduction="sum", **kw))(x)
            for name, (fn, kw, _) in LOSSES.items()
        }
        return values, grads

    values, grads = jax.jit(run)(INPUT)
    for name, (_, _, np_fn) in LOSSES.items():
        per = np_fn(DIFF)
        np.testing.assert_allclose(values[name]["none"], per, rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(values[name]["sum"], per.sum(), rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(values[name]["mean"], per.mean(), rtol=1e-5, err_msg=name)
        assert np.all(np.isfinite(grads[name])), name
    # Central differences are exact at the C1 joins |x| = beta / delta; L1 and beta = 0 have
    # the subgradient 0 at x = 0, as torch's sign(0).
    for name in ("mse", "smooth_l1", "smooth_l1_beta_0.5", "huber", "huber_delta_2"):
        want = num_grad(lambda d: LOSSES[name][2](d).sum(), DIFF, h=1e-4)
        np.testing.assert_allclose(grads[name], want, rtol=1e-3, atol=1e-4, err_msg=name)
    for name in ("l1", "smooth_l1_beta_0"):
        np.testing.assert_array_equal(grads[name], np.sign(DIFF))
    np.testing.assert_allclose(grads["smooth_l1"][1, 2], 1.0, rtol=1e-6)  # at |x| = beta: sign(x)
    np.testing.assert_allclose(grads["huber_delta_2"][0, 1], -2.0, rtol=1e-6)  # at |x| = delta


def test_broadcasting_and_integer_inputs():
    x = INPUT + np.float32(0.25)  # x - t avoids the kinks 0, beta and delta
    t = TARGET[0]  # [4] against [2, 4]: broadcast, as torch does (with a warning)
    x_int = np.array([[1, -2, 3, 0], [4, 5, -6, 7]], np.int32)
    t_int = np.array([1, 2, 3, -4], np.int32)

    def run(x, t):
        return {
            name: (
                fn(x, t, reduction="none", **kw),
                fn(t, x, reduction="none", **kw),
                fn(x_int, t_int, **kw),
                jax.grad(lambda a, b: fn(a, b, **kw), argnums=(0, 1))(x, t),
            )
            for name, (fn, kw, _) in LOSSES.items()
        }

    out = jax.jit(run)(x, t)
    for name, (per, per_swapped, integer, (grad_x, grad_t)) in out.items():
        np_fn = LOSSES[name][2]
        want = np_fn(x - t)
        np.testing.assert_allclose(per, want, rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(per_swapped, np_fn(t - x), rtol=1e-5, atol=1e-6, err_msg=name)
        assert np.issubdtype(integer.dtype, np.floating), name
        np.testing.assert_allclose(integer, np_fn(x_int - t_int).mean(), rtol=1e-6, err_msg=name)
        want_x = num_grad(lambda a: np_fn(a - t).mean(), x, h=1e-4)
        want_t = num_grad(lambda b: np_fn(x - b).mean(), t, h=1e-4)  # summed over the broadcast rows
        np.testing.assert_allclose(grad_x, want_x, rtol=1e-3, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(grad_t, want_t, rtol=1e-3, atol=1e-5, err_msg=name)


def test_reduce_loss_and_invalid_arguments():
    loss = np.array([1.0, 2.0, 3.0], np.float32)
    np.testing.assert_allclose(reduce_loss(loss, "mean", normalizer=2.0), 3.0)
    assert float(reduce_loss(loss * 0, "mean", normalizer=0.0)) == 0.0  # torch: NaN
    for reduction in ("avg", "batchmean", None):
        with pytest.raises(ValueError):
            reduce_loss(loss, reduction)
    with pytest.raises(ValueError):
        smooth_l1_loss(INPUT, TARGET, beta=-1.0)
    with pytest.raises(ValueError):
        huber_loss(INPUT, TARGET, delta=0.0)


def test_package_exports_every_loss():
    import mlx_research.losses as losses
    from mlx_research.losses import (  # noqa: F401
        UncertaintyWeighting,
        asymmetric_loss,
        binary_cross_entropy,
        binary_cross_entropy_with_logits,
        codebook_loss,
        contrastive_loss,
        cosine_embedding_loss,
        cosine_similarity,
        cosine_similarity_loss,
        cross_entropy,
        huber_loss,
        kl_div,
        l1_loss,
        mse_loss,
        nll_loss,
        orthogonality_loss,
        reduce_loss,
        sigmoid_focal_loss,
        smooth_l1_loss,
        softmax_focal_loss,
        uncertainty_weighted_sum,
    )

    assert all(callable(getattr(losses, name)) for name in losses.__all__)
