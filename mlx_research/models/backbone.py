"""The image backbone of every model: a CNN body chosen by name, its feature maps, optional FPN.

`Backbone` is the one place that turns a name (``"small_cnn"``, ``"resnet18"``, ``"resnet34"``,
``"resnet50"``) into a network: it normalises the input with the ImageNet mean/std (unless the
data did already), runs the body (`mlx_research.nn.resnet`), picks the feature maps
``"C<k>"`` (output stride ``2**k``) and optionally puts a feature pyramid on them. It reports the
channels (`Backbone.widths`) and strides (`Backbone.strides`) of what it returns, so heads are
sized from it, and `check_backbone` is the one validation of a name and its levels.

Parameter paths: a `Backbone` adds no level to its parent's tree. The body sits at
``<body_name>/...`` and the pyramid at ``pyramid/...`` directly under the parent (the names the
models had before this module existed), so checkpoints, converted torchvision weights
(``init_from.prefix=<body_name>``) and optimizer patterns such as ``^body/`` address them there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mlx_research.nn.resnet import ResNet, SmallCNN, resnet18, resnet34, resnet50

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_RESNETS = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50}
_RESNET_WIDTHS = {  # C2..C5
    "resnet18": (64, 128, 256, 512),
    "resnet34": (64, 128, 256, 512),
    "resnet50": (256, 512, 1024, 2048),
}
BACKBONES = ("small_cnn", *_RESNETS)


class BackboneArgumentError(ValueError):
    """A backbone argument that cannot be built.

    Attributes:
      argument: the argument at fault: ``"backbone"``, ``"small_cnn_features"`` or
        ``"feature_levels"``.
      reason: what is wrong with it (``"must be one of ...; got ..."``).
    """

    def __init__(self, argument: str, reason: str):
        super().__init__(f"{argument} {reason}")
        self.argument = argument
        self.reason = reason


def feature_widths(backbone: str, small_cnn_features: Sequence[int] = ()) -> dict[str, int]:
    """Channels of every map the body returns, finest first.

    Args:
      backbone: one of `BACKBONES`.
      small_cnn_features: stage widths of ``"small_cnn"`` (ignored by the ResNets).

    Returns:
      ``{"C<k>": channels}``: ``C1..C<n>`` for a SmallCNN of n stages, ``C2..C5`` for a ResNet.

    Raises:
      BackboneArgumentError: unknown ``backbone``, or a SmallCNN without stages / with a width < 1.
    """
    if backbone == "small_cnn":
        if not small_cnn_features or min(small_cnn_features) < 1:
            raise BackboneArgumentError(
                "small_cnn_features", f"must be one or more positive widths; got "
                f"{tuple(small_cnn_features)!r}")
        return {f"C{i + 1}": int(w) for i, w in enumerate(small_cnn_features)}
    if backbone not in _RESNET_WIDTHS:
        raise BackboneArgumentError(
            "backbone", f"must be one of {', '.join(BACKBONES)}; got {backbone!r}")
    return {f"C{i + 2}": w for i, w in enumerate(_RESNET_WIDTHS[backbone])}


def check_backbone(
    backbone: str, small_cnn_features: Sequence[int], feature_levels: Sequence[str] | None
) -> None:
    """Raises `BackboneArgumentError` unless `Backbone` can build these arguments: a known name
    and, unless None, one or more of its levels, finest first without repeats."""
    widths = feature_widths(backbone, small_cnn_features)
    if feature_levels is None:
        return
    for level in feature_levels:
        if level not in widths:
            raise BackboneArgumentError(
                "feature_levels",
                f"must be one of {', '.join(widths)} for {backbone}; got {level!r}")
    order = [list(widths).index(level) for level in feature_levels]
    if not order or order != sorted(set(order)):
        raise BackboneArgumentError(
            "feature_levels", f"must name one or more maps, finest first, each once; got "
            f"{tuple(feature_levels)!r}")


def level_stride(level: str) -> int:
    """Image pixels per feature pixel of map ``"C<k>"``: ``2**k``."""
    return 2 ** int(level[1:])


def normalize_imagenet(images: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
    """``(images - IMAGENET_MEAN) / IMAGENET_STD`` per channel, cast to ``dtype``.

    Args:
      images: [..., 3] float in [0, 1].
      dtype: result dtype.
    """
    mean, std = jnp.asarray(IMAGENET_MEAN), jnp.asarray(IMAGENET_STD)
    return ((images - mean) / std).astype(dtype)


class FeaturePyramid(nn.Module):
    """FPN over backbone maps (finest first): [B, Hl, Wl, Cl] -> [B, Hl, Wl, channels], plus one
    level max-pooled from the coarsest output (torchvision's `LastLevelMaxPool`).

    Lateral 1x1 convs, top-down nearest upsampling and addition, 3x3 output convs, as in
    torchvision's `FeaturePyramidNetwork`.
    """

    channels: int = 256
    extra_level: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: Sequence[jax.Array]) -> list[jax.Array]:
        laterals = [
            nn.Conv(self.channels, (1, 1), dtype=self.dtype, name=f"lateral{i}")(f)
            for i, f in enumerate(features)
        ]
        merged = [laterals[-1]]
        for lateral in reversed(laterals[:-1]):
            up = jax.image.resize(merged[0], (*lateral.shape[:3], merged[0].shape[-1]), "nearest")
            merged.insert(0, lateral + up)
        outputs = [
            nn.Conv(self.channels, (3, 3), padding=1, dtype=self.dtype, name=f"output{i}")(m)
            for i, m in enumerate(merged)
        ]
        if self.extra_level:
            outputs.append(nn.max_pool(outputs[-1], (1, 1), strides=(2, 2)))
        return outputs


class Backbone(nn.Module):
    """Input normalisation, a CNN body chosen by name, its maps at ``feature_levels``, FPN.

    Its variables live in the parent's tree (``<body_name>/...``, ``pyramid/...``), see the
    module docstring. Used at the top level, the tree is the same two subtrees.

    Attributes:
      arch: one of `BACKBONES`.
      feature_levels: maps returned, finest first ("C3", ...); None: the deepest map only.
      small_cnn_features: stage widths of ``"small_cnn"`` (stride 2 each).
      norm: body norm ("batch", "frozen_batch", "group").
      fpn_channels: 0 for no pyramid; else the FPN width, with one max-pooled extra level after
        ``feature_levels``.
      normalize: subtract the ImageNet mean and divide by its std first (False: the data
        pipeline normalised the images already).
      body_name: the body's module name in the parent ("body", "backbone").
      dtype: computation dtype.
    """

    arch: str = "small_cnn"
    feature_levels: Sequence[str] | None = None
    small_cnn_features: Sequence[int] = (32, 64, 128)
    norm: str = "batch"
    fpn_channels: int = 0
    normalize: bool = True
    body_name: str = "body"
    dtype: Any = jnp.float32

    def setup(self) -> None:
        check_backbone(self.arch, self.small_cnn_features, self.feature_levels)
        if isinstance(self.parent, nn.Module):
            nn.share_scope(self, self.parent)  # no extra level in the parameter tree
        self.body = self._body()
        if self.fpn_channels:
            self.pyramid = FeaturePyramid(self.fpn_channels, dtype=self.dtype)

    def _body(self) -> ResNet | SmallCNN:
        if self.arch == "small_cnn":
            return SmallCNN(features=tuple(self.small_cnn_features), norm=self.norm,
                            dtype=self.dtype, name=self.body_name)
        return _RESNETS[self.arch](norm=self.norm, dtype=self.dtype, name=self.body_name)

    @nn.nowrap
    def levels(self) -> tuple[str, ...]:
        """Names of the body maps returned, finest first (before any pyramid level)."""
        if self.feature_levels is None:
            return tuple(feature_widths(self.arch, self.small_cnn_features))[-1:]
        return tuple(self.feature_levels)

    @nn.nowrap
    def widths(self) -> tuple[int, ...]:
        """Channels of each returned map (with the pyramid: ``fpn_channels`` for each).

        Raises:
          BackboneArgumentError: arguments `check_backbone` rejects.
        """
        check_backbone(self.arch, self.small_cnn_features, self.feature_levels)
        if self.fpn_channels:
            return (self.fpn_channels,) * (len(self.levels()) + 1)
        widths = feature_widths(self.arch, self.small_cnn_features)
        return tuple(widths[level] for level in self.levels())

    @nn.nowrap
    def strides(self) -> tuple[int, ...]:
        """Image pixels per feature pixel of each returned map (the extra pyramid level: twice
        the last)."""
        strides = tuple(level_stride(level) for level in self.levels())
        return strides + (2 * strides[-1],) if self.fpn_channels else strides

    def __call__(self, images: jax.Array, train: bool = False) -> list[jax.Array]:
        """Feature maps of a batch of images.

        Args:
          images: [B, H, W, 3] float in [0, 1] (or already normalised when ``normalize`` is
            False).
          train: batch norm on batch statistics (apply with ``mutable=["batch_stats"]``).

        Returns:
          One [B, ceil(H / s), ceil(W / s), width] map per level (`strides`, `widths`), finest
          first.
        """
        if self.normalize:
            images = normalize_imagenet(images, self.dtype)
        maps = self.body(images, train=train)
        levels = [maps[level] for level in self.levels()]
        return self.pyramid(levels) if self.fpn_channels else levels
