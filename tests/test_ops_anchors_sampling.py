"""Anchors vs a loop re-implementation of torchvision's AnchorGenerator; balanced sampling counts,
eligibility, randomness and uniformity."""

import math

import jax
import numpy as np
import pytest

from mlx_research.ops.anchors import anchor_grid, cell_anchors, num_anchors_per_location
from mlx_research.ops.sampling import balanced_sample


# ----------------------------------------------------------------------------- anchors
def loop_anchors(image_size, feature_sizes, sizes, ratios):
    """torchvision's algorithm written as plain loops in float64 (round half to even)."""
    out = []
    for (gh, gw), level_sizes, level_ratios in zip(feature_sizes, sizes, ratios):
        sh, sw = image_size[0] // gh, image_size[1] // gw
        cells = []
        for r in level_ratios:
            for s in level_sizes:
                hr = math.sqrt(r)
                w, h = s / hr, s * hr
                cells.append([round(-w / 2), round(-h / 2), round(w / 2), round(h / 2)])
        for y in range(gh):
            for x in range(gw):
                for c in cells:
                    out.append([x * sw + c[0], y * sh + c[1], x * sw + c[2], y * sh + c[3]])
    return np.asarray(out, np.float64).reshape(-1, 4)


def test_cell_anchors_torchvision_defaults_and_half_to_even():
    # torchvision's default generator: sizes (128, 256, 512), ratios (0.5, 1, 2), ratio outer.
    np.testing.assert_array_equal(
        cell_anchors((128,), (0.5, 1.0, 2.0)),
        [[-91, -45, 91, 45], [-64, -64, 64, 64], [-45, -91, 45, 91]],
    )
    # Odd sizes put w/2 exactly on .5: torch.round rounds half to even (45 -> +-22, 27 -> +-14).
    np.testing.assert_array_equal(
        cell_anchors((45, 27), (1.0,)), [[-22, -22, 22, 22], [-14, -14, 14, 14]]
    )


def test_anchor_grid_single_level_non_dividing_sizes():
    image_size, feature_sizes = (64, 96), ((5, 7),)  # strides 12 and 13 (integer division)
    sizes, ratios = ((16, 45, 128),), ((0.5, 1.0, 2.0),)
    got = np.asarray(anchor_grid(image_size, feature_sizes, sizes, ratios))
    assert got.shape == (5 * 7 * 9, 4) and got.dtype == np.float32
    np.testing.assert_array_equal(got, loop_anchors(image_size, feature_sizes, sizes, ratios))
    # The next grid column is one x-stride (13) to the right, the next row one y-stride (12) down.
    np.testing.assert_array_equal(got[9] - got[0], [13, 0, 13, 0])
    np.testing.assert_array_equal(got[7 * 9] - got[0], [0, 12, 0, 12])


def test_anchor_grid_several_levels_and_flat_arguments():
    image_size = (100, 70)
    feature_sizes = ((25, 18), (13, 9), (7, 5))  # none divides exactly in both axes
    sizes, ratios = ((20, 27), (45,), (90, 128)), ((0.5, 1.0, 2.0), (1.0,), (0.25, 3.0))
    got = np.asarray(jax.jit(lambda: anchor_grid(image_size, feature_sizes, sizes, ratios))())
    assert num_anchors_per_location(sizes, ratios) == [6, 1, 4]
    assert got.shape == (25 * 18 * 6 + 13 * 9 + 7 * 5 * 4, 4)
    np.testing.assert_array_equal(got, loop_anchors(image_size, feature_sizes, sizes, ratios))
    # torchvision's flat forms: one size per level, the same ratios for every level.
    flat = np.asarray(anchor_grid(image_size, feature_sizes, (32, 64, 128), (0.5, 1.0, 2.0)))
    nested = ((32,), (64,), (128,)), ((0.5, 1.0, 2.0),) * 3
    np.testing.assert_array_equal(flat, loop_anchors(image_size, feature_sizes, *nested))
    assert num_anchors_per_location((32, 64, 128), (0.5, 1.0, 2.0)) == [3, 3, 3]
    assert num_anchors_per_location() == [9]
    with pytest.raises(ValueError, match="feature maps"):
        anchor_grid(image_size, feature_sizes[:2], sizes, ratios)


# ----------------------------------------------------------------------------- sampling
sample = jax.jit(balanced_sample, static_argnames=("num_samples", "positive_fraction"))
batched_sample = jax.jit(
    jax.vmap(balanced_sample, in_axes=(0, 0, None, None, 0)), static_argnums=(2, 3)
)


def make_labels(num_pos, num_neg, num_ignore, rng):
    """Shuffled labels with positives as matched indices 1..3, ignores as -1 / -2."""
    labels = np.concatenate([
        rng.integers(1, 4, num_pos), np.zeros(num_neg, int), rng.choice([-1, -2], num_ignore)
    ])
    return rng.permutation(labels).astype(np.int32)


def check_sample(pos, neg, labels, num_samples, fraction, valid=None):
    pos, neg, labels = np.asarray(pos), np.asarray(neg), np.asarray(labels)
    valid = np.ones(labels.shape, bool) if valid is None else np.asarray(valid)
    n_pos_avail = ((labels >= 1) & valid).sum()
    n_neg_avail = ((labels == 0) & valid).sum()
    want_pos = min(int(num_samples * fraction), n_pos_avail)
    want_neg = min(num_samples - want_pos, n_neg_avail)
    assert pos.sum() == want_pos and neg.sum() == want_neg
    assert (labels[pos] >= 1).all() and valid[pos].all()
    assert (labels[neg] == 0).all() and valid[neg].all()
    assert not (pos & neg).any()


@pytest.mark.parametrize(
    "num_pos, num_neg, num_ignore",
    [(15, 20, 5), (2, 30, 8), (12, 3, 25), (1, 2, 37), (0, 40, 0), (0, 0, 40)],
)
def test_balanced_sample_counts_and_eligibility(num_pos, num_neg, num_ignore):
    labels = make_labels(num_pos, num_neg, num_ignore, np.random.default_rng(num_pos + 7 * num_neg))
    # int() truncates: int(10 * .25) = 2, int(7 * .5) = 3 (round would give 4).
    for num_samples, fraction in ((16, 0.25), (10, 0.25), (7, 0.5)):
        pos, neg = sample(
            jax.random.key(3), labels, num_samples=num_samples, positive_fraction=fraction
        )
        check_sample(pos, neg, labels, num_samples, fraction)


def test_balanced_sample_valid_mask_and_empty():
    rng = np.random.default_rng(0)
    labels = make_labels(10, 10, 0, rng)
    valid = np.arange(20) < 12  # rows 12.. are padding
    pos, neg = sample(jax.random.key(1), labels, num_samples=20, positive_fraction=0.5, valid=valid)
    check_sample(pos, neg, labels, 20, 0.5, valid)
    assert pos.sum() + neg.sum() == 12  # every valid row, no padding row
    pos, neg = balanced_sample(jax.random.key(0), np.zeros((0,), np.int32), 8, 0.5)
    assert pos.shape == (0,) and neg.shape == (0,)
    pos, neg = balanced_sample(jax.random.key(0), labels, 0, 0.5)
    assert not np.asarray(pos).any() and not np.asarray(neg).any()


def test_balanced_sample_vmap_jit_and_key_dependence():
    rng = np.random.default_rng(1)
    labels = np.stack([make_labels(p, n, 40 - p - n, rng) for p, n in ((20, 15), (3, 30), (30, 2))])
    valid = np.ones_like(labels, bool)
    valid[0, :5] = False
    keys = jax.random.split(jax.random.key(0), 3)
    pos, neg = batched_sample(keys, labels, 12, 0.5, valid)
    assert pos.shape == neg.shape == (3, 40)
    for i in range(3):
        check_sample(pos[i], neg[i], labels[i], 12, 0.5, valid[i])
    # Other keys give other draws; the same key the same draw.
    same = batched_sample(keys, labels, 12, 0.5, valid)
    other = batched_sample(jax.random.split(jax.random.key(1), 3), labels, 12, 0.5, valid)
    np.testing.assert_array_equal(same[0], pos)
    assert not np.array_equal(other[0], pos) and not np.array_equal(other[1], neg)


def test_balanced_sample_is_uniform():
    labels = np.array([1] * 10 + [0] * 20 + [-1] * 10, np.int32)  # choose 3 of 10 pos, 9 of 20 neg
    draws = 3000
    keys = jax.random.split(jax.random.key(42), draws)
    tiled = np.broadcast_to(labels, (draws, 40))
    pos, neg = batched_sample(keys, tiled, 12, 0.25, np.ones((draws, 40), bool))
    pos_freq = np.asarray(pos, np.float64).mean(0)
    neg_freq = np.asarray(neg, np.float64).mean(0)
    # Each positive is picked with probability 3/10, each negative 9/20 (std < 0.01 per entry).
    np.testing.assert_allclose(pos_freq[:10], 0.3, atol=0.04)
    np.testing.assert_allclose(neg_freq[10:30], 0.45, atol=0.045)
    assert pos_freq[10:].max() == 0 and neg_freq[:10].max() == 0 and neg_freq[30:].max() == 0
    # Pairs are independent of position too: P(both of two given positives) = 3/10 * 2/9.
    both = (np.asarray(pos)[:, 0] & np.asarray(pos)[:, 9]).mean()
    assert abs(both - 1 / 15) < 0.02
