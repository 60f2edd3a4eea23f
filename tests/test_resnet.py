"""ResNet / SmallCNN: torchvision parameter counts, strides, stem padding, block outputs against
float64 numpy references, init, norm variants and ``norm_kwargs``."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import FrozenDict
from numpy.lib.stride_tricks import sliding_window_view

from mlx_research.nn.normalization import get_norm
from mlx_research.nn.resnet import (
    BasicBlock,
    Bottleneck,
    ResNet,
    SmallCNN,
    conv_kernel_init,
    resnet18,
    resnet34,
    resnet50,
)

EPS = 1e-5
# XLA:CPU compiles every threefry draw slowly (seconds per conv kernel); the "rbg" key
# draws the same distributions and keeps the real inits below fast.
KEY = jax.random.key(0, impl="rbg")
# torchvision totals minus fc (512 * 1000 + 1000 or 2048 * 1000 + 1000).
TORCHVISION_COUNTS = {"resnet18": 11_176_512, "resnet34": 21_284_672, "resnet50": 23_508_032}
# ResNet-18 norm channels: bn1 64; per stage 2 blocks x 2 norms x width, + downsample for 2..4.
RESNET18_NORM_CHANNELS = 64 + 4 * 64 + (4 * 128 + 128) + (4 * 256 + 256) + (4 * 512 + 512)


def _count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _shapes(model, x_shape, train=False):
    """(outputs, variables) as ShapeDtypeStructs: traced only, nothing allocated."""
    x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
    return jax.eval_shape(lambda x: model.init_with_output(KEY, x, train=train), x)


@pytest.mark.parametrize(
    "builder, base_channels",
    [(resnet18, 64), (resnet34, 64), (resnet50, 256)],
    ids=["resnet18", "resnet34", "resnet50"],
)
def test_parameter_counts_and_feature_strides_match_torchvision(builder, base_channels):
    out, variables = _shapes(builder(), (2, 64, 64, 3))
    assert _count(variables["params"]) == TORCHVISION_COUNTS[builder.__name__]
    assert set(variables) == {"params", "batch_stats"}
    assert {k: v.shape for k, v in out.items()} == {
        "C2": (2, 16, 16, base_channels),
        "C3": (2, 8, 8, 2 * base_channels),
        "C4": (2, 4, 4, 4 * base_channels),
        "C5": (2, 2, 2, 8 * base_channels),
    }


def test_frozen_and_group_norm_variants():
    _, frozen = _shapes(resnet18(norm="frozen_batch"), (1, 64, 64, 3))
    assert _count(frozen["params"]) == TORCHVISION_COUNTS["resnet18"] - 2 * RESNET18_NORM_CHANNELS
    assert _count(frozen["batch_stats"]) == 4 * RESNET18_NORM_CHANNELS
    assert set(frozen["batch_stats"]["layer2_0"]["downsample_1"]) == {
        "scale",
        "bias",
        "mean",
        "var",
    }

    out, group = _shapes(resnet18(norm="group"), (1, 64, 64, 3), train=True)
    assert set(group) == {"params"}
    assert _count(group["params"]) == TORCHVISION_COUNTS["resnet18"]
    assert out["C5"].shape == (1, 2, 2, 512)


def _numpy_conv(x, kernel, stride, padding):
    """torch ``Conv2d`` (no bias) in float64: x [N, H, W, C], HWIO kernel, symmetric zero pad."""
    pad = (padding, padding)
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), pad, pad, (0, 0)))
    kh, kw = kernel.shape[:2]
    patches = sliding_window_view(xp, (kh, kw), axis=(1, 2))[:, ::stride, ::stride]
    return np.einsum("nhwcij,ijco->nhwo", patches, np.asarray(kernel, np.float64))


def _numpy_batch_norm(x, layer, train):
    """torch ``BatchNorm2d``: batch mean / biased variance in train, running stats in eval."""
    if train:
        mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    else:
        mean, var = layer["mean"], layer["var"]
    return (x - mean) / np.sqrt(var + EPS) * layer["scale"] + layer["bias"]


def _numpy_basic_block(x, layers, stride, train):
    """torchvision ``BasicBlock`` with downsample: stride on conv1 (3x3) and the 1x1 shortcut."""
    bn = functools.partial(_numpy_batch_norm, train=train)
    y = np.maximum(bn(_numpy_conv(x, layers["conv1"]["kernel"], stride, 1), layers["bn1"]), 0)
    y = bn(_numpy_conv(y, layers["conv2"]["kernel"], 1, 1), layers["bn2"])
    shortcut = _numpy_conv(x, layers["downsample_0"]["kernel"], stride, 0)
    return np.maximum(y + bn(shortcut, layers["downsample_1"]), 0)


def _numpy_bottleneck(x, layers, stride, train):
    """torchvision v1.5 ``Bottleneck`` with downsample: stride on conv2 (3x3), not conv1."""
    bn = functools.partial(_numpy_batch_norm, train=train)
    y = np.maximum(bn(_numpy_conv(x, layers["conv1"]["kernel"], 1, 0), layers["bn1"]), 0)
    y = np.maximum(bn(_numpy_conv(y, layers["conv2"]["kernel"], stride, 1), layers["bn2"]), 0)
    y = bn(_numpy_conv(y, layers["conv3"]["kernel"], 1, 0), layers["bn3"])
    shortcut = _numpy_conv(x, layers["downsample_0"]["kernel"], stride, 0)
    return np.maximum(y + bn(shortcut, layers["downsample_1"]), 0)


def _layers(variables):
    """{layer name: {leaf name: float64 array}}, merging ``params`` and ``batch_stats``."""
    layers = {}
    for collection in variables.values():
        for name, leaves in collection.items():
            layers.setdefault(name, {}).update({k: np.float64(v) for k, v in leaves.items()})
    return layers


def _numpy_stem(x, kernel):
    """torch stem in float64: conv 7x7/2 pad 3, BN at init (eval), relu, max pool 3x3/2 pad 1."""
    y = np.maximum(_numpy_conv(x, kernel, 2, 3) / np.sqrt(1.0 + EPS), 0.0)
    yp = np.pad(y, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    return sliding_window_view(yp, (3, 3), axis=(1, 2))[:, ::2, ::2].max(axis=(-2, -1))


def _synthetic_variables(variable_shapes, random_norms=False):
    """He-normal kernels, drawn by numpy (no RNG compile), and norms at their init values or,
    with ``random_norms``, random (so a wrong statistic or a skipped norm shows)."""
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            kh, kw, _, out_channels = leaf.shape
            return rng.normal(0.0, np.sqrt(2.0 / (kh * kw * out_channels)), leaf.shape)
        if random_norms:
            if name in ("scale", "var"):
                return rng.uniform(0.5, 2.0, leaf.shape)
            return rng.normal(0.0, 0.5, leaf.shape)
        return np.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0)

    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: fill(path, leaf).astype(np.float32), variable_shapes
    )


@pytest.mark.slow
def test_resnet18_forward_matches_torch_stem_padding():
    model = resnet18()
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    variables = _synthetic_variables(_shapes(model, x.shape)[1])

    def forward(variables, x):
        captured = {}

        def grab_stage_input(next_fun, args, kwargs, context):
            if context.module.name == "layer1_0" and context.method_name == "__call__":
                captured["stem"] = args[0]
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(grab_stage_input):
            out = model.apply(variables, x, train=False)
        return out, captured["stem"]

    out, stem = jax.jit(forward)(variables, x)
    expected = _numpy_stem(x, variables["params"]["conv1"]["kernel"])
    np.testing.assert_allclose(stem, expected, rtol=1e-4, atol=1e-4)
    assert {k: v.shape[1:] for k, v in out.items()} == {
        "C2": (8, 8, 64),
        "C3": (4, 4, 128),
        "C4": (2, 2, 256),
        "C5": (1, 1, 512),
    }
    assert all(bool(jnp.isfinite(v).all()) for v in out.values())


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(
    "block_cls, in_channels, filters, reference",
    [(BasicBlock, 4, 8, _numpy_basic_block), (Bottleneck, 8, 4, _numpy_bottleneck)],
    ids=["basic", "bottleneck"],
)
def test_stride2_block_with_downsample_matches_numpy(
    block_cls, in_channels, filters, reference, train
):
    norm = functools.partial(get_norm, "batch", use_running_average=not train)
    block = block_cls(filters=filters, norm=norm, strides=2)
    x = np.random.default_rng(3).normal(size=(2, 8, 8, in_channels)).astype(np.float32)
    shapes = jax.eval_shape(block.init, KEY, jax.ShapeDtypeStruct(x.shape, jnp.float32))
    variables = _synthetic_variables(shapes, random_norms=True)
    assert set(variables["params"]) >= {"downsample_0", "downsample_1"}

    apply = functools.partial(block.apply, mutable=["batch_stats"] if train else False)
    out = jax.jit(apply)(variables, x)
    out = out[0] if train else out

    expected = reference(x, _layers(variables), 2, train)
    assert expected.shape == (2, 4, 4, filters * block_cls.expansion)
    assert 0.05 < np.mean(expected == 0) < 0.95  # the final relu clips part of the output
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_norm_kwargs_reach_every_norm_layer():
    model = resnet18(num_filters=16, norm="group", norm_kwargs={"num_groups": 4})
    assert isinstance(model.norm_kwargs, FrozenDict)
    hash(model)  # a dict field would make the module unhashable
    out, variables = _shapes(model, (1, 64, 64, 3), train=True)
    assert set(variables) == {"params"}
    assert {k: v.shape[-1] for k, v in out.items()} == {"C2": 16, "C3": 32, "C4": 64, "C5": 128}
    with pytest.raises(ValueError):  # 32 groups, the default, do not divide 16 channels
        _shapes(resnet18(num_filters=16, norm="group"), (1, 64, 64, 3))
    with pytest.raises(ValueError, match="use_running_average"):
        _shapes(resnet18(norm_kwargs={"use_running_average": True}), (1, 64, 64, 3))


def test_small_cnn_group_norm_with_norm_kwargs_matches_numpy():
    model = SmallCNN(features=(8,), norm="group", norm_kwargs={"num_groups": 4})
    x = np.random.default_rng(4).normal(size=(2, 8, 8, 3)).astype(np.float32)
    variables = _synthetic_variables(_shapes(model, x.shape)[1], random_norms=True)
    out = jax.jit(functools.partial(model.apply, train=True))(variables, x)["C1"]

    layers = _layers(variables)
    y = _numpy_conv(x, layers["conv1"]["kernel"], 2, 1)  # [2, 4, 4, 8]
    groups = y.reshape(2, 4, 4, 4, 2)  # 4 groups of 2 channels
    mean = groups.mean(axis=(1, 2, 4), keepdims=True)
    var = groups.var(axis=(1, 2, 4), keepdims=True)
    y = ((groups - mean) / np.sqrt(var + EPS)).reshape(y.shape)
    expected = np.maximum(y * layers["bn1"]["scale"] + layers["bn1"]["bias"], 0.0)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_conv_kernel_init_is_untruncated_he_normal_fan_out():
    kernel = np.asarray(conv_kernel_init(KEY, (3, 3, 128, 512)), np.float64)
    std = np.sqrt(2.0 / (3 * 3 * 512))  # torchvision kaiming_normal_(mode="fan_out")
    assert abs(kernel.std() / std - 1.0) < 0.01
    assert abs(np.mean(np.abs(kernel) > 2 * std) - 0.0455) < 0.003  # a truncated normal gives 0


@pytest.mark.parametrize("block_cls, last_norm", [(BasicBlock, "bn2"), (Bottleneck, "bn3")])
def test_real_init_zero_init_residual_and_he_std(block_cls, last_norm):
    model = ResNet(stage_sizes=(1,), block_cls=block_cls, num_filters=4, zero_init_residual=True)
    params = jax.jit(lambda x: model.init(KEY, x, train=False))(jnp.zeros((1, 16, 16, 3)))["params"]
    np.testing.assert_array_equal(params["layer1_0"][last_norm]["scale"], 0.0)
    np.testing.assert_array_equal(params["layer1_0"]["bn1"]["scale"], 1.0)
    # conv1 kernel [7, 7, 3, 4]: fan_out std sqrt(2 / 196); fan_in would be 15 % larger.
    kernel = np.asarray(params["conv1"]["kernel"], np.float64)
    assert abs(kernel.std() / np.sqrt(2.0 / (7 * 7 * 4)) - 1.0) < 0.08


def test_small_cnn_outputs_and_batch_stats_mutate_only_in_train():
    model = SmallCNN()
    x = np.random.default_rng(1).normal(size=(2, 16, 16, 3)).astype(np.float32)
    variables = jax.jit(lambda x: model.init(KEY, x, train=False))(x)
    apply = jax.jit(model.apply, static_argnames=("train", "mutable"))

    out, train_stats = apply(variables, x, train=True, mutable="batch_stats")
    assert {k: v.shape for k, v in out.items()} == {
        "C1": (2, 8, 8, 16),
        "C2": (2, 4, 4, 32),
        "C3": (2, 2, 2, 64),
    }
    before = variables["batch_stats"]["bn1"]["mean"]
    after = train_stats["batch_stats"]["bn1"]["mean"]
    assert not np.allclose(after, before)

    _, eval_stats = apply(variables, x, train=False, mutable="batch_stats")
    jax.tree.map(np.testing.assert_array_equal, eval_stats["batch_stats"], variables["batch_stats"])


def test_small_cnn_frozen_batch_norm_is_identical_in_train_and_eval():
    model = SmallCNN(features=(4, 8), norm="frozen_batch")
    x = np.random.default_rng(2).normal(size=(2, 8, 8, 3)).astype(np.float32)
    variables = jax.jit(lambda x: model.init(KEY, x, train=False))(x)
    apply = jax.jit(model.apply, static_argnames=("train",))
    train_out, eval_out = apply(variables, x, train=True), apply(variables, x, train=False)
    jax.tree.map(np.testing.assert_array_equal, train_out, eval_out)
    assert _count(variables["params"]) == 3 * 3 * 3 * 4 + 3 * 3 * 4 * 8  # convs only
