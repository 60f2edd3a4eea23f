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
