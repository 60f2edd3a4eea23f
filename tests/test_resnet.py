"""ResNet / SmallCNN: torchvision parameter counts, strides, stem padding, init, norm variants."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

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


def _numpy_stem(x, kernel):
    """torch stem in float64: conv 7x7/2 pad 3, BN at init (eval), relu, max pool 3x3/2 pad 1."""
    xp = np.pad(x.astype(np.float64), ((0, 0), (3, 3), (3, 3), (0, 0)))
    patches = sliding_window_view(xp, (7, 7), axis=(1, 2))[:, ::2, ::2]  # [N, Ho, Wo, C, 7, 7]
    y = np.einsum("nhwcij,ijco->nhwo", patches, kernel.astype(np.float64))
    y = np.maximum(y / np.sqrt(1.0 + EPS), 0.0)
    yp = np.pad(y, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    return sliding_window_view(yp, (3, 3), axis=(1, 2))[:, ::2, ::2].max(axis=(-2, -1))


def _synthetic_variables(variable_shapes):
    """He-normal kernels and norms at their init values, drawn by numpy (no RNG compile)."""
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            kh, kw, _, out_channels = leaf.shape
            return rng.normal(0.0, np.sqrt(2.0 / (kh * kw * out_channels)), leaf.shape)
        return np.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0)

    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: fill(path, leaf).astype(np.float32), variable_shapes
    )


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
