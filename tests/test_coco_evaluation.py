"""CocoEvaluator: COCO results in original pixels, scored like pycocotools called directly."""

import contextlib
import copy
import io

import jax
import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mlx_research.data.pipeline import make_eval_iterator
from mlx_research.evaluation.coco import METRICS, CocoEvaluator

# Four images with non-sequential ids, two categories with non-contiguous ids (3, 7), a crowd box,
# an image without boxes, and objects of every COCO area range (small < 32^2 < medium < 96^2).
IMAGES = [  # (id, height, width)
    (11, 80, 100),
    (12, 128, 64),
    (13, 40, 40),
    (14, 160, 200),
]
ANNOTATIONS = [  # (image id, category id, xywh, iscrowd)
    (11, 3, [10.0, 10.0, 30.0, 20.0], 0),  # small (600)
    (11, 7, [50.0, 30.0, 40.0, 40.0], 0),  # medium (1600)
    (12, 7, [5.0, 5.0, 20.0, 50.0], 0),  # small (1000)
    (12, 3, [30.0, 60.0, 30.0, 40.0], 1),  # crowd
    (14, 3, [0.0, 0.0, 100.0, 100.0], 0),  # large (10000)
    (14, 7, [120.0, 100.0, 8.0, 8.0], 0),  # small (64)
]
COCO_GT = {
    "images": [{"id": i, "height": h, "width": w, "file_name": f"{i}.png"} for i, h, w in IMAGES],
    "annotations": [
        {"id": k + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3],
         "iscrowd": crowd}
        for k, (i, c, b, crowd) in enumerate(ANNOTATIONS)
    ],
    "categories": [{"id": 3, "name": "three"}, {"id": 7, "name": "seven"}],
}
IMAGE_IDS = [11, 12, 13, 14]  # source index -> image id
LABEL_TO_CATEGORY = {1: 3, 2: 7}
CATEGORY_TO_LABEL = {3: 1, 7: 2}
SCALE = {11: 0.5, 12: 0.25, 13: 2.0, 14: 0.5}  # powers of two: the back-conversion is exact

# A second set of detections in COCO result form (xywh, original pixels): jittered boxes, a
# shuffled label, false positives (one on the empty image), a detection on the crowd region.
NOISY = [
    (11, 3, [12.0, 11.0, 30.0, 20.0], 0.9),
    (11, 3, [50.0, 30.0, 40.0, 40.0], 0.8),  # right box, wrong category
    (11, 7, [0.0, 60.0, 20.0, 15.0], 0.95),  # false positive
    (12, 7, [6.0, 8.0, 20.0, 50.0], 0.7),
    (12, 3, [32.0, 62.0, 25.0, 30.0], 0.6),  # inside the crowd box: ignored
    (13, 7, [10.0, 10.0, 10.0, 10.0], 0.5),  # false positive on the empty image
    (14, 3, [5.0, 5.0, 100.0, 100.0], 0.85),
    (14, 3, [120.0, 100.0, 8.0, 8.0], 0.4),  # wrong category
    (14, 7, [121.0, 101.0, 8.0, 8.0], 0.3),
]
GT_RESULTS = [(i, c, b, 1.0) for i, c, b, crowd in ANNOTATIONS if not crowd]


def direct_pycocotools(results, image_ids=None):
    """stats[0..9] of pycocotools called directly on a hand-made result list."""
    gt = COCO()
    gt.dataset = copy.deepcopy(COCO_GT)
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes([
            {"image_id": i, "category_id": c, "bbox": list(b), "score": s}
            for i, c, b, s in results
        ])
        coco_eval = COCOeval(gt, dt, "bbox")
        if image_ids is not None:
            coco_eval.params.imgIds = sorted(image_ids)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return np.asarray(coco_eval.stats[:9])


def predictions_for(results, indices, num_dets=6, pad_garbage=True):
    """Detector outputs (resized pixels, padded to `num_dets`) that mean the COCO `results`."""
    n = len(indices)
    boxes = np.zeros((n, num_dets, 4), np.float32)
    scores = np.zeros((n, num_dets), np.float32)
    labels = np.ones((n, num_dets), np.int32)
    valid = np.zeros((n, num_dets), bool)
    if pad_garbage:  # padding rows: confident boxes that would count if they were not masked
        boxes[:] = [1.0, 2.0, 30.0, 40.0]
        scores[:] = 0.99
        labels[:] = 2
    scale = np.array([SCALE[IMAGE_IDS[k]] for k in indices], np.float32)
    filled = [0] * n
    for image_id, category_id, (x, y, w, h), score in results:
        if IMAGE_IDS.index(image_id) not in indices:
            continue
        r = list(indices).index(IMAGE_IDS.index(image_id))
        d = filled[r]
        filled[r] += 1
        boxes[r, d] = np.array([x, y, x + w, y + h]) * SCALE[image_id]
        scores[r, d], labels[r, d], valid[r, d] = score, CATEGORY_TO_LABEL[category_id], True
    return {"boxes": boxes, "scores": scores, "labels": labels, "valid": valid, "scale": scale}


def make_evaluator(**kwargs):
    source = [{} for _ in IMAGE_IDS]  # only its length matters to the host side
    return CocoEvaluator(
        source, None, oracle_predict, COCO_GT, IMAGE_IDS, LABEL_TO_CATEGORY, **kwargs
    )


def oracle_predict(variables, batch):
    """A 'detector' that returns the transformed ground truth with score 1."""
    del variables
    return {
        "boxes": batch["boxes"],
        "scores": jax.numpy.ones(batch["labels"].shape, jax.numpy.float32),
        "labels": batch["labels"],
        "valid": batch["box_valid"],
    }


def test_perfect_predictions_in_resized_pixels_give_ap_one():
    evaluator = make_evaluator()
    evaluator.update(predictions_for(GT_RESULTS, [0, 1, 2, 3]), np.arange(4))
    scores = evaluator.result()
    assert list(scores) == list(METRICS)
    assert scores["AP"] == scores["AP50"] == scores["AP75"] == 1.0
    for name in ("APs", "APm", "APl", "AR10", "AR100"):
        assert scores[name] == pytest.approx(1.0, abs=1e-12), name
    # the stored results are the ground-truth boxes back in original xywh pixels
    got = sorted((d["image_id"], d["category_id"], d["bbox"]) for d in evaluator.detections)
    assert got == sorted((i, c, b) for i, c, b, _ in GT_RESULTS)


def test_noisy_predictions_match_pycocotools_called_directly():
    evaluator = make_evaluator()
    evaluator.update(predictions_for(NOISY, [2, 0]), np.array([2, 0]))  # any order, 2 batches
    evaluator.update(predictions_for(NOISY, [3, 1]), np.array([3, 1]))
    scores = evaluator.result()
    expected = direct_pycocotools(NOISY)
    np.testing.assert_array_equal([scores[m] for m in METRICS], expected)
    assert 0.0 < scores["AP"] < scores["AP50"] < 1.0  # a case that can tell results apart
    assert scores == evaluator.result()  # result() does not consume or alter the detections


def test_hand_computed_ap_of_a_false_positive_scored_above_the_true_positive():
    # Image 11 only: GT (cat 3, cat 7); detections: cat 3 TP (0.5) below a cat 3 FP (0.9), cat 7
    # TP. Category 3: precision 1/2 at recall 1 -> AP50 0.5; category 7: 1.0 -> mean 0.75.
    results = [
        (11, 3, [10.0, 10.0, 30.0, 20.0], 0.5),
        (11, 3, [60.0, 5.0, 10.0, 10.0], 0.9),
        (11, 7, [50.0, 30.0, 40.0, 40.0], 0.8),
    ]
    evaluator = make_evaluator()
    evaluator.update(predictions_for(results, [0]), np.array([0]))
    scores = evaluator.result()
    assert scores["AP50"] == pytest.approx(0.75, abs=1e-12)
    assert scores["AR1"] == pytest.approx(0.5, abs=1e-12)  # 1 detection: cat 3's FP comes first


def test_indices_restrict_the_evaluated_images():
    evaluator = make_evaluator()
    evaluator.update(predictions_for(GT_RESULTS, [0, 1]), np.array([0, 1]))
    assert evaluator.seen_image_ids == {11, 12}
    scores = evaluator.result()
    assert scores["AP"] == 1.0  # image 14's objects (not evaluated) are not counted as missed
    np.testing.assert_array_equal(
        [scores[m] for m in METRICS], direct_pycocotools(GT_RESULTS, image_ids=[11, 12])
    )
    # an evaluated image without any detection counts: its objects are missed
    evaluator.update(predictions_for([], [3]), np.array([3]))
    np.testing.assert_array_equal(
        [evaluator.result()[m] for m in METRICS],
        direct_pycocotools(GT_RESULTS[:3], image_ids=[11, 12, 14]),
    )
    assert evaluator.result()["AR100"] < 1.0


def test_padded_detections_are_ignored():
    with_padding = make_evaluator()
    with_padding.update(predictions_for(NOISY, [0, 1, 2, 3], num_dets=8), np.arange(4))
    assert len(with_padding.detections) == len(NOISY)
    np.testing.assert_array_equal(
        [with_padding.result()[m] for m in METRICS], direct_pycocotools(NOISY)
    )


def test_no_detections_give_zeros_and_reset_forgets():
    evaluator = make_evaluator()
    assert evaluator.result() == {m: 0.0 for m in METRICS}  # nothing seen
    evaluator.update(predictions_for([], [0, 1, 2, 3]), np.arange(4))
    assert evaluator.result() == {m: 0.0 for m in METRICS}  # seen, but nothing detected
    evaluator.update(predictions_for(NOISY, [0, 1, 2, 3]), np.arange(4))
    assert evaluator.result()["AP"] > 0.0
    evaluator.reset()
    assert evaluator.detections == [] and evaluator.seen_image_ids == set()
    assert evaluator.result() == {m: 0.0 for m in METRICS}


def test_constructor_and_update_checks():
    with pytest.raises(ValueError, match="image_ids has 3 entries"):
        CocoEvaluator([{}] * 4, None, oracle_predict, COCO_GT, [11, 12, 13], LABEL_TO_CATEGORY)
    with pytest.raises(ValueError, match=r"\[99\]"):
        CocoEvaluator([{}] * 2, None, oracle_predict, COCO_GT, [11, 99], LABEL_TO_CATEGORY)
    with pytest.raises(ValueError, match=r"unknown category ids \[4\]"):
        CocoEvaluator([{}] * 4, None, oracle_predict, COCO_GT, IMAGE_IDS, {1: 3, 2: 4})
    evaluator = make_evaluator()
    predictions = predictions_for(GT_RESULTS, [0])
    predictions["labels"][0, 0] = 0  # background is never a class
    with pytest.raises(ValueError, match="predicted label 0"):
        evaluator.update(predictions, np.array([0]))


# ---------------------------------------------------------------- through the eval pipeline
S = 64


def fit_transform(example):
    """Minimal eval transform: fit the longer side to S, pad boxes to 4, crowd -> invalid."""
    h, w = example["image"].shape[:2]
    scale = S / max(h, w)
    boxes = np.zeros((4, 4), np.float32)
    labels = np.zeros(4, np.int32)
    box_valid = np.zeros(4, bool)
    n = len(example["labels"])
    boxes[:n] = example["boxes"] * scale
    labels[:n] = example["labels"]
    box_valid[:n] = ~example["crowd"]
    return {
        "image": np.zeros((S, S, 3), np.float32), "boxes": boxes, "labels": labels,
        "box_valid": box_valid, "scale": np.float32(scale),
        "image_hw": np.array([round(h * scale), round(w * scale)], np.int32),
    }


def raw_source():
    examples = []
    for image_id, h, w in IMAGES:
        anns = [a for a in ANNOTATIONS if a[0] == image_id]
        boxes = np.array([[x, y, x + bw, y + bh] for _, _, (x, y, bw, bh), _ in anns], np.float32)
        examples.append({
            "image": np.zeros((h, w, 3), np.uint8),
            "boxes": boxes.reshape(-1, 4),
            "labels": np.array([CATEGORY_TO_LABEL[a[1]] for a in anns], np.int32),
            "crowd": np.array([bool(a[3]) for a in anns], bool),
        })
    return examples


def test_oracle_detector_through_jit_and_the_padded_eval_pipeline():
    evaluator = CocoEvaluator(
        raw_source(), fit_transform, oracle_predict, COCO_GT, IMAGE_IDS, LABEL_TO_CATEGORY
    )
    predict = jax.jit(evaluator.predict)
    evaluator.reset()
    batches = make_eval_iterator(
        evaluator.source, global_batch_size=3, transform=evaluator.transform,
        process_index=0, process_count=1,
    )
    for batch in batches:  # 2 batches, the second with 2 padding rows (valid=False)
        predictions = jax.device_get(predict({}, batch))
        np.testing.assert_array_equal(predictions["scale"], batch["scale"])
        valid = batch["valid"]
        evaluator.update({k: v[valid] for k, v in predictions.items()}, batch["index"][valid])
    scores = evaluator.result()
    assert evaluator.seen_image_ids == set(IMAGE_IDS)
    assert scores["AP"] == scores["AP75"] == scores["AR100"] == 1.0
    got = sorted((d["image_id"], d["category_id"]) for d in evaluator.detections)
    assert got == sorted((i, c) for i, c, _, _ in GT_RESULTS)
    for d in evaluator.detections:  # float32 resizing, float64 back-conversion
        truth = next(b for i, c, b, _ in GT_RESULTS if (i, c) == (d["image_id"], d["category_id"]))
        np.testing.assert_allclose(d["bbox"], truth, atol=1e-4)


# ---------------------------------------------------------------- picture of the first batch
def test_picture_grid_with_ground_truth_and_confident_predictions():
    n, d = 4, 3
    batch = {
        "image": np.full((n, 32, 32, 3), 0.5, np.float32),
        "boxes": np.zeros((n, 2, 4), np.float32),
        "box_valid": np.zeros((n, 2), bool),
        "labels": np.ones((n, 2), np.int32),
        "valid": np.array([True, True, True, False]),  # last row: padding, not drawn
    }
    batch["boxes"][1, 0] = [2, 3, 12, 10]
    batch["box_valid"][1, 0] = True
    batch["boxes"][1, 1] = [20, 20, 28, 28]  # invalid (crowd or padding): not drawn
    predictions = {
        "boxes": np.zeros((n, d, 4), np.float32),
        "scores": np.array([[0.9, 0.2, 0.95]] * n, np.float32),
        "labels": np.ones((n, d), np.int32),
        "valid": np.zeros((n, d), bool),
    }
    predictions["valid"][2] = [True, True, False]
    predictions["boxes"][2] = [[18, 18, 30, 30], [18, 2, 30, 12], [4, 16, 14, 30]]
    evaluator = make_evaluator(label_names={1: "a"})
    picture = evaluator.images(predictions, batch)["detections"]
    assert picture.dtype == np.uint8 and picture.shape == (32, 3 * 32 + 2 * 2, 3)
    tile = lambda k: picture[:, k * 34 : k * 34 + 32]  # noqa: E731
    np.testing.assert_array_equal(tile(0), 128)  # no boxes
    gt = tile(1)
    np.testing.assert_array_equal(gt[3, 2:13], [[0, 255, 0]] * 11)  # top edge, x 2..12
    np.testing.assert_array_equal(gt[3:11, 12], [[0, 255, 0]] * 8)  # right edge
    np.testing.assert_array_equal(gt[4:10, 3:12], 128)  # inside stays untouched
    np.testing.assert_array_equal(gt[18:, 18:], 128)  # the invalid GT box is not drawn
    pred = tile(2)
    np.testing.assert_array_equal(pred[18:31, 18], [[255, 0, 0]] * 13)  # left edge of 0.9 box
    np.testing.assert_array_equal(pred[18, 18:31], [[255, 0, 0]] * 13)  # top edge
    assert np.any(pred[19:30, 19:30] != 128)  # its "a 0.90" text
    np.testing.assert_array_equal(pred[:17, :], 128)  # score 0.2 < 0.3: not drawn
    np.testing.assert_array_equal(pred[:, :18], 128)  # valid=False: not drawn
    assert np.all(picture[:, 32:34] == 255)  # white gap between tiles
    # eight tiles at most, in rows of four
    big = {k: np.concatenate([v] * 3) for k, v in batch.items()}
    big["valid"][:] = True
    preds = {k: np.concatenate([v] * 3) for k, v in predictions.items()}
    assert evaluator.images(preds, big)["detections"].shape == (2 * 32 + 2, 4 * 32 + 3 * 2, 3)
    batch["valid"][:] = False
    assert evaluator.images(predictions, batch) == {}
