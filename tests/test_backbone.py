"""Backbone: reported widths and strides equal the maps the modules produce, the ImageNet
normalisation equals the numpy formula, the parameter tree has no extra level (the paths of the
bare body), and bad names or levels raise errors naming the argument / config key."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mlx_research.errors import ConfigError
from mlx_research.models.backbone import (
    BACKBONES,
    Backbone,
    BackboneArgumentError,
    check_backbone,
    feature_widths,
    normalize_imagenet,
)
from mlx_research.nn.resnet import SmallCNN
from mlx_research.train.tasks.backbone import check_backbone_config

KEY = jax.random.key(0, impl="rbg")  # fast real inits on XLA:CPU (see test_resnet.py)
ALL_LEVELS = {"small_cnn": ("C1", "C2", "C3"), "resnet18": ("C2", "C3", "C4", "C5"),
              "resnet34": ("C2", "C3", "C4", "C5"), "resnet50": ("C2", "C3", "C4", "C5")}
# torchvision: resnet18/34 C2..C5 have 64..512 channels, resnet50 256..2048.
CHANNELS = {"small_cnn": (8, 16, 24), "resnet18": (64, 128, 256, 512),
            "resnet34": (64, 128, 256, 512), "resnet50": (256, 512, 1024, 2048)}


def _outputs(backbone, shape=(2, 40, 56, 3)):
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    return jax.eval_shape(lambda x: backbone.init_with_output(KEY, x)[0], x)


@pytest.mark.parametrize("arch", BACKBONES)
def test_reported_widths_and_strides_are_those_of_the_maps(arch):
    backbone = Backbone(arch, ALL_LEVELS[arch], small_cnn_features=(8, 16, 24))
    maps = _outputs(backbone)
    assert backbone.widths() == CHANNELS[arch]
    assert [m.shape[-1] for m in maps] == list(CHANNELS[arch])
    assert [m.shape[1:3] for m in maps] == [(-(-40 // s), -(-56 // s)) for s in backbone.strides()]
    assert backbone.strides() == tuple(2 ** int(level[1:]) for level in ALL_LEVELS[arch])


def test_deepest_map_by_default_and_pyramid_widths():
    deepest = Backbone("resnet50")
    (out,) = _outputs(deepest)
    assert deepest.widths() == (2048,) and deepest.strides() == (32,) and out.shape == (2, 2, 2, 2048)
    pyramid = Backbone("small_cnn", ("C2", "C3"), (8, 16, 24), fpn_channels=12)
    maps = _outputs(pyramid, (1, 64, 64, 3))
    assert pyramid.widths() == (12, 12, 12) and pyramid.strides() == (4, 8, 16)
    assert [m.shape for m in maps] == [(1, 16, 16, 12), (1, 8, 8, 12), (1, 4, 4, 12)]


def test_normalisation_is_the_imagenet_formula():
    images = np.random.default_rng(0).uniform(size=(2, 5, 7, 3)).astype(np.float32)
    want = (images.astype(np.float64) - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(normalize_imagenet(images), want, rtol=1e-6, atol=1e-6)
    assert normalize_imagenet(images, jnp.bfloat16).dtype == jnp.bfloat16
    # The backbone feeds the body the normalised images, or the images as they are.
    body = SmallCNN((4, 6))
    variables = jax.jit(body.init, static_argnames="train")(KEY, images, train=False)
    direct = jax.jit(body.apply, static_argnames="train")(variables, want.astype(np.float32),
                                                          train=False)["C2"]
    variables = {collection: {"body": tree} for collection, tree in variables.items()}
    backbone = Backbone("small_cnn", ("C2",), (4, 6))
    (got,) = jax.jit(backbone.apply)(variables, images)
    np.testing.assert_allclose(got, direct, rtol=1e-5, atol=1e-6)
    (raw,) = jax.jit(Backbone("small_cnn", ("C2",), (4, 6), normalize=False).apply)(variables, want)
    np.testing.assert_allclose(raw, direct, rtol=1e-5, atol=1e-6)


class _Parent(nn.Module):
    """A model with a backbone (+ FPN) beside a head."""

    @nn.compact
    def __call__(self, images):
        maps = Backbone("small_cnn", ("C1", "C2"), (4, 6), fpn_channels=5, body_name="trunk",
                        name="extractor")(images)
        return nn.Dense(3, name="head")(maps[-1])


class _BareParent(nn.Module):
    """The same model's body as a plain submodule (the tree before `Backbone` existed)."""

    @nn.compact
    def __call__(self, images):
        return SmallCNN((4, 6), name="trunk")(images, train=False)


def test_parameter_tree_has_no_extra_level():
    images = jnp.ones((1, 8, 8, 3))
    variables = jax.jit(_Parent().init)(KEY, images)
    assert set(variables["params"]) == {"trunk", "pyramid", "head"}
    assert set(variables["batch_stats"]) == {"trunk"}
    # The same paths and initial values as the bare body under that name.
    bare = jax.jit(_BareParent().init)(KEY, images)
    for collection in ("params", "batch_stats"):
        got = jax.tree_util.tree_flatten_with_path(variables[collection]["trunk"])[0]
        want = jax.tree_util.tree_flatten_with_path(bare[collection]["trunk"])[0]
        assert [path for path, _ in got] == [path for path, _ in want]
        for (_, a), (_, b) in zip(got, want):
            np.testing.assert_array_equal(a, b)
    top = jax.eval_shape(Backbone("small_cnn", ("C2",), (4, 6), fpn_channels=5).init, KEY, images)
    assert set(top["params"]) == {"body", "pyramid"}


@pytest.mark.parametrize(("args", "argument", "message"), [
    (("vgg", (8,), None), "backbone", "must be one of small_cnn, resnet18, resnet34, resnet50; "
                                      "got 'vgg'"),
    (("small_cnn", (), None), "small_cnn_features", "one or more positive widths"),
    (("small_cnn", (8, 0), None), "small_cnn_features", "one or more positive widths"),
    (("resnet18", (), ("C6",)), "feature_levels", "must be one of C2, C3, C4, C5 for resnet18; "
                                                  "got 'C6'"),
    (("small_cnn", (8, 16), ("C3",)), "feature_levels", "must be one of C1, C2 for small_cnn"),
    (("resnet50", (), ("C4", "C3")), "feature_levels", "finest first, each once"),
    (("resnet50", (), ("C3", "C3")), "feature_levels", "finest first, each once"),
    (("resnet50", (), ()), "feature_levels", "one or more maps"),
])
def test_bad_arguments_are_named(args, argument, message):
    with pytest.raises(BackboneArgumentError, match=message) as error:
        check_backbone(*args)
    assert error.value.argument == argument and str(error.value).startswith(argument)
    backbone, small_cnn_features, feature_levels = args
    with pytest.raises(ValueError, match=f"^{argument} "):  # the module itself refuses too
        Backbone(backbone, feature_levels, small_cnn_features).init(KEY, jnp.ones((1, 32, 32, 3)))


def test_feature_widths_rejects_unknown_names():
    assert feature_widths("resnet34") == {"C2": 64, "C3": 128, "C4": 256, "C5": 512}
    with pytest.raises(ValueError, match="backbone must be one of"):
        feature_widths("resnet101")


@pytest.mark.parametrize(("model", "levels_key", "message"), [
    (dict(backbone="vgg"), None, "config: 'model.backbone' must be one of small_cnn, "),
    (dict(small_cnn_features=()), None, "config: 'model.small_cnn_features' must be one or "),
    (dict(feature_level="C4"), "feature_level", "config: 'model.feature_level' must be one of "
                                                "C1, C2, C3 for small_cnn; got 'C4'"),
    (dict(feature_levels=("C3", "C1")), "feature_levels", "config: 'model.feature_levels' must "
                                                          "name one or more maps, finest first"),
])
def test_task_check_names_the_config_key(model, levels_key, message):
    fields = dict(backbone="small_cnn", small_cnn_features=(8, 16, 32), feature_level="C3",
                  feature_levels=("C2", "C3"))
    config = ml_collections.ConfigDict({"model": {**fields, **model}})
    check_backbone_config(ml_collections.ConfigDict({"model": dict(
        backbone="resnet18", small_cnn_features=(), feature_levels=("C2", "C5"))}),
        "feature_levels")  # fine: a ResNet ignores small_cnn_features
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as error:
        check_backbone_config(config, levels_key)
    assert "\n" not in str(error.value)
