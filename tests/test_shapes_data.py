"""Tests for mlx_research.data.shapes and mlx_research.data.detection_transforms."""

import time
from fractions import Fraction

import numpy as np
import pytest

from mlx_research.data import shapes
from mlx_research.data.detection_transforms import DetectionTransform, horizontal_flip
from mlx_research.data.pipeline import make_train_iterator
from mlx_research.data.shapes import CLASS_NAMES, SyntheticShapes, render_example, shape_mask

# ---------------------------------------------------------------- synthetic shapes


def _assert_examples_equal(a, b):
    assert a.keys() == b.keys() == {"image", "boxes", "labels", "crowd"}
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_class_names():
    assert CLASS_NAMES == ("circle", "square", "triangle")
    assert SyntheticShapes(1).num_classes == 3


def test_raw_examples_follow_the_contract():
    ds = SyntheticShapes(20, image_size=64, max_objects=4, min_size=8, max_size=24, seed=3)
    assert len(ds) == 20 and list(ds.image_ids) == list(range(1, 21))
    for i in range(len(ds)):
        ex = ds[i]
        n = len(ex["labels"])
        assert ex["image"].shape == (64, 64, 3) and ex["image"].dtype == np.uint8
        assert ex["boxes"].shape == (n, 4) and ex["boxes"].dtype == np.float32
        assert ex["labels"].dtype == np.int32 and ex["crowd"].dtype == bool
        assert n <= 4 and not ex["crowd"].any()
        assert set(ex["labels"].tolist()) <= {1, 2, 3}
        b = ex["boxes"]
        assert np.all(b >= 0) and np.all(b <= 64)
        assert np.all(b[:, 2] > b[:, 0]) and np.all(b[:, 3] > b[:, 1])
        assert np.all(b[:, 2:] - b[:, :2] <= 24)
        assert np.all(b == np.round(b))  # pixel edges


def test_example_depends_only_on_seed_split_index():
    a = SyntheticShapes(10, seed=1)
    a_again = SyntheticShapes(1000, seed=1)
    for i in range(10):
        _assert_examples_equal(a[i], a_again[i])
    _assert_examples_equal(a[-1], a[9])
    other_seed, other_split = SyntheticShapes(10, seed=2), SyntheticShapes(10, seed=1, split="eval")
    _assert_examples_equal(other_split[2], SyntheticShapes(3, seed=1, split="val")[2])
    test_split = SyntheticShapes(3, seed=1, split="test")
    for i in range(3):
        assert not np.array_equal(a[i]["image"], other_seed[i]["image"])
        assert not np.array_equal(test_split[i]["image"], other_split[i]["image"])
        assert not np.array_equal(a[i]["image"], other_split[i]["image"])
        assert not np.array_equal(a[i]["image"], a[i + 1]["image"])


def test_example_is_the_documented_draw():
    ds = SyntheticShapes(5, image_size=40, max_objects=3, min_size=6, max_size=20, seed=9,
                         split="eval")
    for i in range(5):
        rng = np.random.default_rng([9, 1, i])
        _assert_examples_equal(ds[i], render_example(rng, 40, 3, 6, 20, 0.1))


def test_index_out_of_range():
    with pytest.raises(IndexError):
        SyntheticShapes(3)[3]
    with pytest.raises(IndexError):
        SyntheticShapes(3)[-4]


@pytest.mark.parametrize(
    "kwargs",
    [dict(split="valid"), dict(image_size=4), dict(min_size=3), dict(min_size=30, max_size=20),
     dict(max_size=200), dict(max_objects=-1), dict(seed=-1), dict(empty_fraction=1.5)],
)
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        SyntheticShapes(5, **kwargs)


def _tight_box(mask):
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


@pytest.mark.parametrize("label", [1, 2, 3])
@pytest.mark.parametrize("size", [4, 7, 12, 25])
def test_shape_masks(label, size):
    mask = shape_mask(label, size)
    assert mask.shape == (size, size) and mask.dtype == bool
    np.testing.assert_array_equal(mask, mask[:, ::-1])  # all three are left-right symmetric
    ys, xs = np.mgrid[:size, :size] + 0.5
    if label == 1:  # float64 disc through pixel centres
        expected = np.hypot(xs - size / 2, ys - size / 2) <= size / 2
    elif label == 2:
        expected = np.ones((size, size), bool)
    else:  # below both slanted edges through (0, size), (size / 2, 0) and (size, size)
        left = ys >= size - 2 * xs  # line from (0, size) to (size/2, 0)
        right = ys >= 2 * xs - size  # line from (size/2, 0) to (size, size)
        expected = left & right
    np.testing.assert_array_equal(mask, expected)
    if label != 3:
        assert _tight_box(mask) == [0, 0, size, size]
    assert _tight_box(mask)[3] == size and _tight_box(mask)[0] == 0


def test_boxes_are_tight_around_visible_pixels(monkeypatch):
    """On a black background, the pixels of each object's colour (a second algorithm) span
    exactly its box, also when later objects occlude earlier ones."""
    monkeypatch.setattr(
        shapes, "_background", lambda rng, size: np.zeros((size, size, 3), np.uint8)
    )
    ds = SyntheticShapes(40, image_size=64, max_objects=6, min_size=8, max_size=32, seed=5)
    occluded = 0
    for i in range(len(ds)):
        ex = ds[i]
        image = ex["image"]
        colours = np.unique(image.reshape(-1, 3), axis=0)
        colours = colours[colours.any(axis=1)]  # drop black
        assert len(colours) == len(ex["labels"])  # every object stays visible
        expected = sorted(
            _tight_box(np.all(image == colour, axis=-1)) for colour in colours
        )
        assert sorted(ex["boxes"].astype(int).tolist()) == expected
        for box, label in zip(ex["boxes"].astype(int), ex["labels"], strict=True):
            x1, y1, x2, y2 = box
            # An unoccluded object fills exactly its shape's mask in its box.
            own = image[y1:y2, x1:x2]
            pixels = np.all(own == own[own.any(-1)][0], axis=-1)
            if x2 - x1 == y2 - y1 and np.array_equal(pixels, shape_mask(int(label), x2 - x1)):
                continue
            occluded += 1
    assert occluded > 0  # overlaps do happen


def test_single_shape_box_equals_its_mask(monkeypatch):
    monkeypatch.setattr(
        shapes, "_background", lambda rng, size: np.zeros((size, size, 3), np.uint8)
    )
    ds = SyntheticShapes(30, image_size=48, max_objects=1, min_size=5, max_size=30, seed=2,
                         empty_fraction=0.0)
    for i in range(len(ds)):
        ex = ds[i]
        assert len(ex["labels"]) == 1
        assert ex["boxes"][0].tolist() == _tight_box(ex["image"].any(axis=-1))


def test_objects_contrast_with_what_lies_beneath(monkeypatch):
    """The colour is the farthest of 8 random candidates from the mean beneath: on a grey
    background, far from grey (a random colour is within 100 of it with probability 0.25)."""
    monkeypatch.setattr(
        shapes, "_background", lambda rng, size: np.full((size, size, 3), 128, np.uint8)
    )
    ds = SyntheticShapes(40, image_size=32, max_objects=1, min_size=6, max_size=16,
                         empty_fraction=0.0)
    for i in range(len(ds)):
        image = ds[i]["image"].astype(float)
        x1, y1, x2, y2 = ds[i]["boxes"][0].astype(int)
        colour = image[y1:y2, x1:x2].reshape(-1, 3)
        colour = colour[np.any(colour != 128, axis=1)][0]
        assert np.linalg.norm(colour - 128) > 100


def test_class_and_count_distribution():
    ds = SyntheticShapes(400, image_size=48, max_objects=4, min_size=6, max_size=16, seed=0)
    labels, counts = [], []
    for i in range(len(ds)):
        ex = ds[i]
        labels += ex["labels"].tolist()
        counts.append(len(ex["labels"]))
    label_freq = np.bincount(labels, minlength=4)[1:] / len(labels)
    np.testing.assert_allclose(label_freq, 1 / 3, atol=0.05)
    count_freq = np.bincount(counts, minlength=5) / len(counts)
    # P(0) = 0.1 (+ skipped placements, rare here); P(k) = 0.9 / 4 for k = 1..4.
    np.testing.assert_allclose(count_freq, [0.1, 0.225, 0.225, 0.225, 0.225], atol=0.05)


def test_empty_fraction_extremes():
    always_empty = SyntheticShapes(20, empty_fraction=1.0)
    assert all(len(always_empty[i]["labels"]) == 0 for i in range(20))
    assert always_empty[0]["boxes"].shape == (0, 4)
    never_empty = SyntheticShapes(20, empty_fraction=0.0, max_objects=3)
    assert all(len(never_empty[i]["labels"]) >= 1 for i in range(20))
    assert all(len(SyntheticShapes(5, max_objects=0)[i]["labels"]) == 0 for i in range(5))


def test_background_is_textured():
    ds = SyntheticShapes(10, empty_fraction=1.0, seed=4)
    for i in range(len(ds)):
        assert len(np.unique(ds[i]["image"].reshape(-1, 3), axis=0)) > 20


def test_rendering_speed():
    ds = SyntheticShapes(10**9)
    ds[0]
    start = time.perf_counter()
    for i in range(50):
        ds[i]
    per_image = (time.perf_counter() - start) / 50
    assert per_image < 0.01, f"{per_image * 1e3:.1f} ms per 128x128 image"


# ---------------------------------------------------------------- detection transforms


def _example(image, boxes, labels=None, crowd=None):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    n = len(boxes)
    return {
        "image": image,
        "boxes": boxes,
        "labels": np.asarray(labels if labels is not None else np.arange(1, n + 1), np.int32),
        "crowd": np.asarray(crowd if crowd is not None else np.zeros(n, bool), bool),
    }


def test_eval_resize_pad_geometry_hand_computed():
    image = np.full((50, 100, 3), 200, np.uint8)
    out = DetectionTransform(64, 3, train=False)(_example(image, [[10, 5, 60, 45]], [2]))
    assert out.keys() == {"image", "boxes", "labels", "box_valid", "scale", "image_hw"}
    assert out["image"].shape == (64, 64, 3) and out["image"].dtype == np.float32
    assert out["scale"].shape == () and out["scale"].dtype == np.float32
    assert out["image_hw"].dtype == np.int32 and out["image_hw"].tolist() == [32, 64]
    assert out["scale"] == np.float32(0.64)
    np.testing.assert_allclose(out["boxes"][0], [6.4, 3.2, 38.4, 28.8], rtol=1e-6)
    np.testing.assert_array_equal(out["boxes"][1:], 0)
    assert out["labels"].tolist() == [2, 0, 0] and out["box_valid"].tolist() == [True, False, False]
    np.testing.assert_allclose(out["image"][:32], 200 / 255, rtol=1e-6)  # uniform stays uniform
    np.testing.assert_array_equal(out["image"][32:], 0)


def test_eval_clips_to_the_floored_valid_region():
    # 30 x 7 into 16: scale 16/30, width 7 * 16/30 = 3.73 -> 3 valid columns.
    image = np.full((30, 7, 3), 90, np.uint8)
    out = DetectionTransform(16, 2, train=False)(_example(image, [[1, 2, 7, 30]]))
    assert out["image_hw"].tolist() == [16, 3]
    np.testing.assert_allclose(out["boxes"][0], [16 / 30, 32 / 30, 3, 16], rtol=1e-6)
    np.testing.assert_array_equal(out["image"][:, 3:], 0)
    assert np.all(out["image"][:, :3] > 0)


def test_eval_longer_side_is_exactly_the_output_size():
    transform = DetectionTransform(37, 1, train=False)
    sizes = [(1, 1), (7, 7), (3, 59), (59, 3), (41, 29), (100, 37), (36, 38), (285, 17),
             (17, 515)]  # 285 * (37 / 285) < 37 in float64
    for height, width in sizes:
        out = transform(_example(np.ones((height, width, 3), np.uint8), []))
        long_side, short_side = max(height, width), min(height, width)
        expected_short = max(1, int(Fraction(short_side * 37, long_side)))  # exact floor
        hw = out["image_hw"].tolist()
        assert max(hw) == 37 and min(hw) == expected_short, (height, width, hw)
        assert (hw[0] >= hw[1]) == (height >= width)


def test_horizontal_flip_hand_computed_and_involution():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    boxes = np.array([[1, 2, 4, 5], [0, 0, 10, 6]], np.float32)
    flipped_image, flipped = horizontal_flip(image, boxes)
    assert flipped.tolist() == [[6, 2, 9, 5], [0, 0, 10, 6]]
    np.testing.assert_array_equal(flipped_image[:, 0], image[:, 9])
    twice_image, twice = horizontal_flip(flipped_image, flipped)
    np.testing.assert_array_equal(twice_image, image)
    np.testing.assert_array_equal(twice, boxes)


def test_train_flip_without_jitter_equals_eval_of_the_flipped_example():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (30, 45, 3), dtype=np.uint8)
    example = _example(image, [[3, 4, 20, 25], [30, 1, 44, 9]], [1, 3])
    train = DetectionTransform(32, 4, train=True, hflip_prob=1.0, scale_range=(1.0, 1.0))
    flipped_image, flipped_boxes = horizontal_flip(image, example["boxes"])
    expected = DetectionTransform(32, 4, train=False)(
        _example(flipped_image, flipped_boxes, [1, 3])
    )
    out = train(example, np.random.default_rng(7))
    for key in expected:
        np.testing.assert_array_equal(out[key], expected[key])
    np.testing.assert_allclose(out["boxes"][0], np.array([25, 4, 42, 25]) * 32 / 45, rtol=1e-6)


def _pixel_box(image):
    ys, xs = np.nonzero(image[..., 0] > 0.5)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


@pytest.mark.parametrize("seed", range(6))
def test_boxes_move_with_the_image(seed):
    """A filled rectangle is found after the transform where the transformed box says."""
    image = np.zeros((90, 160, 3), np.uint8)
    image[21:64, 37:101] = 255
    example = _example(image, [[37, 21, 101, 64]])
    transform = DetectionTransform(64, 2, train=True, hflip_prob=0.5, scale_range=(0.7, 2.5))
    out = transform(example, np.random.default_rng(seed))
    assert out["box_valid"][0]
    np.testing.assert_allclose(_pixel_box(out["image"]), out["boxes"][0], atol=1.0)
    out = DetectionTransform(64, 2, train=False)(example)
    np.testing.assert_allclose(_pixel_box(out["image"]), out["boxes"][0], atol=1.0)


def test_flips_happen_at_the_given_rate():
    image = np.zeros((10, 20, 3), np.uint8)
    transform = DetectionTransform(20, 1, train=True, hflip_prob=0.3, scale_range=(1, 1))
    rng = np.random.default_rng(0)
    flipped = [transform(_example(image, [[0, 0, 5, 5]]), rng)["boxes"][0, 0] == 15
               for _ in range(400)]
    assert abs(np.mean(flipped) - 0.3) < 0.07


def test_train_crop_clips_and_drops_boxes():
    """Scale exactly 1 into a 50 x 50 window of a 100 x 100 image whose pixels encode their
    coordinates, so the window's offset is read off the output."""
    ys, xs = np.mgrid[:100, :100]
    image = np.stack([xs, ys, np.zeros_like(xs)], axis=-1).astype(np.uint8)
    boxes = np.array([
        [0, 0, 100, 100],  # always clipped to the window
        [10, 10, 30, 30],
        [60, 55, 95, 99],
        [49.5, 20, 50.5, 80],  # 1 pixel wide
        [20, 49.5, 80, 50.5],  # 1 pixel tall
        [0, 0, 2, 2],
    ], np.float32)
    labels = [1, 2, 3, 1, 3, 2]
    example = _example(image, boxes, labels, [False, False, False, False, False, True])
    transform = DetectionTransform(50, 7, train=True, hflip_prob=0.0, scale_range=(2.0, 2.0),
                                   min_box_size=2.0)
    offsets = set()
    for seed in range(12):
        out = transform(example, np.random.default_rng(seed))
        ox, oy = np.round(out["image"][0, 0, :2] * 255).astype(int)
        offsets.add((ox, oy))
        np.testing.assert_array_equal(
            np.round(out["image"][..., 0] * 255), np.broadcast_to(np.arange(ox, ox + 50), (50, 50))
        )
        assert out["scale"] == 1.0 and out["image_hw"].tolist() == [50, 50]
        moved = np.clip(boxes.astype(np.float64) - [ox, oy, ox, oy], 0, 50)
        size = np.minimum(moved[:, 2] - moved[:, 0], moved[:, 3] - moved[:, 1])
        kept = np.flatnonzero(size >= 2.0)
        order = [k for k in kept if k != 5] + [k for k in kept if k == 5]
        n = len(order)
        np.testing.assert_allclose(out["boxes"][:n], moved[order], atol=1e-5)
        np.testing.assert_array_equal(out["boxes"][n:], 0)
        assert out["labels"].tolist() == [labels[k] for k in order] + [0] * (7 - n)
        assert out["box_valid"].tolist() == [k != 5 for k in order] + [False] * (7 - n)
    assert all(0 <= o <= 50 for xy in offsets for o in xy)
    assert len({ox for ox, _ in offsets}) >= 8 and len({oy for _, oy in offsets}) >= 8


def test_crowd_padding_and_truncation():
    image = np.zeros((20, 20, 3), np.uint8)
    boxes = [[0, 0, 5, 5], [1, 1, 4, 4], [2, 2, 9, 9], [3, 3, 8, 8]]
    example = _example(image, boxes, [1, 2, 3, 2], [False, True, False, False])
    out = DetectionTransform(20, 6, train=False)(example)
    np.testing.assert_array_equal(out["boxes"][:4], np.array(boxes)[[0, 2, 3, 1]])
    assert out["labels"].tolist() == [1, 3, 2, 2, 0, 0]
    assert out["box_valid"].tolist() == [True, True, True, False, False, False]
    out = DetectionTransform(20, 2, train=False)(example)  # first max_boxes valid boxes
    assert out["labels"].tolist() == [1, 3] and out["box_valid"].tolist() == [True, True]
    np.testing.assert_array_equal(out["boxes"], np.array(boxes)[[0, 2]])


def test_empty_example():
    image = np.zeros((12, 9, 3), np.uint8)
    for transform, args in [(DetectionTransform(16, 3, train=False), ()),
                            (DetectionTransform(16, 3, train=True), (np.random.default_rng(0),))]:
        out = transform(_example(image, []), *args)
        assert out["boxes"].shape == (3, 4) and not out["box_valid"].any()
        assert out["labels"].tolist() == [0, 0, 0]


def test_eval_drops_boxes_outside_the_image():
    image = np.zeros((20, 40, 3), np.uint8)
    boxes = [[40, 0, 45, 5], [0, 0, 4, 4], [5, 20, 9, 26], [-3, 1, 0, 3]]
    out = DetectionTransform(20, 3, train=False)(_example(image, boxes))
    assert out["box_valid"].tolist() == [True, False, False]
    assert out["labels"].tolist() == [2, 0, 0]
    np.testing.assert_allclose(out["boxes"][0], [0, 0, 2, 2])


def test_train_transform_is_a_function_of_the_rng():
    ds = SyntheticShapes(4, image_size=40, min_size=6, max_size=20, empty_fraction=0.0)
    transform = DetectionTransform(32, 8, train=True)
    for i in range(4):
        a = transform(ds[i], np.random.default_rng(i))
        b = transform(ds[i], np.random.default_rng(i))
        c = transform(ds[i], np.random.default_rng(i + 100))
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
        assert not np.array_equal(a["image"], c["image"])
    with pytest.raises(ValueError, match="Generator"):
        transform(ds[0])


@pytest.mark.parametrize(
    "kwargs",
    [dict(max_boxes=0), dict(hflip_prob=1.5), dict(scale_range=(0.0, 1.0)),
     dict(scale_range=(1.2, 0.8)), dict(min_box_size=-1.0)],
)
def test_transform_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        DetectionTransform(**{"image_size": 32, "max_boxes": 4, "train": True, **kwargs})


def test_shapes_through_the_training_pipeline():
    ds = SyntheticShapes(10**9, image_size=40, min_size=6, max_size=20)
    iterator = make_train_iterator(
        ds, global_batch_size=4, seed=0, transform=DetectionTransform(32, 8, train=True),
        process_index=0, process_count=1, prefetch=0,
    )
    batch = next(iterator)
    assert batch["image"].shape == (4, 32, 32, 3) and batch["boxes"].shape == (4, 8, 4)
    assert batch["box_valid"].shape == (4, 8) and batch["scale"].shape == (4,)
    assert batch["image_hw"].shape == (4, 2)
    valid_labels = batch["labels"][batch["box_valid"]]
    assert np.all((valid_labels >= 1) & (valid_labels <= 3))
    assert np.all(batch["labels"][~batch["box_valid"]] == 0)  # no crowd in shapes
