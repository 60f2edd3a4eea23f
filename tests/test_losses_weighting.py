"""Uncertainty weighting: values, analytic optima of both forms, and the flax module."""

import jax
import numpy as np
import pytest

from mlx_research.losses.weighting import UncertaintyWeighting, uncertainty_weighted_sum

LOSSES = np.array([0.5, 2.0, 3.0], np.float32)


def test_values_and_analytic_optima():
    # kendall: d/ds [exp(-s) L + s] = 1 - exp(-s) L = 0  ->  s* = log L.
    s_star = np.log(LOSSES.astype(np.float64))
    # liebel: d/dsigma [L / (2 sigma^2) + log(1 + sigma^2)] = -L / sigma^3 + 2 sigma / (1 + sigma^2)
    #   = 0  ->  2 u^2 - L u - L = 0 with u = sigma^2  ->  u* = (L + sqrt(L^2 + 8 L)) / 4.
    u_star = (LOSSES + np.sqrt(LOSSES.astype(np.float64) ** 2 + 8 * LOSSES)) / 4
    sigma_star = np.sqrt(u_star)
    params = np.array([0.3, -0.2, 1.1], np.float32)

    def run(params, s_star, sigma_star):
        def total(form, p):
            return uncertainty_weighted_sum(LOSSES, p, form)

        return {
            "kendall": total("kendall", params),
            "liebel": total("liebel", params),
            "sequence": uncertainty_weighted_sum(list(LOSSES), params),
            "kendall_grad": jax.grad(lambda p: total("kendall", p))(s_star),
            "liebel_grad": jax.grad(lambda p: total("liebel", p))(sigma_star),
            "kendall_curve": jax.vmap(lambda d: total("kendall", s_star + d))(
                np.array([-0.1, 0.0, 0.1], np.float32)
            ),
            "liebel_curve": jax.vmap(lambda d: total("liebel", sigma_star + d))(
                np.array([-0.1, 0.0, 0.1], np.float32)
            ),
            "loss_grad": jax.grad(lambda x: uncertainty_weighted_sum(x, params, "liebel"))(LOSSES),
        }

    out = jax.jit(run)(params, s_star.astype(np.float32), sigma_star.astype(np.float32))
    p64 = params.astype(np.float64)
    np.testing.assert_allclose(out["kendall"], (np.exp(-p64) * LOSSES + p64).sum(), rtol=1e-6)
    np.testing.assert_allclose(
        out["liebel"], (0.5 / p64**2 * LOSSES + np.log1p(p64**2)).sum(), rtol=1e-6
    )
    np.testing.assert_allclose(out["sequence"], out["kendall"], rtol=1e-7)
    np.testing.assert_allclose(out["kendall_grad"], 0.0, atol=1e-6)
    np.testing.assert_allclose(out["liebel_grad"], 0.0, atol=1e-6)
    for curve in (out["kendall_curve"], out["liebel_curve"]):
        assert curve[1] < curve[0] and curve[1] < curve[2]
    np.testing.assert_allclose(
        out["loss_grad"], 0.5 / p64**2, rtol=1e-6
    )  # task weights 1 / (2 sigma^2)


@pytest.mark.parametrize("form,name,init", [("kendall", "log_var", 0.0), ("liebel", "sigma", 1.0)])
def test_module(form, name, init):
    module = UncertaintyWeighting(num_losses=3, form=form)
    variables = jax.jit(module.init)(jax.random.key(0), LOSSES)
    np.testing.assert_array_equal(variables["params"][name], np.full(3, init, np.float32))
    p = np.array([0.1, 0.2, 0.3], np.float32) + init
    got = jax.jit(module.apply)({"params": {name: p}}, list(LOSSES))
    p = p.astype(np.float64)
    if form == "kendall":
        want = (np.exp(-p) * LOSSES + p).sum()
    else:
        want = (0.5 / p**2 * LOSSES + np.log1p(p**2)).sum()
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_invalid_arguments_raise():
    with pytest.raises(ValueError):
        uncertainty_weighted_sum(LOSSES, np.zeros(3), form="gradnorm")
    with pytest.raises(ValueError):
        uncertainty_weighted_sum(LOSSES, np.zeros(2))
