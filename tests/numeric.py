"""Numerical references shared by the tests."""

import numpy as np


def num_grad(f, x, h=1e-6):
    """Central finite differences of a float64 numpy function `f` at `x`."""
    x = np.asarray(x, np.float64)
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[i] = h
        grad[i] = (f(x + step) - f(x - step)) / (2 * h)
    return grad


EPS_F32 = float(np.finfo(np.float32).eps)  # 1.19e-7


def reordered_sum_rtol(length: int, factor: float = 4.0) -> float:
    """Relative tolerance between two float32 results whose sums were taken in different orders.

    One device and a data/model/pipeline-parallel mesh add the same terms in different orders
    (per-device partial sums, then an all-reduce). Each addition rounds by up to eps/2; over a sum
    of `length` terms the roundings add up like a random walk, so two orders differ by about
    eps * sqrt(length) relative (Higham, "Accuracy and Stability of Numerical Algorithms", 2nd
    ed., sec. 2.8 and 4.2). `factor` covers the few such sums chained through a forward and
    backward pass.

    Args:
      length: terms in the longest sum (e.g. batch x pixels for a first-layer kernel gradient).
      factor: chained sums.

    Returns:
      factor * eps_f32 * sqrt(length).
    """
    return factor * EPS_F32 * float(np.sqrt(length))
