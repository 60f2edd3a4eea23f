"""Codebook and orthogonality losses: values vs numpy, gradient routing, zero rows."""

import jax
import numpy as np

from mlx_research.losses.memory import codebook_loss, orthogonality_loss

RNG = np.random.default_rng(0)
REDUCTIONS = ("none", "sum", "mean")


def test_codebook_loss_values_and_gradient_routing():
    z = RNG.normal(size=(2, 3, 4)).astype(np.float32)
    q = RNG.normal(size=(2, 3, 4)).astype(np.float32)

    def run(z, q):
        values = {r: codebook_loss(z, q, commitment_cost=0.25, reduction=r) for r in REDUCTIONS}
        grads = {
            beta: jax.grad(lambda z, q: codebook_loss(z, q, beta), argnums=(0, 1))(z, q)
            for beta in (0.0, 0.25)
        }
        return values, grads

    values, grads = jax.jit(run)(z, q)
    d = z.astype(np.float64) - q
    per = 1.25 * d**2  # both terms have the same value; they differ in where gradients go
    np.testing.assert_allclose(values["none"], per, rtol=1e-5)
    np.testing.assert_allclose(values["sum"], per.sum(), rtol=1e-5)
    np.testing.assert_allclose(values["mean"], per.mean(), rtol=1e-5)
    grad_z, grad_q = grads[0.0]
    np.testing.assert_array_equal(grad_z, 0.0)  # codebook term: no gradient into the features
    np.testing.assert_allclose(grad_q, -2 * d / d.size, rtol=1e-5)
    grad_z, grad_q = grads[0.25]
    np.testing.assert_allclose(grad_z, 0.25 * 2 * d / d.size, rtol=1e-5)  # commitment only into z
    np.testing.assert_allclose(grad_q, -2 * d / d.size, rtol=1e-5)


def test_orthogonality_loss():
    orthonormal = np.linalg.qr(RNG.normal(size=(6, 4)))[0].T.astype(
        np.float32
    )  # [4, 6], rows orthonormal
    w = RNG.normal(size=(3, 5)).astype(np.float32)
    w_zero_row = w.copy()
    w_zero_row[1] = 0.0

    def run(orthonormal, w, w_zero_row):
        return (
            orthogonality_loss(orthonormal),
            orthogonality_loss(5.0 * orthonormal, normalize=True),
            {r: orthogonality_loss(w, reduction=r) for r in REDUCTIONS},
            orthogonality_loss(w, normalize=True, reduction="sum"),
            orthogonality_loss(w_zero_row, normalize=True),
            jax.grad(lambda v: orthogonality_loss(v, normalize=True))(w_zero_row),
        )

    ortho, ortho_scaled, values, normalized, zero_row, zero_row_grad = jax.jit(run)(
        orthonormal, w, w_zero_row
    )
    assert float(ortho) < 1e-10
    assert float(ortho_scaled) < 1e-10
    w64 = w.astype(np.float64)
    per = (w64 @ w64.T - np.eye(3)) ** 2  # K x K Gram of the rows (memory entries)
    np.testing.assert_allclose(values["none"], per, rtol=1e-5)
    np.testing.assert_allclose(values["sum"], per.sum(), rtol=1e-5)
    np.testing.assert_allclose(values["mean"], per.mean(), rtol=1e-5)  # = torch mse_loss(W W^T, I)
    unit = w64 / np.linalg.norm(w64, axis=1, keepdims=True)
    np.testing.assert_allclose(normalized, ((unit @ unit.T - np.eye(3)) ** 2).sum(), rtol=1e-5)
    unit[1] = 0.0  # a zero row stays zero, so its diagonal entry contributes (0 - 1)^2
    np.testing.assert_allclose(zero_row, ((unit @ unit.T - np.eye(3)) ** 2).mean(), rtol=1e-5)
    assert np.all(np.isfinite(zero_row_grad))
