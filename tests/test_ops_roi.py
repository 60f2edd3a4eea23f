"""RoI Align / RoI pool / multi-scale RoI Align against float64 numpy loops that follow
torchvision's CPU kernels (one RoI, bin and sample at a time)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlx_research.ops.roi import infer_scale, map_levels, multiscale_roi_align, roi_align
from mlx_research.ops.roi_pool import roi_pool


def ref_roi_align(feat, rois, oh, ow, scale, sampling_ratio, aligned):
    """torchvision roi_align_kernel.cpp, NHWC, float64."""
    feat = np.asarray(feat, np.float64)
    _, height, width, channels = feat.shape
    out = np.zeros((len(rois), oh, ow, channels))
    g = sampling_ratio
    for n, roi in enumerate(np.asarray(rois, np.float64)):
        b = int(roi[0])
        off = 0.5 if aligned else 0.0
        x1, y1, x2, y2 = (v * scale - off for v in roi[1:])
        roi_w, roi_h = x2 - x1, y2 - y1
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_h, bin_w = roi_h / oh, roi_w / ow
        for ph in range(oh):
            for pw in range(ow):
                acc = np.zeros(channels)
                for iy in range(g):
                    y = y1 + ph * bin_h + (iy + 0.5) * bin_h / g
                    for ix in range(g):
                        x = x1 + pw * bin_w + (ix + 0.5) * bin_w / g
                        if y < -1 or y > height or x < -1 or x > width:
                            continue
                        y, x = max(y, 0.0), max(x, 0.0)
                        y_lo, x_lo = int(y), int(x)
                        if y_lo >= height - 1:
                            y_lo = y_hi = height - 1
                            y = float(y_lo)
                        else:
                            y_hi = y_lo + 1
                        if x_lo >= width - 1:
                            x_lo = x_hi = width - 1
                            x = float(x_lo)
                        else:
                            x_hi = x_lo + 1
                        ly, lx = y - y_lo, x - x_lo
                        acc += ((1 - ly) * (1 - lx) * feat[b, y_lo, x_lo]
                                + (1 - ly) * lx * feat[b, y_lo, x_hi]
                                + ly * (1 - lx) * feat[b, y_hi, x_lo]
                                + ly * lx * feat[b, y_hi, x_hi])
                out[n, ph, pw] = acc / (g * g)
    return out


def ref_roi_pool(feat, rois, oh, ow, scale):
    """torchvision roi_pool_kernel.cpp, NHWC. The kernel's coordinate arithmetic is float32
    (numpy float32 scalars round each operation the same way); C round is half away from 0."""
    feat = np.asarray(feat, np.float64)
    _, height, width, channels = feat.shape
    out = np.zeros((len(rois), oh, ow, channels))
    f32 = np.float32

    def c_round(v):
        return int(math.copysign(math.floor(abs(v) + 0.5), v))

    for n, roi in enumerate(np.asarray(rois, np.float32)):
        b = int(roi[0])
        x1, y1, x2, y2 = (c_round(f32(v) * f32(scale)) for v in roi[1:])
        roi_w, roi_h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
        bin_h, bin_w = f32(roi_h) / f32(oh), f32(roi_w) / f32(ow)
        for ph in range(oh):
            for pw in range(ow):
                hs = min(max(math.floor(f32(ph) * bin_h) + y1, 0), height)
                he = min(max(math.ceil(f32(ph + 1) * bin_h) + y1, 0), height)
                ws = min(max(math.floor(f32(pw) * bin_w) + x1, 0), width)
                we = min(max(math.ceil(f32(pw + 1) * bin_w) + x1, 0), width)
                if he > hs and we > ws:
                    out[n, ph, pw] = feat[b, hs:he, ws:we].max(axis=(0, 1))
    return out


def make_rois(rng, k, batch, extent, max_size):
    """Random RoIs over [-extent/4, extent]: inside, on the edges, partly and fully outside;
    the first fifth are tiny (< 1 pixel) or degenerate."""
    xy = rng.uniform(-extent / 4, extent, (k, 2))
    wh = rng.uniform(0.0, max_size, (k, 2))
    wh[: k // 5] = rng.uniform(0.0, 0.8, (k // 5, 2))
    wh[0] = 0.0  # a point
    boxes = np.concatenate([xy, xy + wh], 1)
    return np.concatenate([rng.integers(0, batch, (k, 1)), boxes], 1).astype(np.float32)


@pytest.fixture(scope="module")
def feat():
    return np.random.default_rng(0).normal(size=(3, 9, 11, 4)).astype(np.float32)


EDGE_ROIS = np.array([
    [0, 0, 0, 11, 9],            # the whole map, edge to edge
    [1, 8, 6, 11, 9],            # corner at the far edges
    [2, -3, -2, 2, 3],           # partly outside, top-left
    [1, 9.5, 7.5, 14, 12],       # partly outside, bottom-right (samples beyond H, W)
    [0, 13, 2, 18, 5],           # fully outside on the right: zeros
    [2, -9, -9, -2.5, -3],       # fully outside top-left: zeros
    [1, 4.2, 3.3, 4.2, 3.3],     # degenerate point
    [0, 2.0, 2.0, 2.3, 2.1],     # tiny
], np.float32)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("scale,sampling_ratio,size", [(1.0, 2, (3, 4)), (0.5, 3, 2),
                                                       (0.25, 1, (2, 5))])
def test_roi_align_matches_kernel_reference(feat, aligned, scale, sampling_ratio, size):
    rng = np.random.default_rng(int(scale * 8) + sampling_ratio)
    rois = make_rois(rng, 30, 3, 11 / scale, 8 / scale)
    edge = EDGE_ROIS.copy()
    edge[:, 1:] /= scale  # the same places on the feature map
    rois = np.concatenate([edge, rois])
    oh, ow = (size, size) if isinstance(size, int) else size
    out = roi_align(feat, rois, size, spatial_scale=scale, sampling_ratio=sampling_ratio,
                    aligned=aligned)
    assert out.shape == (len(rois), oh, ow, 4) and out.dtype == jnp.float32
    expected = ref_roi_align(feat, rois, oh, ow, scale, sampling_ratio, aligned)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=2e-6)
    assert np.all(expected[4:6] == 0) and np.abs(expected[:4]).min(axis=(1, 2, 3)).max() > 0


def test_roi_align_samples_exactly_on_the_boundary_count(feat):
    # One sample per RoI at its centre: y = H, x = W (inside: clamped to the last pixel) and
    # y = x = -1 (inside: clamped to 0); just beyond either contributes 0.
    rois = np.array([[0, 10, 8, 12, 10], [1, -2, -2, 0, 0], [0, 10.5, 8, 12.5, 10],
                     [1, -2, -2.5, 0, -0.5]], np.float32)
    out = np.asarray(roi_align(feat, rois, 1, sampling_ratio=1))[:, 0, 0]
    np.testing.assert_array_equal(out, [feat[0, 8, 10], feat[1, 0, 0], 0 * feat[0, 0, 0],
                                        0 * feat[0, 0, 0]])
    np.testing.assert_allclose(out, ref_roi_align(feat, rois, 1, 1, 1.0, 1, False)[:, 0, 0])


def test_roi_align_batch_index_chunks_and_jit(feat):
    rng = np.random.default_rng(5)
    rois = make_rois(rng, 21, 3, 11, 8)
    expected = ref_roi_align(feat, rois, 2, 2, 1.0, 2, False)
    f = jax.jit(lambda x, r: roi_align(x, r, 2, chunk_size=4))  # 6 chunks, last one padded
    np.testing.assert_allclose(np.asarray(f(feat, rois)), expected, rtol=1e-5, atol=2e-6)
    # Each RoI reads its own image: moving a RoI to another image changes only its output.
    moved = rois.copy()
    i = int(np.argmax(np.abs(expected).min(axis=(1, 2, 3))))
    moved[i, 0] = (moved[i, 0] + 1) % 3
    diff = np.abs(np.asarray(f(feat, moved)) - expected).max(axis=(1, 2, 3))
    assert diff[i] > 1e-3 and np.all(np.delete(diff, i) < 1e-5)


@pytest.mark.slow
def test_roi_align_gradient_is_the_kernel_adjoint():
    rng = np.random.default_rng(7)
    feat = rng.normal(size=(2, 4, 5, 1)).astype(np.float32)
    rois = np.array([[1, -0.7, 0.4, 3.6, 4.5], [0, 1.2, 0.3, 2.2, 2.9]], np.float32)
    cot = rng.normal(size=(2, 2, 3, 1))
    grad = jax.grad(lambda f: jnp.sum(roi_align(f, rois, (2, 3), aligned=True) * cot))(feat)
    # The op is linear in the features: d<out, cot>/dF[i] = <ref(e_i), cot>.
    expected = np.zeros(feat.shape)
    for i in np.ndindex(feat.shape):
        basis = np.zeros(feat.shape)
        basis[i] = 1.0
        expected[i] = np.sum(ref_roi_align(basis, rois, 2, 3, 1.0, 2, True) * cot)
    np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-5, atol=1e-6)


def test_roi_align_empty_rois_and_adaptive_sampling_error(feat):
    assert roi_align(feat, np.zeros((0, 5), np.float32), 7).shape == (0, 7, 7, 4)
    with pytest.raises(ValueError, match="adaptive sampling_ratio"):
        roi_align(feat, EDGE_ROIS, 7, sampling_ratio=0)
    with pytest.raises(ValueError, match=r"rois must be \[K, 5\]"):
        roi_align(feat, EDGE_ROIS[:, 1:], 7)


@pytest.mark.parametrize("scale,size", [(1.0, (3, 4)), (0.5, 7), (0.3, (2, 5))])
def test_roi_pool_matches_kernel_reference(feat, scale, size):
    rng = np.random.default_rng(11)
    rois = make_rois(rng, 30, 3, 11 / scale, 10 / scale)
    edge = EDGE_ROIS.copy()
    edge[:, 1:] /= scale
    rois = np.concatenate([edge, rois])
    oh, ow = (size, size) if isinstance(size, int) else size
    out = roi_pool(feat, rois, size, spatial_scale=scale)
    assert out.shape == (len(rois), oh, ow, 4)
    expected = ref_roi_pool(feat, rois, oh, ow, scale)
    np.testing.assert_array_equal(np.asarray(out), expected.astype(np.float32))


@pytest.mark.slow
def test_roi_pool_bin_edges_rounding_and_special_values():
    feat = np.arange(2 * 20 * 24, dtype=np.float32).reshape(1, 20, 24, 2) % 23
    # Width 11 in 7 bins: 7 * float32(11 / 7) must round back to 11 (bin [17, 19), not [17, 20)).
    # x1 = 2.5 rounds half away from zero to 3; x1 = -0.5 to -1 (then clipped to 0).
    rois = np.array([[0, 8, 8.8, 18, 16.2], [0, 2.5, 1.5, 9.5, 8], [0, -0.5, -1.5, 3, 2]],
                    np.float32)
    np.testing.assert_array_equal(np.asarray(roi_pool(feat, rois, 7)),
                                  ref_roi_pool(feat, rois, 7, 7, 1.0))
    # NaN is skipped and -inf gives -FLT_MAX (the kernel's '>' scan starting at -FLT_MAX).
    special = np.full((1, 2, 2, 1), -np.inf, np.float32)
    special[0, 0, 0, 0] = np.nan
    out = np.asarray(roi_pool(special, np.array([[0, 0, 0, 1, 1]], np.float32), 1))
    assert out[0, 0, 0, 0] == -np.finfo(np.float32).max


def test_roi_pool_gradient_goes_to_the_max(feat):
    rois = np.array([[1, 2, 1, 6, 5]], np.float32)
    grad = jax.grad(lambda f: jnp.sum(roi_pool(f, rois, 1)))(feat)
    expected = np.zeros(feat.shape)
    window = feat[1, 1:6, 2:7]
    for c in range(4):
        y, x = np.unravel_index(np.argmax(window[..., c]), window.shape[:2])
        expected[1, 1 + y, 2 + x, c] = 1.0
    np.testing.assert_array_equal(np.asarray(grad), expected)


def test_map_levels_follows_the_fpn_formula():
    # 111.99997: log2 just below -1; the + eps (after the log) lifts it to level 3.
    sides = np.array([1.0, 20.0, 111.9, 111.99997, 112.0, 150.0, 224.0, 447.0, 448.0, 1000.0])
    boxes = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides], 1)
    boxes = np.concatenate([boxes, [[10, 10, 20, 5]]]).astype(np.float32)  # negative area
    expected = np.clip(np.floor(4 + np.log2(sides / 224) + 1e-6), 2, 5) - 2
    np.testing.assert_array_equal(np.asarray(map_levels(boxes, 2, 5)),
                                  np.concatenate([expected, [-1]]))
    assert [infer_scale(s, 256) for s in (64, 32, 16, 8, 90)] == [0.25, 0.125, 0.0625, 0.03125, 0.25]


@pytest.mark.slow
def test_multiscale_roi_align_pools_each_roi_from_its_level():
    rng = np.random.default_rng(13)
    image = (64, 80)
    levels = [rng.normal(size=(2, 64 // s, 80 // s, 3)).astype(np.float32) for s in (4, 8, 16)]
    # k_min = 2, k_max = 4: sides < 112 -> level 2, [112, 224) -> 3, >= 224 -> 4 (clamped).
    rois = np.array([
        [0, 3, 4, 13, 20],       # small: level 2 (stride 4)
        [1, 10, 8, 60, 50],      # small: level 2
        [1, -40, -30, 90, 120],  # side ~140: level 3 (stride 8)
        [0, 0, 0, 64, 250],      # side ~126: level 3
        [0, -100, -100, 200, 150],  # side ~274: level 4 (stride 16), mostly outside
        [1, 5, 5, 5, 5],         # empty: level 2
    ], np.float32)
    out = multiscale_roi_align(levels, rois, image, output_size=(2, 3))
    assert out.shape == (6, 2, 3, 3)
    want_level = [0, 0, 1, 1, 2, 0]
    np.testing.assert_array_equal(np.asarray(map_levels(rois[:, 1:], 2, 4)), want_level)
    for i, level in enumerate(want_level):
        expected = ref_roi_align(levels[level], rois[i:i + 1], 2, 3, 0.25 / 2**level, 2, False)
        np.testing.assert_allclose(np.asarray(out[i:i + 1]), expected, rtol=1e-5, atol=2e-6)
    with pytest.raises(ValueError, match="consecutive"):
        multiscale_roi_align([levels[0], levels[2]], rois, image)
