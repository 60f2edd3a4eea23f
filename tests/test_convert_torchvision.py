"""torchvision ResNet state dict -> our ResNet: key/shape coverage for resnet18/34/50, a float64
numpy torchvision ResNet-18 forward (NCHW, on the original state dict) against our eval-mode
features, error messages, the .npz round trip and the CLI without torch."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from mlx_research.nn import resnet18, resnet34, resnet50
from mlx_research.tools import convert_torchvision as ct
from mlx_research.tree import flatten

EPS = 1e-5
# torchvision's architecture tables: (block, layers) and widths, written out independently of
# mlx_research.nn.resnet so a renamed or mis-shaped variable shows up as a conversion error.
TORCHVISION_ARCHS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}
BUILDERS = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50}


def _torchvision_shapes(arch):
    """{state-dict key: shape} of torchvision's ``arch`` (NCHW / OIHW), fc and counters included."""
    block, layers = TORCHVISION_ARCHS[arch]
    expansion = 1 if block == "basic" else 4
    shapes = {"conv1.weight": (64, 3, 7, 7)}

    def bn(prefix, c):
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (c,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    bn("bn1", 64)
    inplanes = 64
    for i, num_blocks in enumerate(layers):
        planes = 64 * 2**i
        for j in range(num_blocks):
            p = f"layer{i + 1}.{j}"
            if block == "basic":
                convs = [(planes, inplanes, 3), (planes, planes, 3)]
            else:
                convs = [(planes, inplanes, 1), (planes, planes, 3), (planes * 4, planes, 1)]
            for k, (out_c, in_c, size) in enumerate(convs, 1):
                shapes[f"{p}.conv{k}.weight"] = (out_c, in_c, size, size)
                bn(f"{p}.bn{k}", out_c)
            if j == 0 and (i > 0 or inplanes != planes * expansion):
                shapes[f"{p}.downsample.0.weight"] = (planes * expansion, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    shapes["fc.weight"] = (1000, inplanes)
    shapes["fc.bias"] = (1000,)
    return shapes


def _random_state_dict(arch):
    """A fresh dict (tests edit it) sharing the read-only arrays of ``_random_arrays``."""
    return dict(_random_arrays(arch))


@functools.cache
def _random_arrays(arch, seed=0):
    """He-normal (fan_out) conv weights, small random BN affine and running stats (var in
    [0.5, 1.5]), so a wrong statistic or skipped norm shows and values stay O(1)."""
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in _torchvision_shapes(arch).items():
        name = key.rsplit(".", 1)[-1]
        if name == "num_batches_tracked":
            value = np.array(7, np.int64)
        elif len(shape) == 4:
            out_c, _, kh, kw = shape
            value = rng.normal(0.0, np.sqrt(2.0 / (out_c * kh * kw)), shape)
        elif name == "running_var":
            value = rng.uniform(0.5, 1.5, shape)
        elif name == "weight" and not key.startswith("fc."):
            value = rng.uniform(0.5, 1.5, shape)
        else:  # bias, running_mean, fc.*
            value = rng.normal(0.0, 0.2, shape)
        state[key] = np.asarray(value, np.int64 if name == "num_batches_tracked" else np.float32)
        state[key].flags.writeable = False
    return state


def _variable_shapes(arch):
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    model = BUILDERS[arch]()
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


# --- float64 numpy torchvision ResNet-18 forward, NCHW, on the torch state dict -------------


def _conv(x, w, stride, padding):
    """torch ``F.conv2d`` without bias: x [N, C, H, W], w [O, C, kh, kw]."""
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    patches = sliding_window_view(xp, w.shape[2:], axis=(2, 3))[:, :, ::stride, ::stride]
    return np.einsum("nchwij,ocij->nohw", patches, w)


def _bn(x, sd, prefix):
    """``BatchNorm2d`` in eval mode: running statistics, eps 1e-5."""
    c = lambda name: sd[f"{prefix}.{name}"][None, :, None, None]  # noqa: E731
    return (x - c("running_mean")) / np.sqrt(c("running_var") + EPS) * c("weight") + c("bias")


def _relu(x):
    return np.maximum(x, 0.0)


def _maxpool_3x3_s2_p1(x):
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    return sliding_window_view(xp, (3, 3), axis=(2, 3))[:, :, ::2, ::2].max(axis=(-2, -1))


def _basic_block(x, sd, p, stride):
    y = _relu(_bn(_conv(x, sd[f"{p}.conv1.weight"], stride, 1), sd, f"{p}.bn1"))
    y = _bn(_conv(y, sd[f"{p}.conv2.weight"], 1, 1), sd, f"{p}.bn2")
    if f"{p}.downsample.0.weight" in sd:
        x = _bn(_conv(x, sd[f"{p}.downsample.0.weight"], stride, 0), sd, f"{p}.downsample.1")
    return _relu(y + x)


def _torchvision_resnet18_features(x, state_dict):
    """x [N, 3, H, W] -> [layer1..layer4 outputs] (NCHW), torchvision's eval-mode forward."""
    sd = {k: np.asarray(v, np.float64) for k, v in state_dict.items()}
    x = _relu(_bn(_conv(x, sd["conv1.weight"], 2, 3), sd, "bn1"))
    x = _maxpool_3x3_s2_p1(x)
    features = []
    for i in range(4):
        for j in range(2):
            x = _basic_block(x, sd, f"layer{i + 1}.{j}", 2 if i > 0 and j == 0 else 1)
        features.append(x)
    return features


# --- tests --------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["batch", "frozen_batch"])
@pytest.mark.slow
def test_resnet18_eval_features_match_numpy_torchvision_forward(norm):
    state_dict = _random_state_dict("resnet18")
    variables = ct.convert(state_dict, "resnet18", norm=norm)
    if norm == "frozen_batch":  # nothing trainable in the norms: scale/bias are statistics
        assert "bn1" not in variables["params"] and "scale" in variables["batch_stats"]["bn1"]
    x_nchw = np.random.default_rng(1).normal(size=(1, 3, 32, 32))
    out = jax.jit(lambda v, x: resnet18(norm=norm).apply(v, x, train=False))(
        variables, x_nchw.transpose(0, 2, 3, 1).astype(np.float32)
    )
    expected = _torchvision_resnet18_features(x_nchw, state_dict)
    for k, ref in zip(("C2", "C3", "C4", "C5"), expected, strict=True):
        ref = ref.transpose(0, 2, 3, 1)
        assert out[k].shape == ref.shape, k
        assert 0.02 < np.mean(ref == 0) < 0.98, k  # relu clips part, not all, of the output
        scale = np.abs(ref).max()
        np.testing.assert_allclose(out[k], ref, rtol=0, atol=1e-4 * scale, err_msg=k)


@pytest.mark.parametrize("arch", sorted(TORCHVISION_ARCHS))
@pytest.mark.slow
def test_every_key_maps_to_our_tree_with_its_shape(arch):
    state_dict = _random_state_dict(arch)
    variables = ct.convert(state_dict, arch)
    shapes = _variable_shapes(arch)
    got = {k: (v.shape, v.dtype) for k, v in flatten(variables).items()}
    assert got == {k: (v.shape, np.dtype(np.float32)) for k, v in flatten(shapes).items()}
    assert jax.tree.structure(variables) == jax.tree.structure(shapes)
    # Every torchvision tensor but fc and the counters is used exactly once.
    used = {k for k in state_dict if not k.startswith("fc.") and "num_batches" not in k}
    assert len(used) == len(got)


def test_values_land_where_torchvision_keeps_them():
    state_dict = _random_state_dict("resnet50")
    variables = ct.convert(state_dict, "resnet50")
    params, stats = variables["params"], variables["batch_stats"]
    w = state_dict["layer2.0.conv2.weight"]  # [O, I, kh, kw]
    np.testing.assert_array_equal(params["layer2_0"]["conv2"]["kernel"], w.transpose(2, 3, 1, 0))
    w = state_dict["conv1.weight"]
    np.testing.assert_array_equal(params["conv1"]["kernel"][1, 4, 2, 5], w[5, 2, 1, 4])
    ds = "layer3.0.downsample"
    ours = params["layer3_0"]
    np.testing.assert_array_equal(
        ours["downsample_0"]["kernel"][0, 0], state_dict[f"{ds}.0.weight"][:, :, 0, 0].T
    )
    np.testing.assert_array_equal(ours["downsample_1"]["scale"], state_dict[f"{ds}.1.weight"])
    np.testing.assert_array_equal(ours["downsample_1"]["bias"], state_dict[f"{ds}.1.bias"])
    bn3 = stats["layer4_2"]["bn3"]
    np.testing.assert_array_equal(bn3["mean"], state_dict["layer4.2.bn3.running_mean"])
    np.testing.assert_array_equal(bn3["var"], state_dict["layer4.2.bn3.running_var"])


def _single_line_error(state_dict, arch, match):
    with pytest.raises(ValueError, match=match) as info:
        ct.convert(state_dict, arch)
    assert "\n" not in str(info.value)


def test_missing_key_is_named():
    state_dict = _random_state_dict("resnet18")
    del state_dict["layer2.0.downsample.1.running_var"]
    match = r"missing key 'layer2\.0\.downsample\.1\.running_var'"
    _single_line_error(state_dict, "resnet18", match)


def test_misshaped_key_is_named():
    state_dict = _random_state_dict("resnet18")
    w = state_dict["layer3.0.conv1.weight"]
    state_dict["layer3.0.conv1.weight"] = w.transpose(2, 3, 1, 0)  # already HWIO
    match = r"'layer3\.0\.conv1\.weight' has shape \(3, 3, 128, 256\)"
    _single_line_error(state_dict, "resnet18", match)


def test_unexpected_key_is_named():
    state_dict = _random_state_dict("resnet18")
    state_dict["layer2.0.downsample.2.weight"] = np.ones(128, np.float32)
    match = r"unexpected key 'layer2\.0\.downsample\.2\.weight'"
    _single_line_error(state_dict, "resnet18", match)
    # A resnet50 dict is not a resnet18 one: its first surplus key is reported.
    match = r"unexpected key 'layer1\.0\.bn3\."
    _single_line_error(_random_state_dict("resnet50"), "resnet18", match)


def test_unknown_arch_is_named():
    _single_line_error({}, "resnet101", r"unknown arch 'resnet101'")


def test_npz_round_trip(tmp_path):
    state_dict = _random_state_dict("resnet18")
    path = tmp_path / "r18.npz"
    ct.write_npz(state_dict, "resnet18", path)
    with np.load(path) as data:
        names = set(data.files)
        assert {"params/conv1/kernel", "batch_stats/bn1/mean"} <= names
        assert "params/layer2_0/downsample_1/scale" in names
        assert all(data[name].dtype == np.float32 for name in data.files)
    loaded = ct.load_npz(path)
    expected = ct.convert(state_dict, "resnet18")
    assert jax.tree.structure(loaded) == jax.tree.structure(expected)
    jax.tree.map(np.testing.assert_array_equal, loaded, expected)


def test_cli_without_torch_says_how_to_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(__import__("sys").modules, "torch", None)  # `import torch` -> ImportError
    assert ct.main(["resnet18", str(tmp_path / "in.pth"), str(tmp_path / "out.npz")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "pip install torch" in err and err.count("\n") == 1
    assert not (tmp_path / "out.npz").exists()
