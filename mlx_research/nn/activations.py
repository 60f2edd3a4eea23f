"""Activation functions and activation modules with PyTorch semantics.

Functions are pure and jit-compatible; they keep ``torch.nn.functional``'s
argument names, defaults and gradients at the kinks (e.g. ``leaky_relu`` has
slope ``negative_slope`` at exactly 0, as in torch). Channels are the last axis
(NHWC / ``[..., features]``), where torch uses axis 1.

Modules (``flax.linen``): ``PReLU`` (learned negative slope), ``RReLU``
(randomised slope drawn from the ``"rrelu"`` RNG stream) and
``GatedLinearUnit`` (a learned sigmoid gate).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

_GELU_APPROXIMATIONS = ("none", "tanh")


def sigmoid(x: Array) -> Array:
    """Logistic sigmoid ``1 / (1 + exp(-x))``, elementwise; any shape."""
    return jax.nn.sigmoid(x)


def tanh(x: Array) -> Array:
    """Hyperbolic tangent, elementwise; any shape."""
    return jnp.tanh(x)


def relu(x: Array) -> Array:
    """``max(x, 0)`` elementwise (gradient 0 at x = 0, as torch); any shape."""
    return jax.nn.relu(x)


def leaky_relu(x: Array, negative_slope: float = 0.01) -> Array:
    """``x`` if ``x > 0`` else ``negative_slope * x``, elementwise.

    Args:
      x: any shape.
      negative_slope: slope for ``x <= 0`` (the gradient at 0 is this slope, as torch).

    Returns:
      Array with the shape and dtype of ``x``.
    """
    return jnp.where(x > 0, x, negative_slope * x)


def elu(x: Array, alpha: float = 1.0) -> Array:
    """``x`` if ``x > 0`` else ``alpha * (exp(x) - 1)``, elementwise.

    Args:
      x: any shape.
      alpha: saturation value for large negative inputs.

    Returns:
      Array with the shape and dtype of ``x``; the gradient is finite for all
      ``x`` (``alpha`` at 0, as torch).
    """
    return jax.nn.elu(x, alpha)


def gelu(x: Array, approximate: str = "none") -> Array:
    """Gaussian error linear unit ``x * Phi(x)``.

    Args:
      x: any shape.
      approximate: ``"none"`` for the exact form ``0.5 x (1 + erf(x / sqrt 2))``;
        ``"tanh"`` for ``0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))``.

    Returns:
      Array with the shape and dtype of ``x``.

    Raises:
      ValueError: if ``approximate`` is neither ``"none"`` nor ``"tanh"``.
    """
    if approximate not in _GELU_APPROXIMATIONS:
        raise ValueError(
            f"gelu: approximate must be one of {_GELU_APPROXIMATIONS}, got {approximate!r}"
        )
    return jax.nn.gelu(x, approximate=approximate == "tanh")


def silu(x: Array) -> Array:
    """Sigmoid linear unit ``x * sigmoid(x)`` (a.k.a. swish), elementwise."""
    return jax.nn.silu(x)


swish = silu


def glu(x: Array, dim: int = -1) -> Array:
    """Gated linear unit: ``a * sigmoid(b)`` where ``a, b`` are the halves of ``x``.

    Args:
      x: ``[..., 2 * n, ...]``; axis ``dim`` is split into first and second halves.
      dim: axis to split.

    Returns:
      ``[..., n, ...]``, the first half gated by the sigmoid of the second.

    Raises:
      ValueError: if ``x.shape[dim]`` is odd.
    """
    size = x.shape[dim]
    if size % 2:
        raise ValueError(f"glu: halving only works on an even-sized dim, got size {size} at dim {dim}")
    a, b = jnp.split(x, 2, axis=dim)
    return a * jax.nn.sigmoid(b)


def rrelu(
    x: Array,
    key: Array | None = None,
    lower: float = 1.0 / 8.0,
    upper: float = 1.0 / 3.0,
    training: bool = False,
) -> Array:
    """Randomised leaky ReLU (Xu et al., 2015), as ``torch.nn.functional.rrelu``.

    In training every element gets its own slope ``a ~ U[lower, upper]`` and the
    output is ``x`` if ``x > 0`` else ``a * x``; in evaluation the slope is the
    fixed mean ``(lower + upper) / 2``.

    Args:
      x: any shape.
      key: PRNG key for the slopes; required when ``training``.
      lower: lower bound of the slope distribution.
      upper: upper bound of the slope distribution.
      training: draw random slopes if True, else use the mean slope.

    Returns:
      Array with the shape and dtype of ``x``.

    Raises:
      ValueError: if ``training`` and ``key`` is None.
    """
    if not training:
        return leaky_relu(x, (lower + upper) / 2.0)
    if key is None:
        raise ValueError("rrelu: a PRNG `key` is required when training=True")
    slope = jax.random.uniform(key, x.shape, dtype=x.dtype, minval=lower, maxval=upper)
    return jnp.where(x > 0, x, slope * x)


def identity(x: Array) -> Array:
    """Returns ``x`` unchanged."""
    return x


class PReLU(nn.Module):
    """Parametric ReLU: ``x`` if ``x > 0`` else ``weight * x``, with a learned slope.

    Attributes:
      num_parameters: 1 for one shared slope, or the number of channels (the
        last axis of the input, NHWC) for one slope per channel.
      negative_slope_init: initial slope value (torch's ``init``; renamed, as in
        ``flax.linen.PReLU``, because ``init`` is the flax ``Module.init`` method).
    """

    num_parameters: int = 1
    negative_slope_init: float = 0.25

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """Applies the activation.

        Args:
          x: ``[..., C]``; ``C == num_parameters`` unless ``num_parameters == 1``.

        Returns:
          Array with the shape of ``x``.
        """
        if self.num_parameters != 1 and (x.ndim == 0 or x.shape[-1] != self.num_parameters):
            raise ValueError(
                f"PReLU: num_parameters={self.num_parameters} must be 1 or equal the "
                f"last (channel) axis of the input, got input shape {x.shape}"
            )
        weight = self.param(
            "weight", nn.initializers.constant(self.negative_slope_init), (self.num_parameters,), jnp.float32
        )
        return jnp.where(x > 0, x, weight.astype(x.dtype) * x)


class RReLU(nn.Module):
    """Randomised leaky ReLU module; slopes come from the ``"rrelu"`` RNG stream.

    Attributes:
      lower: lower bound of the slope distribution.
      upper: upper bound of the slope distribution.
      deterministic: if True use the mean slope; may instead be passed to
        ``__call__`` (``flax.linen.merge_param`` convention, as ``nn.Dropout``).
    """

    lower: float = 1.0 / 8.0
    upper: float = 1.0 / 3.0
    deterministic: bool | None = None

    @nn.compact
    def __call__(self, x: Array, deterministic: bool | None = None) -> Array:
        """Applies the activation.

        Args:
          x: any shape.
          deterministic: overrides/completes the attribute of the same name.

        Returns:
          Array with the shape of ``x``.
        """
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        if deterministic:
            return rrelu(x, lower=self.lower, upper=self.upper, training=False)
        return rrelu(x, self.make_rng("rrelu"), self.lower, self.upper, training=True)


class GatedLinearUnit(nn.Module):
    """Learned sigmoid gate over the input or over a projection of it.

    With ``d = x.shape[-1]`` and ``f = features`` (default ``d``):

    * ``f == d``: ``y = x * sigmoid(x @ W_g + b_g)``;
    * ``f != d``: ``y = (x @ W_v + b_v) * sigmoid(x @ W_g + b_g)``,

    where ``W_g``/``b_g`` are the submodule ``"gate"`` (``nn.Dense(f)``) and
    ``W_v``/``b_v`` the submodule ``"value"`` (``nn.Dense(f)``, only created
    when ``f != d``). Biases are omitted when ``use_bias`` is False.

    Attributes:
      features: output size ``f``; None means the input size.
      use_bias: whether the dense layers have biases.
    """

    features: int | None = None
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """Applies the gated unit.

        Args:
          x: ``[..., d]``.

        Returns:
          ``[..., f]``.
        """
        features = x.shape[-1] if self.features is None else self.features
        gate = nn.Dense(features, use_bias=self.use_bias, name="gate")(x)
        value = x
        if features != x.shape[-1]:
            value = nn.Dense(features, use_bias=self.use_bias, name="value")(x)
        return value * jax.nn.sigmoid(gate)


_ACTIVATIONS: dict[str, Callable[..., Array]] = {
    "sigmoid": sigmoid,
    "tanh": tanh,
    "relu": relu,
    "leaky_relu": leaky_relu,
    "elu": elu,
    "gelu": gelu,
    "gelu_tanh": functools.partial(gelu, approximate="tanh"),
    "silu": silu,
    "swish": swish,
    "glu": glu,
    "rrelu": rrelu,
    "identity": identity,
    "linear": identity,
}


def get_activation(name: str) -> Callable[..., Array]:
    """Returns the functional activation called ``name`` (case-insensitive).

    Args:
      name: one of ``sigmoid, tanh, relu, leaky_relu, elu, gelu, gelu_tanh,
        silu, swish, glu, rrelu, identity, linear``.

    Returns:
      The function, with its default arguments (``rrelu`` in evaluation mode).

    Raises:
      ValueError: for an unknown name; the message lists the valid names.
    """
    fn = _ACTIVATIONS.get(name.lower())
    if fn is None:
        raise ValueError(f"Unknown activation {name!r}; valid names: {', '.join(sorted(_ACTIVATIONS))}")
    return fn
