"""Tests for mlx_research.data.coco (CocoDetection) and the COCO writers of data.shapes."""

import contextlib
import io
import json
import logging

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mlx_research.data.coco import CocoDetection
from mlx_research.data.detection_transforms import DetectionTransform
from mlx_research.data.shapes import SyntheticShapes, coco_ground_truth, write_coco
from mlx_research.errors import ConfigError


def _shapes(n=6):
    return SyntheticShapes(n, image_size=40, max_objects=4, min_size=6, max_size=20, seed=3)


def _write(folder, coco, images=None):
    """Writes ``coco`` as folder/instances.json and ``images`` {file_name: array} as files."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for name, array in (images or {}).items():
        Image.fromarray(array).save(folder / "images" / name)
    (folder / "instances.json").write_text(json.dumps(coco))


def _image(image_id, height=20, width=30):
    return {"id": image_id, "file_name": f"{image_id}.png", "height": height, "width": width}


def _ann(ann_id, image_id, category_id, bbox, **extra):
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, **extra}


def _dataset(tmp_path, annotations, categories=None, images=None):
    images = images or [_image(1), _image(2)]
    coco = {
        "images": images,
        "categories": categories or [{"id": 1, "name": "a"}],
        "annotations": annotations,
    }
    arrays = {im["file_name"]: np.zeros((im["height"], im["width"], 3), np.uint8) for im in images}
    _write(tmp_path, coco, arrays)
    return tmp_path


def _error(callable_, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        callable_(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- write_coco round trip


def test_write_coco_round_trip(tmp_path):
    source = _shapes()
    path = write_coco(source, tmp_path)
    assert path == tmp_path / "instances.json"
    ds = CocoDetection(tmp_path, "instances.json")
    assert len(ds) == len(source) and ds.image_ids == [1, 2, 3, 4, 5, 6]
    assert ds.class_names == ("circle", "square", "triangle") and ds.num_classes == 3
    assert ds.label_to_category_id == {1: 1, 2: 2, 3: 3}
    assert ds.num_dropped_degenerate == 0
    total = 0
    for i in range(len(source)):
        want, got = source[i], ds[i]
        assert got.keys() == {"image", "boxes", "labels", "crowd"}
        np.testing.assert_array_equal(got["image"], want["image"])  # PNG is lossless
        np.testing.assert_array_equal(got["boxes"], want["boxes"])
        np.testing.assert_array_equal(got["labels"], want["labels"])
        assert got["boxes"].dtype == np.float32 and got["labels"].dtype == np.int32
        assert got["crowd"].dtype == bool and not got["crowd"].any()
        assert (tmp_path / "images" / f"{i + 1}.png").is_file()
        total += len(want["labels"])
    in_memory = coco_ground_truth(source)
    for entry in ds.coco["images"]:
        assert entry.pop("file_name") == f"{entry['id']}.png"
    assert ds.coco == in_memory
    assert len(in_memory["annotations"]) == total > 0


def test_coco_ground_truth_fields():
    source = _shapes(4)
    coco = coco_ground_truth(source)
    assert coco["categories"] == [
        {"id": 1, "name": "circle"}, {"id": 2, "name": "square"}, {"id": 3, "name": "triangle"}
    ]
    assert [im["id"] for im in coco["images"]] == [1, 2, 3, 4]
    assert all(im["height"] == im["width"] == 40 for im in coco["images"])
    anns = iter(coco["annotations"])
    ann_id = 0
    for i in range(len(source)):
        ex = source[i]
        for (x1, y1, x2, y2), label in zip(ex["boxes"].tolist(), ex["labels"].tolist()):
            ann = next(anns)
            ann_id += 1
            assert ann == {
                "id": ann_id, "image_id": i + 1, "category_id": label,
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
            }
    assert next(anns, None) is None


def test_coco_ground_truth_scores_itself_perfectly_in_pycocotools():
    coco = coco_ground_truth(_shapes(8))
    detections = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
         "score": 1.0}
        for a in coco["annotations"]
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = coco
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(detections), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)  # AP@[.5:.95]
    # Shifting every detection by half its width halves its IoU or worse: AP@.5 drops to 0.
    for d in detections:
        d["bbox"] = [d["bbox"][0] + d["bbox"][2] / 2, *d["bbox"][1:]]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(gt, gt.loadRes(detections), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert evaluator.stats[1] == pytest.approx(0.0)


# ---------------------------------------------------------------- CocoDetection semantics


def test_non_contiguous_category_ids_are_remapped(tmp_path):
    categories = [{"id": 12, "name": "dog"}, {"id": 3, "name": "cat"}, {"id": 7, "name": "cow"}]
    annotations = [
        _ann(5, 1, 12, [1, 2, 3, 4]),
        _ann(6, 1, 3, [0, 0, 30, 20]),
        _ann(9, 2, 7, [10.5, 2.25, 4.5, 6.5]),
    ]
    ds = CocoDetection(_dataset(tmp_path, annotations, categories))
    assert ds.label_to_category_id == {1: 3, 2: 7, 3: 12}
    assert ds.category_id_to_label == {3: 1, 7: 2, 12: 3}
    assert ds.class_names == ("cat", "cow", "dog") and ds.num_classes == 3
    assert ds[0]["labels"].tolist() == [3, 1]
    assert ds[0]["boxes"].tolist() == [[1, 2, 4, 6], [0, 0, 30, 20]]  # xywh -> xyxy
    assert ds[1]["labels"].tolist() == [2]
    assert ds[1]["boxes"].tolist() == [[10.5, 2.25, 15, 8.75]]


def test_annotations_grouped_by_image_in_file_order(tmp_path):
    images = [_image(40), _image(10), _image(25)]
    annotations = [
        _ann(1, 25, 1, [0, 0, 1, 1]), _ann(2, 40, 1, [0, 0, 2, 2]),
        _ann(3, 25, 1, [0, 0, 3, 3]), _ann(4, 40, 1, [0, 0, 4, 4]),
    ]
    ds = CocoDetection(_dataset(tmp_path, annotations, images=images))
    assert ds.image_ids == [40, 10, 25]
    assert ds[0]["boxes"][:, 2].tolist() == [2, 4]
    assert ds[1]["boxes"].shape == (0, 4) and ds[1]["labels"].shape == (0,)  # kept, empty
    assert ds[2]["boxes"][:, 2].tolist() == [1, 3]
    assert ds[-1]["boxes"][:, 2].tolist() == [1, 3]
    with pytest.raises(IndexError):
        ds[3]


def test_many_interleaved_annotations_keep_file_order(tmp_path):
    image_of = np.random.default_rng(0).integers(1, 4, 90)
    annotations = [_ann(k + 1, int(i), 1, [0, 0, k / 10 + 1, 1]) for k, i in enumerate(image_of)]
    ds = CocoDetection(_dataset(tmp_path, annotations, images=[_image(1), _image(2), _image(3)]))
    for index, image_id in enumerate([1, 2, 3]):
        widths = [k / 10 + 1 for k in range(90) if image_of[k] == image_id]
        np.testing.assert_allclose(ds[index]["boxes"][:, 2], widths, rtol=1e-6)


def test_grayscale_rgba_and_palette_images_become_rgb(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (8, 6), dtype=np.uint8)
    rgba = rng.integers(0, 256, (8, 6, 4), dtype=np.uint8)
    palette_indices = rng.integers(0, 4, (8, 6), dtype=np.uint8)
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]], np.uint8)
    (tmp_path / "images").mkdir()
    Image.fromarray(gray, mode="L").save(tmp_path / "images" / "gray.png")
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "images" / "rgba.png")
    p_image = Image.fromarray(palette_indices, mode="P")
    p_image.putpalette(palette.ravel().tolist())
    p_image.save(tmp_path / "images" / "palette.png")
    Image.fromarray(gray, mode="L").save(tmp_path / "images" / "gray.jpg", quality=100)
    images = [
        {"id": i + 1, "file_name": name, "height": 8, "width": 6}
        for i, name in enumerate(["gray.png", "rgba.png", "palette.png", "gray.jpg"])
    ]
    coco = {"images": images, "categories": [{"id": 1, "name": "a"}], "annotations": []}
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    ds = CocoDetection(tmp_path)
    for i in range(4):
        assert ds[i]["image"].shape == (8, 6, 3) and ds[i]["image"].dtype == np.uint8
    np.testing.assert_array_equal(ds[0]["image"], np.repeat(gray[..., None], 3, axis=-1))
    np.testing.assert_array_equal(ds[1]["image"], rgba[..., :3])
    np.testing.assert_array_equal(ds[2]["image"], palette[palette_indices])
    jpeg = ds[3]["image"].astype(int)
    assert np.all(jpeg[..., 0] == jpeg[..., 1]) and np.abs(jpeg[..., 0] - gray).max() <= 8


def test_crowd_boxes_are_flagged_and_kept_out_of_training(tmp_path):
    annotations = [
        _ann(1, 1, 1, [1, 1, 10, 10], iscrowd=0),
        _ann(2, 1, 1, [0, 0, 30, 20], iscrowd=1),
        _ann(3, 1, 1, [5, 5, 5, 5]),  # no iscrowd key: not crowd
    ]
    ds = CocoDetection(_dataset(tmp_path, annotations))
    ex = ds[0]
    assert ex["crowd"].tolist() == [False, True, False]
    out = DetectionTransform(30, 4, train=False)(ex)
    assert out["box_valid"].tolist() == [True, True, False, False]
    assert out["boxes"][2].tolist() == [0, 0, 30, 20]  # the crowd row, after the valid ones
    out = DetectionTransform(30, 4, train=True)(ex, np.random.default_rng(0))
    assert out["box_valid"].sum() == 2


def test_boxes_within_tolerance_are_clipped(tmp_path):
    annotations = [_ann(1, 1, 1, [-0.75, -1.0, 31.5, 21.0])]
    ds = CocoDetection(_dataset(tmp_path, annotations))
    assert ds[0]["boxes"].tolist() == [[0, 0, 30, 20]]
    assert ds.coco["annotations"][0]["bbox"] == [-0.75, -1.0, 31.5, 21.0]  # file unchanged


def test_degenerate_boxes_are_dropped_and_counted(tmp_path, caplog):
    annotations = [
        _ann(1, 1, 1, [1, 1, 0, 5]),
        _ann(2, 1, 1, [1, 1, 5, 5]),
        _ann(3, 2, 1, [2, 2, 3, 0]),
        _ann(4, 2, 1, [30, 2, 0.5, 4]),  # zero width once clipped to the image
        _ann(5, 2, 1, [2, 2, 0.5, 0.5]),  # tiny but not degenerate
    ]
    with caplog.at_level(logging.WARNING, logger="mlx_research.data.coco"):
        ds = CocoDetection(_dataset(tmp_path, annotations))
    assert ds.num_dropped_degenerate == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "dropped 3 degenerate" in warnings[0]
    assert "instances.json" in warnings[0] and "(id 1)" in warnings[0]
    assert ds[0]["boxes"].tolist() == [[1, 1, 6, 6]]
    assert ds[1]["boxes"].tolist() == [[2, 2, 2.5, 2.5]]
    assert len(ds.coco["annotations"]) == 5


def test_absolute_and_nested_paths(tmp_path):
    source = _shapes(2)
    write_coco(source, tmp_path / "data", file_name="ann.json")
    (tmp_path / "data" / "annotations").mkdir()
    (tmp_path / "data" / "ann.json").rename(tmp_path / "data" / "annotations" / "ann.json")
    ds = CocoDetection(tmp_path / "data", "annotations/ann.json", tmp_path / "data" / "images")
    np.testing.assert_array_equal(ds[1]["image"], source[1]["image"])
    assert ds.image_path(1) == tmp_path / "data" / "images" / "2.png"


# ---------------------------------------------------------------- validation errors


def test_missing_folder_and_files(tmp_path):
    assert "does not exist" in _error(CocoDetection, tmp_path / "nope")
    message = _error(CocoDetection, tmp_path, "missing.json")
    assert "missing.json" in message and "does not exist" in message
    (tmp_path / "instances.json").write_text("{}")
    message = _error(CocoDetection, tmp_path, image_dir="pictures")
    assert "pictures" in message


def test_malformed_json_names_line_and_column(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "instances.json").write_text('{"images": [],\n  "categories": [}')
    message = _error(CocoDetection, tmp_path)
    assert "instances.json" in message and "line 2 column 18" in message
    (tmp_path / "instances.json").write_text("[1, 2]")
    assert "not a JSON object" in _error(CocoDetection, tmp_path)


@pytest.mark.parametrize(
    ("drop", "expected"),
    [("images", "'images'"), ("categories", "'categories'"), ("annotations", "'annotations'")],
)
def test_missing_top_level_keys(tmp_path, drop, expected):
    coco = {"images": [], "categories": [], "annotations": []}
    del coco[drop]
    _write(tmp_path, coco)
    message = _error(CocoDetection, tmp_path)
    assert "instances.json" in message and expected in message


def test_missing_entry_keys_name_the_entry(tmp_path):
    image = _image(7)
    del image["file_name"]
    _write(tmp_path, {"images": [_image(1), image], "categories": [], "annotations": []})
    message = _error(CocoDetection, tmp_path)
    assert "instances.json" in message and "images[1] (id 7)" in message
    assert "'file_name'" in message
    ann = _ann(3, 1, 1, [0, 0, 1, 1])
    del ann["bbox"]
    message = _error(CocoDetection, _dataset(tmp_path, [_ann(2, 1, 1, [0, 0, 1, 1]), ann]))
    assert "annotations[1] (id 3)" in message and "'bbox'" in message


@pytest.mark.parametrize(
    ("annotation", "expected"),
    [
        (_ann(4, 9, 1, [0, 0, 1, 1]), "image_id 9"),
        (_ann(4, 1, 2, [0, 0, 1, 1]), "category_id 2"),
        (_ann(4, 1, 1, [0, 0, 1]), "bbox"),
        (_ann(4, 1, 1, [0, 0, "1", 1]), "bbox"),
        (_ann(4, 1, 1, [0, 0, float("nan"), 1]), "bbox"),
        (_ann(0, 1, 1, [0, 0, 1, 1]), "positive"),
        (_ann(1, 1, 1, [0, 0, 1, 1]), "unique"),  # duplicate of the first annotation's id
    ],
)
def test_bad_annotations_name_the_entry(tmp_path, annotation, expected):
    folder = _dataset(tmp_path, [_ann(1, 1, 1, [0, 0, 2, 2]), annotation])
    message = _error(CocoDetection, folder)
    assert "instances.json" in message and "annotations[1]" in message and expected in message


def test_bad_images_and_categories(tmp_path):
    _write(tmp_path, {"images": [_image(1), _image(1)], "categories": [], "annotations": []})
    assert "images[1]" in _error(CocoDetection, tmp_path)
    _write(tmp_path, {"images": [_image(1, height=0)], "categories": [], "annotations": []})
    assert "images[0] (id 1)" in _error(CocoDetection, tmp_path)
    _write(tmp_path, {"images": [], "categories": [{"id": "x"}], "annotations": []})
    assert "categories[0]" in _error(CocoDetection, tmp_path)


@pytest.mark.parametrize(
    "bbox", [[-1.5, 0, 5, 5], [0, -2, 5, 5], [26, 0, 5.5, 5], [0, 10, 5, 11.01], [31.5, 0, 1, 1]]
)
def test_box_outside_its_image_names_image_and_annotation(tmp_path, bbox):
    folder = _dataset(tmp_path, [_ann(1, 1, 1, [0, 0, 2, 2]), _ann(17, 2, 1, bbox)])
    message = _error(CocoDetection, folder)
    assert "instances.json" in message and "(id 17)" in message and "image id 2" in message


def test_missing_image_file_at_construction(tmp_path):
    folder = _dataset(tmp_path, [], images=[_image(1), _image(2), _image(3)])
    (folder / "images" / "2.png").unlink()
    (folder / "images" / "3.png").unlink()
    message = _error(CocoDetection, folder)
    assert "2.png" in message and "image id 2" in message and "2 of 3" in message
    ds = CocoDetection(folder, check_files=False)
    ds[0]
    message = _error(ds.__getitem__, 1)
    assert "2.png" in message and "image id 2" in message


def test_unreadable_image_names_the_file(tmp_path):
    folder = _dataset(tmp_path, [], images=[_image(1), _image(2)])
    (folder / "images" / "2.png").write_bytes(b"not a png at all")
    ds = CocoDetection(folder)
    assert ds[0]["image"].shape == (20, 30, 3)
    message = _error(ds.__getitem__, 1)
    assert str(folder / "images" / "2.png") in message and "image id 2" in message


def test_image_of_the_wrong_size_names_the_file(tmp_path):
    folder = _dataset(tmp_path, [], images=[_image(1)])
    Image.fromarray(np.zeros((21, 30, 3), np.uint8)).save(folder / "images" / "1.png")
    message = _error(CocoDetection(folder).__getitem__, 0)
    assert "1.png" in message and "30x21" in message and "30x20" in message
