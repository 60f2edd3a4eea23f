"""Normalization layers with PyTorch defaults, built on ``flax.linen`` norms.

Defaults follow torch: ``epsilon=1e-5`` everywhere, BatchNorm momentum 0.1 in torch,
which is ``momentum=0.9`` in flax's convention
(``running = momentum * running + (1 - momentum) * batch``).
All layers normalize over the last (feature) axis, so NHWC inputs work as torch's
``*Norm2d`` on NCHW.

Trainable affine parameters live in ``params`` (``scale``, ``bias``); running statistics
live in ``batch_stats`` (``mean``, ``var``), flax's defaults. torchvision state-dict names
map as ``scale -> weight``, ``bias -> bias``, ``mean -> running_mean``, ``var -> running_var``.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

NORM_NAMES = ("batch", "layer", "instance", "group", "frozen_batch")


class BatchNorm(nn.BatchNorm):
    """Batch normalization with torch's ``BatchNorm2d`` semantics.

    Training normalizes with the biased batch variance (as torch and flax do) and updates
    ``batch_stats`` with the *unbiased* batch variance ``var * n / (n - 1)``, as torch
    does (plain ``flax.linen.BatchNorm`` stores the biased one). Evaluation
    (``use_running_average=True``) uses the running statistics and mutates nothing.

    ``momentum=0.9`` here equals torch's ``momentum=0.1``. Masks are not supported.

    Input: ``[..., C]``; statistics reduce over every axis but the last (``axis=-1``).
    """

    momentum: float = 0.9
    epsilon: float = 1e-5

    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        """Normalizes ``x`` [..., C]; returns the same shape."""
        use_batch_stats = not nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        update = use_batch_stats and not self.is_initializing()
        old_var = self.get_variable("batch_stats", "var") if update else None
        y = super().__call__(x, use_running_average=use_running_average)
        if update:
            # flax stored new = m * old + (1 - m) * biased_var; torch wants the batch share
            # scaled by n / (n - 1), i.e. new + (new - m * old) / (n - 1). The correction is
            # 1/(n-1) of a float32 difference, so its rounding error stays below new's own.
            n = self._num_reduced(x)
            new_var = self.get_variable("batch_stats", "var")
            self.put_variable(
                "batch_stats", "var", new_var + (new_var - self.momentum * old_var) / (n - 1)
            )
        return y

    def _num_reduced(self, x: jax.Array) -> int | jax.Array:
        """Number of values per channel behind one batch statistic (across devices)."""
        axes = (self.axis,) if isinstance(self.axis, int) else self.axis
        feature_axes = {a % x.ndim for a in axes}
        n = 1
        for ax, size in enumerate(x.shape):
            if ax not in feature_axes:
                n *= size
        if self.axis_name is None:
            if n < 2:
                raise ValueError(
                    f"BatchNorm in training needs more than 1 value per channel, input {x.shape}"
                )
            return n
        return n * jax.lax.psum(1, self.axis_name, axis_index_groups=self.axis_index_groups)


class LayerNorm(nn.LayerNorm):
    """Layer normalization over the last axis, torch defaults (``eps=1e-5``, affine).

    Input ``[..., C]``; ``scale``/``bias`` of shape ``[C]``.
    """

    epsilon: float = 1e-5


class GroupNorm(nn.GroupNorm):
    """Group normalization, torch formula with ``eps=1e-5`` and ``num_groups=32``.

    Input ``[N, ..., C]``; channels split into ``num_groups`` groups, statistics per sample
    and group over the spatial axes and the group's channels. ``C % num_groups != 0``
    raises ``ValueError`` at call time. The default of 32 groups is the torchvision/DETR
    convention (torch itself has no default).
    """

    epsilon: float = 1e-5


class InstanceNorm(nn.InstanceNorm):
    """Instance normalization with torch ``InstanceNorm2d`` defaults.

    ``eps=1e-5``, ``affine=False`` (``use_scale=use_bias=False``: no parameters) and no
    running statistics (torch ``track_running_stats=False``): train and eval both use the
    statistics of each sample and channel over the spatial axes. Input ``[N, ..., C]``.
    """

    epsilon: float = 1e-5
    use_bias: bool = False
    use_scale: bool = False


class FrozenBatchNorm(nn.Module):
    """torchvision's ``FrozenBatchNorm2d``: batch norm with fixed statistics and affine.

    ``y = (x - mean) / sqrt(var + epsilon) * scale + bias``, identical in train and eval.
    ``scale``, ``bias``, ``mean`` and ``var`` (each ``[C]``) live in the ``batch_stats``
    collection, so no optimizer updates them; they start at 1, 0, 0, 1 and are meant to
    be loaded from a pretrained checkpoint.

    Attributes:
        epsilon: added to ``var``, torchvision's default ``1e-5``.
        dtype: output dtype; the arithmetic runs in float32.
        scale_init: initializer of ``scale`` (zeros for a zero-initialized residual).
    """

    epsilon: float = 1e-5
    dtype: Dtype | None = None
    scale_init: Callable[..., jax.Array] = nn.initializers.ones

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Normalizes ``x`` [..., C]; returns the same shape."""
        shape = (x.shape[-1],)
        # The buffers are not random: a fixed key serves initializers that ask for one.
        scale = self.variable(
            "batch_stats", "scale", lambda: self.scale_init(jax.random.key(0), shape, jnp.float32)
        )
        bias = self.variable("batch_stats", "bias", jnp.zeros, shape, jnp.float32)
        mean = self.variable("batch_stats", "mean", jnp.zeros, shape, jnp.float32)
        var = self.variable("batch_stats", "var", jnp.ones, shape, jnp.float32)
        mult = scale.value * jax.lax.rsqrt(var.value + self.epsilon)
        y = x.astype(jnp.float32) * mult + (bias.value - mean.value * mult)
        return y.astype(self.dtype or x.dtype)


_NORMS: dict[str, type[nn.Module]] = {
    "batch": BatchNorm,
    "layer": LayerNorm,
    "instance": InstanceNorm,
    "group": GroupNorm,
    "frozen_batch": FrozenBatchNorm,
}


def get_norm(name: str, /, **kwargs: Any) -> nn.Module:
    """Builds a normalization layer by name.

    Args:
        name: one of ``"batch"``, ``"layer"``, ``"instance"``, ``"group"``,
            ``"frozen_batch"``.
        **kwargs: fields of the layer, e.g. ``use_running_average`` for ``"batch"``,
            ``num_groups`` for ``"group"``, ``dtype``, ``scale_init`` and the module
            ``name`` (``name`` is positional-only, so it is free for the module).

    Returns:
        The module instance.

    Raises:
        ValueError: for an unknown name.
    """
    if name not in _NORMS:
        raise ValueError(f"Unknown norm {name!r}; valid names: {', '.join(NORM_NAMES)}")
    return _NORMS[name](**kwargs)
