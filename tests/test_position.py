"""Tests for mlx_research.nn.position against float64 numpy re-implementations."""

import math

import flax.linen as nn
import jax
import numpy as np
import pytest
from flax.linen import meta

from mlx_research.nn.position import (
    LearnedPositionEmbedding,
    LearnedPositionEmbedding2D,
    sine_position_encoding_2d,
    sinusoidal_position_encoding,
)


def test_sinusoidal_matches_paper_formula():
    length, dim = 7, 6
    ref = np.zeros((length, dim))
    for pos in range(length):
        for i in range(dim // 2):
            angle = pos / 10000.0 ** (2 * i / dim)
            ref[pos, 2 * i] = math.sin(angle)
            ref[pos, 2 * i + 1] = math.cos(angle)
    out = sinusoidal_position_encoding(length, dim)
    assert out.shape == (length, dim)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="even"):
        sinusoidal_position_encoding(3, 5)


def np_detr_sine(not_mask, num_pos_feats, temperature, normalize, scale):
    """DETR PositionEmbeddingSine (NCHW -> NHWC), written from its definition in float64."""
    y_embed = np.cumsum(not_mask, axis=1, dtype=np.float64)
    x_embed = np.cumsum(not_mask, axis=2, dtype=np.float64)
    if normalize:
        y_embed = y_embed / (y_embed[:, -1:, :] + 1e-6) * scale
        x_embed = x_embed / (x_embed[:, :, -1:] + 1e-6) * scale
    b, h, w = not_mask.shape
    out = np.zeros((b, h, w, 2 * num_pos_feats))
    for c in range(num_pos_feats):
        dim_t = temperature ** (2 * (c // 2) / num_pos_feats)
        fn = np.sin if c % 2 == 0 else np.cos
        out[..., c] = fn(y_embed / dim_t)
        out[..., num_pos_feats + c] = fn(x_embed / dim_t)
    return out


@pytest.mark.parametrize("normalize", [True, False])
def test_sine_2d_matches_detr_on_padded_mask(normalize):
    valid = np.zeros((2, 4, 5), bool)
    valid[0, :3, :4] = True  # padded bottom row and right column
    valid[1] = True
    encode = jax.jit(sine_position_encoding_2d, static_argnames=("num_pos_feats", "normalize"))
    out = encode(valid, num_pos_feats=8, normalize=normalize)
    ref = np_detr_sine(valid, 8, 10000.0, normalize, 2 * math.pi)
    assert out.shape == (2, 4, 5, 16)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=2e-6)


def test_learned_position_embedding():
    module = LearnedPositionEmbedding(num_embeddings=6, features=3)
    variables = jax.jit(module.init, static_argnums=1)(jax.random.key(0), 4)
    assert tuple(nn.get_partition_spec(variables)["params"]["embedding"]) == ("length", "embed")
    table = np.asarray(meta.unbox(variables)["params"]["embedding"])
    assert table.shape == (6, 3)
    np.testing.assert_array_equal(module.apply(variables, 4), table[:4])
    positions = np.array([[5, 0], [2, 2]])
    np.testing.assert_array_equal(module.apply(variables, positions), table[positions])
    with pytest.raises(ValueError, match="exceeds"):
        module.apply(variables, 7)


def test_learned_position_embedding_2d_layout():
    module = LearnedPositionEmbedding2D(num_pos_feats=2, max_size=5)
    x = np.zeros((2, 3, 4, 7), np.float32)
    abstract = jax.eval_shape(module.init, jax.random.key(0), x)
    specs = nn.get_partition_spec(abstract)["params"]
    assert tuple(specs["row_embed"]) == tuple(specs["col_embed"]) == ("length", "embed")
    rng = np.random.default_rng(0)
    row, col = rng.random((5, 2)), rng.random((5, 2))
    params = {"row_embed": row.astype(np.float32), "col_embed": col.astype(np.float32)}
    out = module.apply({"params": params}, x)
    assert out.shape == (2, 3, 4, 4)
    for i in range(3):
        for j in range(4):
            np.testing.assert_allclose(out[1, i, j], np.concatenate([col[j], row[i]]), rtol=1e-6)
    with pytest.raises(ValueError, match="max_size"):
        module.apply({"params": params}, np.zeros((1, 6, 2), bool))
