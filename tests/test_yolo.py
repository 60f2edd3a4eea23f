"""YOLO v1: targets and loss against a loop-based float64 reference of the paper's formula,
the responsible predictor, decoding with NMS, config checks, and the task through the trainer
(one device and data = 8)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlx_research.errors import ConfigError
from mlx_research.models.detection.interface import DetectionTargets
from mlx_research.models.detection.yolo import (
    YoloCriterion,
    YoloPredictions,
    decode,
    encode_targets,
    responsible_predictors,
    yolo_loss,
)
from mlx_research.testing import run_with_devices
from mlx_research.train.metrics import read_metrics
from mlx_research.train.trainer import Trainer
from tests.configs import override
from tests.detection_oracle import oracle_scores

S, B, C = 4, 2, 3
HW = (64, 96)  # (H, W): cells are 16 x 24 pixels


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def reference_loss(boxes, conf, probs, gt_boxes, gt_labels, lambda_coord=5.0, lambda_noobj=0.5,
                   conf_target="iou"):
    """The paper's loss with loops in float64; one object per cell, the largest (first on ties)."""
    (h, w), s, num_boxes = HW, boxes.shape[0], boxes.shape[2]
    owner = {}
    for j, g in enumerate(gt_boxes):
        cx, cy = (g[0] + g[2]) / 2, (g[1] + g[3]) / 2
        cell = (min(int(cy // (h / s)), s - 1), min(int(cx // (w / s)), s - 1))
        area = (g[2] - g[0]) * (g[3] - g[1])
        if cell not in owner or area > owner[cell][1]:
            owner[cell] = (j, area)
    terms = dict(coord=0.0, conf_obj=0.0, conf_noobj=0.0, cls=0.0)
    for row in range(s):
        for col in range(s):
            obj = owner.get((row, col))
            best = -1
            if obj is not None:
                g = np.asarray(gt_boxes[obj[0]], np.float64)
                ious = []
                for b in range(num_boxes):
                    x, y, sw, sh = boxes[row, col, b].astype(np.float64)
                    cx, cy, bw, bh = (col + x) * w / s, (row + y) * h / s, sw**2 * w, sh**2 * h
                    ious.append(_iou((cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2), g))
                best = int(np.argmax(ious))
                t = ((g[0] + g[2]) / 2 / (w / s) - col, (g[1] + g[3]) / 2 / (h / s) - row,
                     np.sqrt((g[2] - g[0]) / w), np.sqrt((g[3] - g[1]) / h))
                terms["coord"] += lambda_coord * sum((boxes[row, col, best, k] - t[k]) ** 2
                                                     for k in range(4))
                target = ious[best] if conf_target == "iou" else 1.0
                terms["conf_obj"] += (conf[row, col, best] - target) ** 2
                onehot = np.eye(probs.shape[-1])[gt_labels[obj[0]] - 1]
                terms["cls"] += np.sum((probs[row, col] - onehot) ** 2)
            for b in range(num_boxes):
                if b != best:
                    terms["conf_noobj"] += lambda_noobj * conf[row, col, b] ** 2
    return terms


def _predictions(seed):
    rng = np.random.default_rng(seed)
    probs = rng.uniform(size=(S, S, C))
    return (rng.uniform(0.05, 0.95, (S, S, B, 4)).astype(np.float32),
            rng.uniform(size=(S, S, B)).astype(np.float32),
            (probs / probs.sum(-1, keepdims=True)).astype(np.float32))


def _padded(gt_boxes, gt_labels, rows=5):
    """Targets padded to `rows`, plus one invalid (crowd) box in the middle that must be ignored."""
    boxes = np.zeros((rows, 4), np.float32)
    labels = np.zeros(rows, np.int32)
    valid = np.zeros(rows, bool)
    order = list(range(len(gt_boxes)))
    order.insert(1, -1)
    for r, j in enumerate(order):
        if j < 0:
            boxes[r], labels[r] = (30, 20, 60, 50), 1  # a crowd box: valid False
        else:
            boxes[r], labels[r], valid[r] = gt_boxes[j], gt_labels[j], True
    return boxes, labels, valid


@functools.partial(jax.jit, static_argnames=("conf_target",))
def _encode_and_loss(preds, boxes, labels, valid, conf_target):
    targets = encode_targets(boxes, labels, valid, grid_size=S, num_classes=C, image_hw=HW)
    return targets, yolo_loss(YoloPredictions(*preds), targets, HW, lambda_coord=5.0,
                              lambda_noobj=0.5, conf_target=conf_target)


def _loss(preds, gt_boxes, gt_labels, conf_target):
    """One compilation per conf_target: every case has the same padded shapes."""
    targets, terms = _encode_and_loss(preds, *_padded(gt_boxes, gt_labels), conf_target)
    return targets, {k: float(v) for k, v in terms.items()}


CASES = {
    "one_object": ([(10, 5, 40, 25)], [2]),
    "two_cells": ([(10, 5, 40, 25), (50, 30, 90, 62)], [1, 3]),
    # Three centres in cell (row 1, col 2); the middle box is the largest and owns the cell.
    "one_cell_three_objects": ([(50, 18, 60, 26), (45, 16, 70, 30), (60, 20, 68, 30)], [1, 3, 2]),
    "empty": ([], []),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("conf_target", ["iou", "one"])
def test_loss_matches_the_loop_reference(case, conf_target):
    gt_boxes, gt_labels = CASES[case]
    preds = _predictions(len(case))
    targets, got = _loss(preds, gt_boxes, gt_labels, conf_target)
    want = reference_loss(*preds, gt_boxes, gt_labels, conf_target=conf_target)
    for name, key in (("coord", "coord"), ("conf_obj", "conf_obj"), ("conf_noobj", "conf_noobj"),
                      ("class", "cls")):
        np.testing.assert_allclose(got[name], want[key], rtol=1e-5, atol=1e-6, err_msg=name)
    num_cells = {"one_object": 1, "two_cells": 2, "one_cell_three_objects": 1, "empty": 0}[case]
    assert int(targets.has_object.sum()) == num_cells
    if case == "empty":
        assert got["coord"] == got["conf_obj"] == got["class"] == 0.0
        noobj = 0.5 * np.sum(preds[1].astype(np.float64) ** 2)
        np.testing.assert_allclose(got["conf_noobj"], noobj, rtol=1e-6)


def test_criterion_sums_the_images_and_divides_by_their_number():
    cases = [CASES["two_cells"], CASES["empty"]]
    preds = [_predictions(seed) for seed in (1, 2)]
    batch = YoloPredictions(*(jnp.stack(parts) for parts in zip(*preds)))
    padded = [_padded(*case) for case in cases]
    targets = DetectionTargets(*(jnp.stack(parts) for parts in zip(*padded)),
                               image_hw=jnp.array([HW, HW]))
    (loss_sum, weight), metrics = jax.jit(YoloCriterion(HW, conf_target="one"))(batch, targets)
    want = [reference_loss(*p, *case, conf_target="one") for p, case in zip(preds, cases)]
    assert float(weight) == 2
    np.testing.assert_allclose(float(loss_sum), sum(sum(w.values()) for w in want), rtol=1e-5)
    for name, key in (("coord", "coord"), ("conf_noobj", "conf_noobj"), ("class", "cls")):
        np.testing.assert_allclose(float(metrics[name]), (want[0][key] + want[1][key]) / 2,
                                   rtol=1e-5, err_msg=name)


def test_one_cell_keeps_the_largest_object():
    gt_boxes, gt_labels = CASES["one_cell_three_objects"]
    targets, _ = _loss(_predictions(0), gt_boxes, gt_labels, "iou")
    np.testing.assert_allclose(targets.boxes_xyxy[1, 2], (45, 16, 70, 30))
    # centre (57.5, 23): x = 57.5 / 24 - 2, y = 23 / 16 - 1; sqrt(25 / 96), sqrt(14 / 64)
    np.testing.assert_allclose(targets.boxes[1, 2],
                               (57.5 / 24 - 2, 23 / 16 - 1, np.sqrt(25 / 96), np.sqrt(14 / 64)),
                               rtol=1e-6)
    np.testing.assert_array_equal(targets.classes[1, 2], (0, 0, 1))


def test_responsible_predictor_is_the_best_overlap_and_gets_no_gradient_from_the_choice():
    gt = (24, 0, 48, 16)  # exactly cell (row 0, col 1): x = y = 0.5, sqrt_w = sqrt(24 / 96)
    boxes = np.full((S, S, B, 4), 0.5, np.float32)
    boxes[0, 1, 0] = (0.1, 0.1, 0.3, 0.3)  # small and off-centre: low IoU
    boxes[0, 1, 1] = (0.5, 0.55, 0.5, 0.45)  # nearly the object
    preds = YoloPredictions(jnp.asarray(boxes), jnp.full((S, S, B), 0.5),
                            jnp.full((S, S, C), 1 / 3))
    targets, _ = _loss(preds, [gt], [1], "iou")
    responsible, iou = jax.jit(responsible_predictors, static_argnums=2)(preds, targets, HW)
    assert np.flatnonzero(np.asarray(responsible).ravel()).tolist() == [(0 * S + 1) * B + 1]
    assert float(iou[0, 1, 1]) > float(iou[0, 1, 0])
    loss = functools.partial(yolo_loss, image_hw=HW, lambda_coord=5.0, lambda_noobj=0.5,
                             conf_target="iou")
    grads = jax.jit(jax.grad(lambda p: sum(loss(p, targets).values())))(preds)
    t = np.array([0.5, 0.5, 0.5, 0.5])
    # d/dp of 5 * |p - t|^2 only: the IoU-based choice and the IoU target carry no gradient.
    np.testing.assert_allclose(grads.boxes[0, 1, 1], 2 * 5.0 * (boxes[0, 1, 1] - t), rtol=1e-5)
    np.testing.assert_array_equal(grads.boxes[0, 1, 0], 0.0)
    np.testing.assert_allclose(grads.confidence[0, 1, 0], 2 * 0.5 * 0.5, rtol=1e-6)  # noobj


_decode = jax.jit(decode, static_argnames=("input_hw", "score_thresh", "nms_thresh",
                                          "pre_nms_top_k", "detections_per_img"))


def test_decode_gives_pixel_boxes_and_nms_removes_the_duplicate():
    s, hw = 2, (64, 64)  # 32-pixel cells
    boxes = np.zeros((s, s, B, 4), np.float32)
    conf = np.zeros((s, s, B), np.float32)
    probs = np.full((s, s, 2), 0.5, np.float32)
    boxes[0, 1, 0], conf[0, 1, 0] = (0.5, 0.5, 0.5, 0.5), 0.9  # (40, 8, 56, 24)
    boxes[0, 1, 1], conf[0, 1, 1] = (0.55, 0.5, 0.5, 0.5), 0.8  # (41.6, 8, 57.6, 24)
    probs[0, 1] = (0.2, 0.8)
    boxes[1, 0, 1], conf[1, 0, 1] = (0.5, 0.25, 0.75, 0.25), 0.5  # (-2, 38, 34, 42)
    probs[1, 0] = (1.0, 0.0)
    preds = YoloPredictions(jnp.asarray(boxes), jnp.asarray(conf), jnp.asarray(probs))
    # Valid region 64 x 50: boxes are clipped to x <= 50 (and x >= 0). Candidates above 0.1:
    # 0.72 (box 0, label 2), 0.64 (box 1, label 2: IoU 0.84 with box 0 -> suppressed), 0.5 (box 2,
    # label 1), 0.18 (box 0, label 1), 0.16 (box 1, label 1: cut by pre_nms_top_k = 4).
    out = _decode(preds, jnp.array([64, 50]), input_hw=hw, score_thresh=0.1, nms_thresh=0.5,
                 pre_nms_top_k=4, detections_per_img=5)
    assert np.asarray(out["valid"]).tolist() == [True, True, True, False, False]
    np.testing.assert_allclose(out["scores"], (0.72, 0.5, 0.18, 0, 0), rtol=1e-6)
    assert np.asarray(out["labels"]).tolist()[:3] == [2, 1, 1]
    np.testing.assert_allclose(out["boxes"][:3], [(40, 8, 50, 24), (0, 38, 34, 42),
                                                  (40, 8, 50, 24)], atol=1e-5)


@pytest.mark.slow
def test_decode_nms_and_clipping_on_the_full_image():
    s, hw = 2, (64, 64)
    boxes = np.zeros((s, s, B, 4), np.float32)
    conf = np.zeros((s, s, B), np.float32)
    boxes[0, 1, 0], conf[0, 1, 0] = (0.5, 0.5, 0.5, 0.5), 0.9
    boxes[0, 1, 1], conf[0, 1, 1] = (0.55, 0.5, 0.5, 0.5), 0.8
    probs = np.zeros((s, s, 2), np.float32)
    probs[0, 1] = (0.0, 1.0)
    preds = YoloPredictions(jnp.asarray(boxes), jnp.asarray(conf), jnp.asarray(probs))
    out = _decode(preds, jnp.array([64, 64]), input_hw=hw, score_thresh=0.1, nms_thresh=0.5,
                 pre_nms_top_k=100, detections_per_img=3)
    assert np.asarray(out["valid"]).tolist() == [True, False, False]
    np.testing.assert_allclose(out["boxes"][0], (40, 8, 56, 24), atol=1e-5)
    assert int(out["labels"][0]) == 2 and abs(float(out["scores"][0]) - 0.9) < 1e-6
    loose = _decode(preds, jnp.array([64, 64]), input_hw=hw, score_thresh=0.1, nms_thresh=0.95,
                   pre_nms_top_k=100, detections_per_img=3)  # IoU 0.818 < 0.95: both kept
    np.testing.assert_allclose(loose["boxes"][1], (41.6, 8, 57.6, 24), atol=1e-4)
    assert np.asarray(loose["valid"]).tolist() == [True, True, False]


def tiny_config(**overrides):
    from experiments.detection.yolo_shapes import get_config

    config = get_config("runlocal")
    config.model.update(small_cnn_features=(8, 16, 16, 32), grid_size=4, head_channels=16,
                        detections_per_img=10)
    config.data.update(image_size=64, max_boxes=4, shapes_max_objects=3)
    config.update(batch_size=2, total_steps=2, log_every=1, write_images=False)
    config.evals.coco.update(every_steps=2, num_examples=4, batch_size=2)
    return override(config, overrides)


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="'model.grid_size' 3 must divide the C4 map side 4"):
        Trainer(tiny_config(**{"model.grid_size": 3}), str(tmp_path / "a"))
    with pytest.raises(ConfigError, match="'model.feature_level' must be one of C1, C2, C3, C4"):
        Trainer(tiny_config(**{"model.feature_level": "C5"}), str(tmp_path / "b"))
    with pytest.raises(ConfigError, match="'model.conf_target'"):
        Trainer(tiny_config(**{"model.conf_target": "half"}), str(tmp_path / "c"))


@pytest.mark.slow
def test_trains_and_evaluates_through_the_trainer(tmp_path):
    # One object per image at most: the ground-truth oracle below needs one object per cell.
    trainer = Trainer(tiny_config(**{"model.head": "fc", "model.fc_hidden": 16,
                                     "data.shapes_max_objects": 1}), str(tmp_path))
    state = trainer.train()
    trainer.close()
    assert int(state.step) == 2
    records = read_metrics(tmp_path)
    train = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in train] == [1, 2]
    for r in train:  # the loss is the sum of the paper's four (weighted) terms
        terms = [r[f"train/{k}"] for k in ("coord", "conf_obj", "conf_noobj", "class")]
        np.testing.assert_allclose(r["train/loss"], sum(terms), rtol=1e-6)
    evals = [r for r in records if "eval/coco/AP" in r]
    assert [r["step"] for r in evals] == [2]
    evaluator, task = trainer.evals["coco"].evaluator, trainer.task
    assert sorted(evaluator.seen_image_ids) == [1, 2, 3, 4]
    m = task.config.model
    outputs = functools.partial(_ground_truth_as_outputs, grid=m.grid_size,
                                boxes_per_cell=m.boxes_per_cell,
                                num_classes=len(evaluator.label_to_category_id),
                                input_hw=task.postprocess.input_hw)
    scores = oracle_scores(evaluator, lambda batch: task.postprocess(outputs(batch), batch["image_hw"]))
    assert scores["AP"] == scores["AR100"] == 1.0, scores


def _ground_truth_as_outputs(batch, grid, boxes_per_cell, num_classes, input_hw):
    """YOLO's raw outputs for the batch's ground truth (one object per cell): the first predictor
    of the object's cell with confidence 1 and (x, y, sqrt w, sqrt h) as in the paper, one-hot
    class probabilities."""
    n, (h, w) = len(batch["boxes"]), input_hw
    boxes = np.zeros((n, grid, grid, boxes_per_cell, 4), np.float32)
    confidence = np.zeros((n, grid, grid, boxes_per_cell), np.float32)
    probs = np.zeros((n, grid, grid, num_classes), np.float32)
    for i in range(n):
        for (x1, y1, x2, y2), label, valid in zip(batch["boxes"][i], batch["labels"][i],
                                                  batch["box_valid"][i]):
            if valid:
                cx, cy = (x1 + x2) / 2 / (w / grid), (y1 + y2) / 2 / (h / grid)
                row, col = min(int(cy), grid - 1), min(int(cx), grid - 1)
                assert confidence[i, row, col, 0] == 0, "two objects in one cell"
                boxes[i, row, col, 0] = (cx - col, cy - row, np.sqrt((x2 - x1) / w),
                                         np.sqrt((y2 - y1) / h))
                confidence[i, row, col, 0] = 1.0
                probs[i, row, col, label - 1] = 1.0
    return YoloPredictions(boxes, confidence, probs)


@pytest.mark.slow
def test_data_parallel_loss_equals_single_device():
    out = run_with_devices("""
        import tempfile, jax, numpy as np
        from tests.numeric import reordered_sum_rtol
        from tests.test_yolo import tiny_config
        from mlx_research.data.pipeline import make_train_iterator
        from mlx_research.train.trainer import Trainer
        losses = {}
        for name, devices, mesh in (("one", jax.devices()[:1], {"data": 1}),
                                    ("eight", jax.devices(), {"data": 8})):
            config = tiny_config(batch_size=8, **{"evals.coco.batch_size": 8})
            config.mesh.update(mesh)
            t = Trainer(config, tempfile.mkdtemp(), devices=devices)
            it = make_train_iterator(t.train_source, global_batch_size=8, seed=0,
                                     transform=t.task.train_transform)
            batch = jax.device_put(next(it), t.batch_sharding)
            with t.mesh_context():
                _, metrics = t.train_step(t.fresh_state(0), batch)
            losses[name] = {k: float(v) for k, v in metrics.items()}
            t.close()
        # The layouts add the first conv's kernel gradient over 8 x 64 x 64 pixels in different
        # orders: float32 rounding allows about eps * sqrt(that) (tests/numeric.py).
        rtol = reordered_sum_rtol(8 * 64 * 64)
        for key in ("loss", "coord", "conf_obj", "conf_noobj", "class", "grad_norm"):
            np.testing.assert_allclose(losses["eight"][key], losses["one"][key], rtol=rtol)
        print("ok", losses["one"]["loss"])
    """)
    assert out.startswith("ok")
