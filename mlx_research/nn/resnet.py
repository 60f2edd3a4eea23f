"""ResNet backbones (torchvision v1.5) and a small CNN that return multi-scale feature maps.

Layout is NHWC. Backbones have no classifier head; ``__call__(x, train)`` returns a dict of
feature maps keyed ``"C<k>"`` for output stride ``2**k``.

Parameter names mirror torchvision's ``resnet*`` so a state dict maps by rule: join the flax
path with ``.`` and turn ``_<digit>`` into ``.<digit>``:

    conv1/kernel                   <-> conv1.weight          (HWIO <-> OIHW)
    bn1/scale, bn1/bias            <-> bn1.weight, bn1.bias
    bn1/mean, bn1/var (batch_stats) <-> bn1.running_mean, bn1.running_var
    layer2_0/conv1/kernel          <-> layer2.0.conv1.weight
    layer2_0/downsample_0/kernel   <-> layer2.0.downsample.0.weight
    layer2_0/downsample_1/scale    <-> layer2.0.downsample.1.weight

The norm layers keep the ``bn*`` names whichever norm is chosen. With ``"frozen_batch"``
the affine ``scale``/``bias`` sit in ``batch_stats`` next to ``mean``/``var``. Extra norm
fields go through ``norm_kwargs``, e.g. ``resnet18(norm="group", norm_kwargs={"num_groups": 8})``
(``"group"`` defaults to 32 groups, which needs every width divisible by 32).
"""

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import FrozenDict

from mlx_research.nn.normalization import get_norm

Dtype = Any
ModuleDef = Callable[..., nn.Module]

# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu"), an untruncated normal
# with std sqrt(2 / (kh * kw * out_channels)).
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(
    features: int, kernel: int, strides: int, padding: int, dtype: Dtype, name: str
) -> nn.Conv:
    """Bias-free conv with torch's symmetric explicit padding (not "SAME")."""
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(strides, strides),
        padding=((padding, padding), (padding, padding)),
        use_bias=False,
        kernel_init=conv_kernel_init,
        dtype=dtype,
        name=name,
    )


# Set per layer (name, scale_init) or from ``train`` (use_running_average).
_RESERVED_NORM_KWARGS = frozenset({"name", "scale_init", "use_running_average"})


def _norm_def(
    norm: str, train: bool, dtype: Dtype, norm_kwargs: Mapping[str, Any] | None = None
) -> ModuleDef:
    """A ``get_norm`` partial; batch norm uses batch statistics only when ``train``.

    ``norm_kwargs`` are further fields of the norm layer (``num_groups``, ``epsilon``,
    ``momentum``, ...); a ``dtype`` there overrides the model's ``dtype`` for the norms.

    Raises:
        ValueError: if ``norm_kwargs`` sets ``name``, ``scale_init`` or ``use_running_average``.
    """
    kwargs: dict[str, Any] = {"dtype": dtype, **(norm_kwargs or {})}
    reserved = sorted(_RESERVED_NORM_KWARGS & kwargs.keys())
    if reserved:
        raise ValueError(f"norm_kwargs may not set {reserved}; the model sets them")
    if norm == "batch":
        kwargs["use_running_average"] = not train
    return functools.partial(get_norm, norm, **kwargs)


def _freeze_norm_kwargs(module: nn.Module) -> None:
    """Stores a ``norm_kwargs`` dict as a ``FrozenDict`` so the module stays hashable."""
    if module.norm_kwargs is not None:
        object.__setattr__(module, "norm_kwargs", FrozenDict(module.norm_kwargs))


def _residual_scale_init(zero_init_residual: bool) -> Callable[..., jax.Array]:
    return nn.initializers.zeros if zero_init_residual else nn.initializers.ones


class BasicBlock(nn.Module):
    """ResNet-18/34 block: 3x3 conv (stride) - norm - relu - 3x3 conv - norm, + shortcut, relu.

    Attributes:
        filters: output channels.
        norm: norm constructor taking ``name`` and ``scale_init``, with any other norm
            fields bound, e.g. ``functools.partial(get_norm, "group", num_groups=8)``.
        strides: stride of the first conv and of the shortcut.
        zero_init_residual: start the last norm's scale at 0 (block = shortcut at init).
        dtype: computation dtype.
    """

    filters: int
    norm: ModuleDef
    strides: int = 1
    zero_init_residual: bool = False
    dtype: Dtype = jnp.float32
    expansion: ClassVar[int] = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [N, H, W, C_in] -> [N, H / strides, W / strides, filters]."""
        y = _conv(self.filters, 3, self.strides, 1, self.dtype, "conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = _conv(self.filters, 3, 1, 1, self.dtype, "conv2")(y)
        y = self.norm(name="bn2", scale_init=_residual_scale_init(self.zero_init_residual))(y)
        return nn.relu(y + _shortcut(self, x))


class Bottleneck(nn.Module):
    """ResNet-50+ block (v1.5: stride on the 3x3 conv): 1x1 - 3x3 - 1x1 (x4 channels).

    Attributes:
        filters: width of the 1x1/3x3 convs; the output has ``4 * filters`` channels.
        norm: norm constructor taking ``name`` and ``scale_init``, with any other norm
            fields bound, e.g. ``functools.partial(get_norm, "group", num_groups=8)``.
        strides: stride of the 3x3 conv and of the shortcut.
        zero_init_residual: start the last norm's scale at 0 (block = shortcut at init).
        dtype: computation dtype.
    """

    filters: int
    norm: ModuleDef
    strides: int = 1
    zero_init_residual: bool = False
    dtype: Dtype = jnp.float32
    expansion: ClassVar[int] = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [N, H, W, C_in] -> [N, H / strides, W / strides, 4 * filters]."""
        y = _conv(self.filters, 1, 1, 0, self.dtype, "conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = _conv(self.filters, 3, self.strides, 1, self.dtype, "conv2")(y)
        y = nn.relu(self.norm(name="bn2")(y))
        y = _conv(self.filters * self.expansion, 1, 1, 0, self.dtype, "conv3")(y)
        y = self.norm(name="bn3", scale_init=_residual_scale_init(self.zero_init_residual))(y)
        return nn.relu(y + _shortcut(self, x))


def _shortcut(block: BasicBlock | Bottleneck, x: jax.Array) -> jax.Array:
    """Identity, or torchvision's ``downsample`` (1x1 conv + norm) when the shape changes."""
    out_channels = block.filters * block.expansion
    if block.strides == 1 and x.shape[-1] == out_channels:
        return x
    x = _conv(out_channels, 1, block.strides, 0, block.dtype, "downsample_0")(x)
    return block.norm(name="downsample_1")(x)


class ResNet(nn.Module):
    """torchvision ResNet backbone without the pooling/fc head.

    Stem: 7x7/2 conv (padding 3), norm, relu, 3x3/2 max pool (padding 1); then one stage per
    entry of ``stage_sizes``, stage ``i`` with ``num_filters * 2**i`` block width and
    stride 2 from the second stage on.

    Attributes:
        stage_sizes: blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
        block_cls: ``BasicBlock`` or ``Bottleneck``.
        num_filters: stem channels and first-stage width.
        norm: ``"batch"``, ``"group"`` or ``"frozen_batch"`` (any ``get_norm`` name).
        norm_kwargs: extra fields of every norm layer, e.g. ``{"num_groups": 8}`` for
            ``"group"`` (default 32 groups, so ``num_filters`` must then be a multiple of 32);
            ``dtype`` here overrides ``dtype`` for the norms. ``name``, ``scale_init`` and
            ``use_running_average`` are set by the model and rejected (``ValueError``).
        zero_init_residual: zero-init the last norm scale of every block (torchvision flag).
        dtype: computation dtype (parameters stay float32).
    """

    stage_sizes: Sequence[int]
    block_cls: type[BasicBlock] | type[Bottleneck]
    num_filters: int = 64
    norm: str = "batch"
    norm_kwargs: Mapping[str, Any] | None = None
    zero_init_residual: bool = False
    dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        _freeze_norm_kwargs(self)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
        """Computes the feature pyramid.

        Args:
            x: [N, H, W, 3] images.
            train: batch norm uses (and updates) batch statistics when True; apply with
                ``mutable=["batch_stats"]`` then.

        Returns:
            ``{"C2": [N, H/4, W/4, C], "C3": .../8, "C4": .../16, "C5": .../32}`` for four
            stages (``C = num_filters * 2**i * expansion``); one ``C<i+2>`` per stage.
        """
        norm = _norm_def(self.norm, train, self.dtype, self.norm_kwargs)
        x = _conv(self.num_filters, 7, 2, 3, self.dtype, "conv1")(x)
        x = nn.relu(norm(name="bn1")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        features = {}
        for i, num_blocks in enumerate(self.stage_sizes):
            for j in range(num_blocks):
                x = self.block_cls(
                    filters=self.num_filters * 2**i,
                    norm=norm,
                    strides=2 if i > 0 and j == 0 else 1,
                    zero_init_residual=self.zero_init_residual,
                    dtype=self.dtype,
                    name=f"layer{i + 1}_{j}",
                )(x)
            features[f"C{i + 2}"] = x
        return features


def resnet18(**kwargs: Any) -> ResNet:
    """ResNet-18 backbone; ``kwargs`` are ``ResNet`` fields. C2..C5 have 64..512 channels."""
    return ResNet(stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock, **kwargs)


def resnet34(**kwargs: Any) -> ResNet:
    """ResNet-34 backbone; ``kwargs`` are ``ResNet`` fields. C2..C5 have 64..512 channels."""
    return ResNet(stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock, **kwargs)


def resnet50(**kwargs: Any) -> ResNet:
    """ResNet-50 backbone; ``kwargs`` are ``ResNet`` fields. C2..C5 have 256..2048 channels."""
    return ResNet(stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck, **kwargs)


class SmallCNN(nn.Module):
    """A few conv3x3/2 - norm - relu stages for quick runs.

    Stage ``i`` (0-based) halves the resolution, so its output has stride ``2**(i+1)`` and
    key ``"C<i+1>"``: the default three stages give ``C1`` (stride 2, 16 channels),
    ``C2`` (stride 4, 32) and ``C3`` (stride 8, 64). Layers are named ``conv<i+1>`` and
    ``bn<i+1>``.

    Attributes:
        features: channels of each stage.
        norm: any ``get_norm`` name.
        norm_kwargs: extra fields of every norm layer, as in ``ResNet`` (e.g.
            ``{"num_groups": 4}``: the default 32 groups do not divide 16 channels).
        dtype: computation dtype.
    """

    features: Sequence[int] = (16, 32, 64)
    norm: str = "batch"
    norm_kwargs: Mapping[str, Any] | None = None
    dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        _freeze_norm_kwargs(self)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
        """x: [N, H, W, C_in] -> {"C<k>": [N, ceil(H / 2**k), ceil(W / 2**k), features[k-1]]}."""
        norm = _norm_def(self.norm, train, self.dtype, self.norm_kwargs)
        outputs = {}
        for i, width in enumerate(self.features):
            x = _conv(width, 3, 2, 1, self.dtype, f"conv{i + 1}")(x)
            x = nn.relu(norm(name=f"bn{i + 1}")(x))
            outputs[f"C{i + 1}"] = x
        return outputs
