"""Box formats, IoU/GIoU, clipping and the box coder vs float64 numpy formulas in the test."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlx_research.ops.box_coder import BoxCoder
from mlx_research.ops import boxes as boxes_lib

# One jit program per call shape (eager dispatch would compile every primitive separately).
box_area = jax.jit(boxes_lib.box_area, static_argnames="fmt")
box_convert = jax.jit(boxes_lib.box_convert, static_argnames=("in_fmt", "out_fmt"))
box_iou = jax.jit(boxes_lib.box_iou, static_argnames="fmt")
generalized_box_iou = jax.jit(boxes_lib.generalized_box_iou)
clip_boxes_to_image = jax.jit(boxes_lib.clip_boxes_to_image)
remove_small_boxes = jax.jit(boxes_lib.remove_small_boxes)

FORMATS = ("xyxy", "xywh", "cxcywh")


# ----------------------------------------------------------------------------- references
def np_to_xyxy(b, fmt):
    b = np.asarray(b, np.float64)
    if fmt == "xyxy":
        return b
    if fmt == "xywh":
        return np.stack([b[..., 0], b[..., 1], b[..., 0] + b[..., 2], b[..., 1] + b[..., 3]], -1)
    cx, cy, w, h = np.moveaxis(b, -1, 0)
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def np_from_xyxy(b, fmt):
    b = np.asarray(b, np.float64)
    x1, y1, x2, y2 = np.moveaxis(b, -1, 0)
    if fmt == "xyxy":
        return b
    if fmt == "xywh":
        return np.stack([x1, y1, x2 - x1, y2 - y1], -1)
    return np.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], -1)


def np_iou_giou(b1, b2):
    """Pairwise IoU and GIoU by explicit loops over pairs (float64); 0/0 -> 0."""
    b1 = np.asarray(b1, np.float64)
    b2 = np.asarray(b2, np.float64)
    iou = np.zeros((len(b1), len(b2)))
    giou = np.zeros((len(b1), len(b2)))
    for i, (a0, a1, a2, a3) in enumerate(b1):
        for j, (c0, c1, c2, c3) in enumerate(b2):
            iw = max(0.0, min(a2, c2) - max(a0, c0))
            ih = max(0.0, min(a3, c3) - max(a1, c1))
            inter = iw * ih
            union = (a2 - a0) * (a3 - a1) + (c2 - c0) * (c3 - c1) - inter
            hull = (max(a2, c2) - min(a0, c0)) * (max(a3, c3) - min(a1, c1))
            iou[i, j] = inter / union if union != 0 else 0.0
            giou[i, j] = iou[i, j] - ((hull - union) / hull if hull != 0 else 0.0)
    return iou, giou


def random_boxes(rng, n, degenerate_every=3):
    """xyxy boxes partly outside a 50x40 image; every few a zero width or height or a point."""
    xy = rng.uniform(-10, 50, (n, 2))
    wh = rng.uniform(0.5, 30, (n, 2))
    wh[::degenerate_every, 0] = 0.0
    wh[1::degenerate_every * 2, 1] = 0.0
    return np.concatenate([xy, xy + wh], -1).round(1).astype(np.float32)


# Hand-picked pairs: identical, disjoint, contained, touching edge, points, zero-width lines.
SPECIAL = np.array(
    [
        [0, 0, 10, 10],
        [0, 0, 10, 10],  # identical to row 0
        [20, 20, 30, 25],  # disjoint from row 0
        [2, 3, 6, 8],  # contained in row 0
        [10, 0, 20, 10],  # touches row 0 along x = 10
        [4, 4, 4, 4],  # point inside row 0
        [4, 4, 4, 4],  # the same point
        [5, 0, 5, 10],  # zero-width line
        [5, 12, 5, 20],  # zero-width line on the same x, disjoint
    ],
    np.float32,
)


# ----------------------------------------------------------------------------- formats
def test_box_convert_values_and_round_trips():
    xyxy = np.array([[1.0, 2.0, 5.0, 10.0], [-3.0, 0.0, -3.0, 4.0]], np.float32)
    expected = {
        "xyxy": xyxy,
        "xywh": np.array([[1, 2, 4, 8], [-3, 0, 0, 4]], np.float32),
        "cxcywh": np.array([[3, 6, 4, 8], [-3, 2, 0, 4]], np.float32),
    }
    for in_fmt in FORMATS:
        for out_fmt in FORMATS:
            got = box_convert(expected[in_fmt], in_fmt=in_fmt, out_fmt=out_fmt)
            np.testing.assert_allclose(
                got, expected[out_fmt], atol=1e-6, err_msg=f"{in_fmt}->{out_fmt}"
            )
    # Round trips on random boxes with leading batch dims [2, 5, 4].
    boxes = random_boxes(np.random.default_rng(0), 10).reshape(2, 5, 4)
    for fmt in FORMATS[1:]:
        converted = box_convert(boxes, in_fmt="xyxy", out_fmt=fmt)
        assert converted.shape == (2, 5, 4)
        np.testing.assert_allclose(converted, np_from_xyxy(boxes, fmt), rtol=1e-6, atol=1e-5)
        back = box_convert(converted, in_fmt=fmt, out_fmt="xyxy")
        np.testing.assert_allclose(back, boxes, rtol=1e-6, atol=1e-5)
    with pytest.raises(ValueError, match="unsupported box format"):
        boxes_lib.box_convert(boxes, "xyxy", "xywhr")


def test_box_area_all_formats():
    boxes = random_boxes(np.random.default_rng(1), 7)
    b = boxes.astype(np.float64)
    ref = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    for fmt in FORMATS:
        area = box_area(np_from_xyxy(boxes, fmt).astype(np.float32), fmt=fmt)
        np.testing.assert_allclose(area, ref, rtol=1e-5, atol=1e-4)
    # torchvision does not clamp inverted boxes.
    np.testing.assert_allclose(box_area(np.array([[4.0, 0.0, 1.0, 2.0]])), [-6.0])
    assert box_area(np.zeros((0, 4), np.float32)).shape == (0,)


# ----------------------------------------------------------------------------- IoU / GIoU
def test_box_iou_special_pairs():
    iou = np.asarray(box_iou(SPECIAL, SPECIAL))
    assert np.isfinite(iou).all()
    assert iou[0, 1] == 1.0 and iou[0, 0] == 1.0
    assert iou[0, 2] == 0.0 and iou[0, 4] == 0.0
    np.testing.assert_allclose(iou[0, 3], 20.0 / 100.0, rtol=1e-6)
    # Zero-area boxes: union 0 against themselves/each other (torchvision NaN) -> 0.
    assert iou[5, 6] == 0.0 and iou[7, 7] == 0.0 and iou[7, 8] == 0.0 and iou[5, 0] == 0.0
    np.testing.assert_allclose(iou, np_iou_giou(SPECIAL, SPECIAL)[0], atol=1e-6)
    assert iou.dtype == np.float32


@pytest.mark.parametrize("fmt", FORMATS)
def test_box_iou_random_matches_reference(fmt):
    rng = np.random.default_rng(2)
    b1 = np.concatenate([random_boxes(rng, 9), SPECIAL])
    b2 = random_boxes(rng, 6, degenerate_every=2)
    b2 = np.concatenate([b2, b1[::3] + np.float32(0.5)])  # overlapping pairs
    ref, _ = np_iou_giou(b1, b2)
    assert (ref > 0.05).sum() >= 5  # the test exercises real overlaps
    in1 = np_from_xyxy(b1, fmt).astype(np.float32)
    got = box_iou(in1, np_from_xyxy(b2, fmt).astype(np.float32), fmt=fmt)
    assert got.shape == (len(b1), len(b2))
    np.testing.assert_allclose(got, ref, atol=2e-6 if fmt == "xyxy" else 2e-5)


def test_generalized_box_iou_special_and_random():
    giou = np.asarray(generalized_box_iou(SPECIAL, SPECIAL))
    assert np.isfinite(giou).all()
    assert giou[0, 1] == 1.0
    # Disjoint: IoU 0, hull [0,0,30,25] = 750, union 150.
    np.testing.assert_allclose(giou[0, 2], -(750.0 - 150.0) / 750.0, rtol=1e-6)
    # Same point / collinear lines: hull area 0 (torchvision NaN) -> 0.
    assert giou[5, 6] == 0.0 and giou[7, 8] == 0.0
    np.testing.assert_allclose(giou, np_iou_giou(SPECIAL, SPECIAL)[1], atol=1e-6)

    rng = np.random.default_rng(3)
    b1, b2 = random_boxes(rng, 8), random_boxes(rng, 5)
    b2 = np.concatenate([b2, b1[:4] + np.float32(1.0)])
    got = generalized_box_iou(b1, b2)
    np.testing.assert_allclose(got, np_iou_giou(b1, b2)[1], atol=2e-6)
    assert (np.asarray(got) >= -1).all() and (np.asarray(got) <= 1).all()


def test_iou_giou_gradients_finite_on_degenerate_boxes():
    def loss(b):
        return box_iou(b, b).sum() + generalized_box_iou(b, b).sum()

    grad = jax.jit(jax.grad(loss))(jnp.asarray(SPECIAL))
    assert np.isfinite(np.asarray(grad)).all()


def test_iou_batched_and_empty():
    rng = np.random.default_rng(4)
    b1 = random_boxes(rng, 2 * 4).reshape(2, 4, 4)
    b2 = random_boxes(rng, 2 * 3).reshape(2, 3, 4)
    for fn, k in ((box_iou, 0), (generalized_box_iou, 1)):
        got = np.asarray(fn(b1, b2))
        assert got.shape == (2, 4, 3)
        for i in range(2):
            np.testing.assert_allclose(got[i], np_iou_giou(b1[i], b2[i])[k], atol=2e-6)
        # Leading dims broadcast: [1, 4, 4] against [2, 3, 4].
        got = np.asarray(fn(b1[:1], b2))
        np.testing.assert_allclose(got[1], np_iou_giou(b1[0], b2[1])[k], atol=2e-6)
        assert fn(np.zeros((0, 4), np.float32), b2[0]).shape == (0, 3)
        assert fn(b1[0], np.zeros((0, 4), np.float32)).shape == (4, 0)


# ----------------------------------------------------------------------------- clip / small
def test_clip_boxes_to_image_static_and_traced_size():
    boxes = np.array(
        [[-5, -3, 70, 20], [10, 45, 30, 60], [-9, -9, -1, -2], [1, 2, 3, 4]], np.float32
    )
    height, width = 40, 64  # non-square: swapping height and width must show

    def np_clip(b, h, w):
        b = np.asarray(b, np.float64).copy()
        b[:, 0::2] = np.clip(b[:, 0::2], 0, w)
        b[:, 1::2] = np.clip(b[:, 1::2], 0, h)
        return b

    static = boxes_lib.clip_boxes_to_image(boxes, (height, width))
    np.testing.assert_array_equal(static, np_clip(boxes, height, width))
    sizes = np.array([[height, width], [50, 25]], np.int32)  # per-example image_hw under vmap
    got = jax.jit(jax.vmap(boxes_lib.clip_boxes_to_image, (None, 0)))(boxes, sizes)
    for i, (h, w) in enumerate(sizes):
        np.testing.assert_array_equal(got[i], np_clip(boxes, h, w))
    assert got.dtype == jnp.float32


def test_remove_small_boxes_mask():
    boxes = np.array(
        [[0, 0, 2, 2], [0, 0, 1.9, 5], [0, 0, 5, 1.9], [3, 3, 5, 5], [0, 0, 0, 0], [1, 1, 9, 9]],
        np.float32,
    )
    keep = remove_small_boxes(boxes, min_size=2.0)
    np.testing.assert_array_equal(keep, [True, False, False, True, False, True])  # >= keeps 2.0
    batched = remove_small_boxes(np.stack([boxes, boxes[::-1]]), 2.0)
    np.testing.assert_array_equal(batched[1], np.asarray(keep)[::-1])
    assert remove_small_boxes(np.zeros((0, 4), np.float32), 1.0).shape == (0,)


# ----------------------------------------------------------------------------- box coder
def np_encode(gt, prop, weights):
    gt, prop = np.asarray(gt, np.float64), np.asarray(prop, np.float64)
    wx, wy, ww, wh = weights
    pw, ph = prop[:, 2] - prop[:, 0], prop[:, 3] - prop[:, 1]
    gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    pcx, pcy = prop[:, 0] + pw / 2, prop[:, 1] + ph / 2
    gcx, gcy = gt[:, 0] + gw / 2, gt[:, 1] + gh / 2
    return np.stack(
        [wx * (gcx - pcx) / pw, wy * (gcy - pcy) / ph, ww * np.log(gw / pw), wh * np.log(gh / ph)],
        1,
    )


def np_decode(codes, boxes, weights, clip=math.log(1000.0 / 16)):
    codes, boxes = np.asarray(codes, np.float64), np.asarray(boxes, np.float64)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx, cy = boxes[:, 0] + w / 2, boxes[:, 1] + h / 2
    dx, dy = codes[:, 0] / weights[0], codes[:, 1] / weights[1]
    dw = np.minimum(codes[:, 2] / weights[2], clip)
    dh = np.minimum(codes[:, 3] / weights[3], clip)
    pcx, pcy, pw, ph = cx + dx * w, cy + dy * h, w * np.exp(dw), h * np.exp(dh)
    return np.stack([pcx - pw / 2, pcy - ph / 2, pcx + pw / 2, pcy + ph / 2], 1)


def positive_boxes(rng, n):
    xy = rng.uniform(-20, 100, (n, 2))
    return np.concatenate([xy, xy + rng.uniform(1, 60, (n, 2))], 1).astype(np.float32)


@pytest.mark.parametrize(
    "weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0), (2.0, 3.0, 4.0, 7.0)]
)
def test_box_coder_encode_decode_reference_and_round_trip(weights):
    rng = np.random.default_rng(5)
    gt, anchors = positive_boxes(rng, 12), positive_boxes(rng, 12)
    coder = BoxCoder(weights)
    codes = jax.jit(coder.encode)(gt, anchors)
    np.testing.assert_allclose(codes, np_encode(gt, anchors, weights), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jax.jit(coder.decode)(codes, anchors), gt, rtol=1e-5, atol=1e-4)
    rand_codes = rng.normal(0, 1.5, (12, 4)).astype(np.float32) * np.float32(weights)
    np.testing.assert_allclose(
        jax.jit(coder.decode)(rand_codes, anchors),
        np_decode(rand_codes, anchors, weights),
        rtol=1e-5,
        atol=1e-4,
    )


def test_box_coder_clamps_only_large_dw_dh():
    anchor = np.array([[10.0, 20.0, 18.0, 24.0]], np.float32)  # w 8, h 4, centre (14, 22)
    decode = jax.jit(BoxCoder((10.0, 10.0, 5.0, 5.0)).decode)
    huge = decode(np.array([[0.0, 0.0, 5 * 100.0, 5 * 3.0]], np.float32), anchor)
    w, h = float(huge[0, 2] - huge[0, 0]), float(huge[0, 3] - huge[0, 1])
    np.testing.assert_allclose(w, 8 * 1000.0 / 16, rtol=1e-6)  # exp(clip) * w exactly
    np.testing.assert_allclose(h, 4 * math.exp(3.0), rtol=1e-6)  # below the clip: untouched
    centre_x2, centre_y2 = huge[0, 0] + huge[0, 2], huge[0, 1] + huge[0, 3]
    np.testing.assert_allclose([centre_x2, centre_y2], [28.0, 44.0], rtol=1e-6)
    # Large negative codes are not clamped (torchvision clamps from above only).
    tiny = decode(np.array([[0.0, 0.0, -5 * 20.0, 0.0]], np.float32), anchor)
    assert float(tiny[0, 2] - tiny[0, 0]) < 1e-6
    codes = np.array([[0.0, 0.0, 3.0, 0.5]], np.float32)
    custom = jax.jit(BoxCoder(bbox_xform_clip=1.0).decode)(codes, anchor)
    np.testing.assert_allclose(float(custom[0, 2] - custom[0, 0]), 8 * math.e, rtol=1e-6)


def test_box_coder_broadcasts_class_specific_codes():
    rng = np.random.default_rng(6)
    proposals = positive_boxes(rng, 5)
    codes = rng.normal(0, 1, (5, 3 * 4)).astype(np.float32)  # [N, C * 4], C = 3
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    got = jax.jit(coder.decode)(codes.reshape(5, 3, 4), proposals[:, None, :])
    assert got.shape == (5, 3, 4)
    for c in range(3):
        ref = np_decode(codes[:, 4 * c:4 * c + 4], proposals, coder.weights)
        np.testing.assert_allclose(got[:, c], ref, rtol=1e-5, atol=1e-4)
    empty = np.zeros((0, 4), np.float32)
    assert jax.jit(BoxCoder().encode)(empty, empty).shape == (0, 4)
