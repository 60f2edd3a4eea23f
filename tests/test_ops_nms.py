"""NMS against a plain float64 numpy greedy NMS (stable descending score order, IoU > t)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlx_research.ops.nms import batched_nms, nms


def greedy_nms(boxes, scores, threshold, classes=None):
    """Reference: visit boxes by score (ties: lower index first), keep unless a kept box of the
    same class overlaps with IoU > threshold. float64; 0/0 IoU counts as no overlap."""
    boxes = np.asarray(boxes, np.float64)
    order = sorted(range(len(boxes)), key=lambda i: (-float(scores[i]), i))
    keep = []
    for i in order:
        suppressed = False
        for j in keep:
            if classes is not None and classes[i] != classes[j]:
                continue
            w = max(0.0, min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0]))
            h = max(0.0, min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1]))
            inter = w * h
            area_i = (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])
            area_j = (boxes[j, 2] - boxes[j, 0]) * (boxes[j, 3] - boxes[j, 1])
            union = area_i + area_j - inter
            if union > 0 and inter / union > threshold:
                suppressed = True
                break
        if not suppressed:
            keep.append(i)
    return np.array(keep, np.int64)


def random_boxes(rng, n, extent=100.0, size=(2.0, 40.0)):
    xy = rng.uniform(-10.0, extent, (n, 2))
    wh = rng.uniform(*size, (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def kept(indices):
    indices = np.asarray(indices)
    assert indices.dtype == np.int32
    count = int((indices >= 0).sum())
    assert (indices[count:] == -1).all(), "padding must follow the kept indices"
    return indices[:count]


@pytest.mark.parametrize("n,tile_size,threshold", [(60, 8, 0.5), (150, 256, 0.3), (150, 16, 0.7)])
def test_nms_matches_greedy_reference_with_score_ties(n, tile_size, threshold):
    rng = np.random.default_rng(n + tile_size)
    boxes = random_boxes(rng, n)
    scores = rng.integers(0, 6, n).astype(np.float32)  # many exact ties
    expected = greedy_nms(boxes, scores, threshold)
    assert 3 < len(expected) < n  # something is suppressed, something kept
    out = nms(boxes, scores, threshold, tile_size=tile_size)
    assert out.shape == (n,)
    np.testing.assert_array_equal(kept(out), expected)


@pytest.mark.slow
def test_nms_jit_and_tile_size_do_not_change_the_result():
    rng = np.random.default_rng(1)
    boxes, scores = random_boxes(rng, 97), rng.uniform(size=97).astype(np.float32)
    expected = greedy_nms(boxes, scores, 0.5)
    for tile in (1, 32, 1000):
        f = jax.jit(lambda b, s, tile=tile: nms(b, s, 0.5, 40, tile_size=tile))
        np.testing.assert_array_equal(kept(f(boxes, scores)), expected[:40])


def test_identical_boxes_keep_only_the_best():
    boxes = np.tile(np.array([[10.0, 10.0, 20.0, 30.0]], np.float32), (5, 1))
    np.testing.assert_array_equal(nms(boxes, np.array([0.1, 0.9, 0.3, 0.9, 0.2]), 0.5, 3),
                                  [1, -1, -1])  # tie 1 vs 3: lower index first
    # -0.0 == 0.0 is a tie too (torch's sort compares values, not bit patterns).
    np.testing.assert_array_equal(nms(boxes[:2], np.array([-0.0, 0.0], np.float32), 0.5), [0, -1])


@pytest.mark.slow
def test_negative_threshold_keeps_only_the_top_box():
    # Every IoU (>= 0) exceeds -1, so the first kept box suppresses everything else.
    boxes = random_boxes(np.random.default_rng(2), 20)
    scores = np.linspace(0.1, 0.9, 20).astype(np.float32)
    np.testing.assert_array_equal(kept(nms(boxes, scores, -1.0, tile_size=8)), [19])
    # Boxes apart along x only / y only: intersection 0 (not negative), IoU 0 > -0.5.
    apart = np.array([[0, 0, 1, 1], [3, 0, 4, 1], [0, 3, 1, 4]], np.float32)
    np.testing.assert_array_equal(nms(apart, np.array([0.9, 0.8, 0.7]), -0.5), [0, -1, -1])
    # An inverted box of area -4 against an area-4 box: IoU 0/0 = NaN, never suppressed (and not
    # by the empty slots of the kept-box buffer either: tile_size=2 puts it in the second tile).
    boxes = np.array([[0, 0, 2, 2], [0, 0, 1, 1], [5, 5, 3, 7]], np.float32)
    for tile in (2, 256):
        np.testing.assert_array_equal(
            nms(boxes, np.array([0.9, 0.85, 0.8]), -1.0, tile_size=tile), [0, 2, -1])


def test_disjoint_boxes_all_kept_in_score_order():
    boxes = np.array([[0, 0, 1, 1], [2, 2, 3, 3], [4, 4, 5, 5], [6, 6, 7, 7]], np.float32)
    np.testing.assert_array_equal(nms(boxes, np.array([0.2, 0.8, 0.5, 0.9]), 0.0), [3, 1, 2, 0])
    # Touching boxes (IoU 0) survive even a threshold of 0.
    touching = np.array([[0, 0, 1, 1], [1, 0, 2, 1]], np.float32)
    np.testing.assert_array_equal(nms(touching, np.array([1.0, 0.5]), 0.0), [0, 1])


def test_threshold_is_strict_and_compared_as_a_double():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5]], np.float32)  # IoU exactly 0.5
    scores = np.array([0.9, 0.8], np.float32)
    np.testing.assert_array_equal(nms(boxes, scores, 0.5), [0, 1])  # 0.5 > 0.5 is False
    # float32(0.49999999) == 0.5, but torchvision compares IoU 0.5 > 0.49999999 as doubles.
    np.testing.assert_array_equal(nms(boxes, scores, 0.49999999), [0, -1])
    np.testing.assert_array_equal(nms(boxes, scores, jnp.float32(0.4)), [0, -1])  # traced ok


def test_max_output_size_truncates_and_pads():
    boxes = np.array([[0, 0, 1, 1], [2, 2, 3, 3], [4, 4, 5, 5], [0, 0, 1, 1]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.95], np.float32)
    np.testing.assert_array_equal(nms(boxes, scores, 0.5), [3, 1, 2, -1])
    np.testing.assert_array_equal(nms(boxes, scores, 0.5, 2), [3, 1])
    np.testing.assert_array_equal(nms(boxes, scores, 0.5, 6), [3, 1, 2, -1, -1, -1])
    assert nms(boxes, scores, 0.5, 0).shape == (0,)


def test_empty_and_invalid_inputs_keep_nothing():
    np.testing.assert_array_equal(nms(np.zeros((0, 4)), np.zeros((0,)), 0.5, 3), [-1, -1, -1])
    assert nms(np.zeros((0, 4)), np.zeros((0,)), 0.5).shape == (0,)
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 0, 30, 10], [50, 50, 60, 60]],
                     np.float32)
    scores = np.array([0.5, 0.9, -np.inf, np.nan], np.float32)
    # Box 1 is padding: it neither survives nor suppresses box 0; -inf and NaN scores never kept.
    valid = np.array([True, False, True, True])
    np.testing.assert_array_equal(nms(boxes, scores, 0.5, valid=valid), [0, -1, -1, -1])
    np.testing.assert_array_equal(nms(boxes, scores, 0.5, valid=np.zeros(4, bool)), [-1] * 4)


def test_zero_area_boxes_never_suppress_each_other():
    # torchvision: IoU 0/0 = NaN, and NaN > t is False.
    boxes = np.array([[5, 5, 5, 9], [5, 5, 5, 9], [5, 5, 5, 5]], np.float32)
    np.testing.assert_array_equal(nms(boxes, np.array([0.9, 0.8, 0.7]), 0.1), [0, 1, 2])


def test_vmap_over_images_with_padding():
    rng = np.random.default_rng(3)
    boxes = np.stack([random_boxes(rng, 40) for _ in range(3)])
    scores = rng.uniform(size=(3, 40)).astype(np.float32)
    valid = np.arange(40)[None, :] < np.array([[40], [25], [0]])
    out = jax.jit(jax.vmap(lambda b, s, v: nms(b, s, 0.5, 30, valid=v, tile_size=8)))(
        boxes, scores, valid)
    for i in range(3):
        n = int(valid[i].sum())
        np.testing.assert_array_equal(kept(out[i]), greedy_nms(boxes[i, :n], scores[i, :n], 0.5)[:30])


def test_batched_nms_separates_classes():
    box = [10.0, 10.0, 20.0, 20.0]
    boxes = np.array([box, box, box, [-30.0, -30.0, -20.0, -20.0], [-30.0, -30.0, -20.0, -20.0]],
                     np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5], np.float32)
    idxs = np.array([1, 2, 1, 2, 7])
    # Same box in classes 1 and 2 both survive; the second class-1 copy does not. Negative
    # coordinates (where an offset trick with max coordinate + 1 can mix classes) stay apart.
    np.testing.assert_array_equal(batched_nms(boxes, scores, idxs, 0.5), [0, 1, 3, 4, -1])
    np.testing.assert_array_equal(nms(boxes, scores, 0.5), [0, 3, -1, -1, -1])


@pytest.mark.parametrize("tile_size", [8, 256])
def test_batched_nms_matches_per_class_reference(tile_size):
    rng = np.random.default_rng(tile_size)
    boxes = random_boxes(rng, 120)
    scores = rng.integers(0, 8, 120).astype(np.float32)
    idxs = rng.integers(0, 3, 120)
    valid = rng.uniform(size=120) < 0.9
    expected = greedy_nms(boxes[valid], scores[valid], 0.4, idxs[valid])
    expected = np.nonzero(valid)[0][expected]
    assert len(expected) > 50 and len(set(idxs[expected])) == 3
    out = batched_nms(boxes, scores, idxs, 0.4, 50, valid=valid, tile_size=tile_size)
    np.testing.assert_array_equal(kept(out), expected[:50])


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="boxes must be"):
        nms(np.zeros((3, 5)), np.zeros(3), 0.5)
    with pytest.raises(ValueError, match="scores must be"):
        nms(np.zeros((3, 4)), np.zeros(2), 0.5)
    with pytest.raises(ValueError, match="idxs must be"):
        batched_nms(np.zeros((3, 4)), np.zeros(3), np.zeros(2, int), 0.5)
