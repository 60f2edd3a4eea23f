"""DETR: matched loss against a float64 numpy/scipy reference (auxiliary layers, padded targets,
an image without boxes), both matchers, post-processing, data=4 x model=2 against one device, and
the trainer end to end with evaluation."""

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from mlx_research.data.detection_transforms import DetectionTransform
from mlx_research.data.shapes import SyntheticShapes
from mlx_research.errors import ConfigError
from mlx_research.models.detection.detr import feature_mask, postprocess
from mlx_research.models.detection.set_criterion import CriterionWeights, set_criterion
from mlx_research.testing import run_with_devices
from mlx_research.train.metrics import read_metrics
from mlx_research.train.trainer import Trainer
from tests.configs import override
from tests.detection_oracle import one_hot_logits, oracle_scores

EOS_COEF = 0.1


def tiny_config(**overrides):
    from experiments.detection.detr_shapes import get_config

    config = get_config("runlocal")
    config.model.update(small_cnn_features=(8, 16, 32), feature_level="C3", hidden_dim=16,
                        nhead=2, num_encoder_layers=1, num_decoder_layers=2, dim_feedforward=32,
                        dropout=0.0, num_queries=5)
    config.data.update(image_size=64, shapes_image_size=64, max_boxes=4, shapes_max_objects=3)
    config.update(batch_size=2, total_steps=2, log_every=1)
    config.evals.coco.update(every_steps=2, num_examples=4, batch_size=2)
    return override(config, overrides)


def _batch(num_images, seed=3, empty=()):
    """Eval-transformed shapes; images listed in `empty` lose their boxes, one image keeps a
    padded row (fewer boxes than max_boxes)."""
    source = SyntheticShapes(num_images, image_size=64, max_objects=3, seed=seed)
    transform = DetectionTransform(image_size=64, max_boxes=4, train=False)
    examples = [transform(source[i]) for i in range(num_images)]
    batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
    batch["box_valid"][list(empty)] = False
    return {k: jnp.asarray(v) for k, v in batch.items()}


# ------------------------------------------------------------------ float64 reference


def _xyxy(cxcywh):
    c, s = cxcywh[..., :2], cxcywh[..., 2:]
    return np.concatenate([c - s / 2, c + s / 2], -1)


def _giou(a, b):
    """Pairwise GIoU of xyxy boxes a [N, 4], b [M, 4] (Rezatofighi et al.)."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    out = np.zeros((len(a), len(b)))
    for i in range(len(a)):
        for j in range(len(b)):
            iw = max(0.0, min(a[i, 2], b[j, 2]) - max(a[i, 0], b[j, 0]))
            ih = max(0.0, min(a[i, 3], b[j, 3]) - max(a[i, 1], b[j, 1]))
            union = area_a[i] + area_b[j] - iw * ih
            hull = ((max(a[i, 2], b[j, 2]) - min(a[i, 0], b[j, 0]))
                    * (max(a[i, 3], b[j, 3]) - min(a[i, 1], b[j, 1])))
            out[i, j] = iw * ih / union - (hull - union) / hull
    return out


def reference_loss(logits, boxes, pixel_boxes, labels, valid, image_hw):
    """DETR's criterion in float64 with a loop over layers and images; returns (total, rows)
    with rows[layer] = (ce, l1, giou)."""
    logits, boxes = np.asarray(logits, np.float64), np.asarray(boxes, np.float64)
    num_classes = logits.shape[-1] - 1
    num_boxes = max(int(np.asarray(valid).sum()), 1)
    rows, total = [], 0.0
    for layer in range(logits.shape[0]):
        nll_sum = weight_sum = l1 = giou = 0.0
        for b in range(logits.shape[1]):
            keep = np.asarray(valid[b])
            h, w = np.asarray(image_hw[b], np.float64)
            x1, y1, x2, y2 = np.asarray(pixel_boxes[b], np.float64)[keep].T
            targets = np.stack([(x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w,
                                (y2 - y1) / h], -1).reshape(-1, 4)
            cls = np.asarray(labels[b])[keep] - 1
            z = logits[layer, b]
            log_prob = z - z.max(-1, keepdims=True)
            log_prob = log_prob - np.log(np.exp(log_prob).sum(-1, keepdims=True))
            target_class = np.full(len(z), num_classes)
            if len(targets):
                pairwise_l1 = np.abs(boxes[layer, b][:, None] - targets[None]).sum(-1)
                pairwise_giou = _giou(_xyxy(boxes[layer, b]), _xyxy(targets))
                cost = 5 * pairwise_l1 - np.exp(log_prob)[:, cls] - 2 * pairwise_giou
                q, t = scipy.optimize.linear_sum_assignment(cost)
                target_class[q] = cls[t]
                l1 += pairwise_l1[q, t].sum()
                giou += (1 - pairwise_giou[q, t]).sum()
            weights = np.where(target_class == num_classes, EOS_COEF, 1.0)
            nll_sum += (weights * -log_prob[np.arange(len(z)), target_class]).sum()
            weight_sum += weights.sum()
        ce, l1, giou = nll_sum / weight_sum, l1 / num_boxes, giou / num_boxes
        rows.append((ce, l1, giou))
        total += ce + 5 * l1 + 2 * giou
    return total, np.array(rows)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(trainer, initial state, jitted model outputs (train mode), jitted (loss, grads) of the
    device matcher) of plain DETR; the trainer's workdir writes pictures."""
    config = tiny_config(write_images=True, **{"model.spatial_prior": False,
                                               "model.query_groups": 1})  # plain DETR
    trainer = Trainer(config, str(tmp_path_factory.mktemp("detr")))
    task, state = trainer.task, trainer.fresh_state()

    @jax.jit
    def outputs(batch):
        return task.model.apply({"params": state.params, **state.model_state}, batch["image"],
                                batch["image_hw"], train=True, mutable=list(state.model_state))[0]

    def loss(params, batch):
        (loss_sum, weight), (metrics, _) = task.loss(params, state.model_state, batch,
                                                     jax.random.key(0))
        return loss_sum, (weight, metrics)

    yield trainer, state, outputs, jax.jit(jax.value_and_grad(loss, has_aux=True))
    trainer.close()


def _reference(outputs, batch):
    logits, boxes = outputs(batch)
    return reference_loss(logits, boxes, batch["boxes"], batch["labels"], batch["box_valid"],
                          batch["image_hw"])


@pytest.mark.slow
def test_matched_loss_equals_numpy_scipy_reference_for_both_matchers(setup):
    trainer, state, outputs, loss_and_grad = setup
    batch = _batch(3, empty=(1,))
    batch["image_hw"] = jnp.array([[64, 48], [64, 64], [40, 64]])  # normalise by (h, w), not S
    assert int(batch["box_valid"][0].sum()) < 4 or int(batch["box_valid"][2].sum()) < 4
    assert int(batch["box_valid"].sum()) >= 3
    logits, boxes = outputs(batch)
    assert logits.shape == (2, 3, 5, 4) and boxes.shape == (2, 3, 5, 4)  # L, B, Q, K + 1 / 4
    want, rows = _reference(outputs, batch)
    assert np.all(rows[:, 1:] > 0) and not np.allclose(rows[0], rows[1])
    (loss_sum, (weight, metrics)), _ = loss_and_grad(state.params, batch)
    assert float(weight) == 3
    np.testing.assert_allclose(float(loss_sum) / 3, want, rtol=1e-5)
    last = [float(metrics[k]) for k in ("loss_ce", "loss_bbox", "loss_giou")]
    np.testing.assert_allclose(last, rows[-1], rtol=1e-5)
    task = trainer.task
    criterion = task.criterion
    for matcher, aux, expected in (("scipy", True, want),
                                   ("device", False, _reference(
                                       lambda b: [x[-1:] for x in outputs(b)], batch)[0])):
        task.criterion = dataclasses.replace(criterion, matcher=matcher, aux_loss=aux)
        try:
            (loss_sum, weight), _ = jax.jit(task.loss)(state.params, state.model_state, batch,
                                                       jax.random.key(0))
        finally:
            task.criterion = criterion
        np.testing.assert_allclose(float(loss_sum / weight), expected, rtol=1e-5)


@pytest.mark.slow
def test_no_boxes_and_a_single_box_give_the_reference_loss_and_finite_gradients(setup):
    _, state, outputs, loss_and_grad = setup
    empty = _batch(3, empty=(0, 1, 2))
    assert int(empty["labels"][2, 0]) > 0
    single = dict(empty, box_valid=empty["box_valid"].at[2, 0].set(True))  # num_boxes = 1
    for batch in (empty, single):
        (loss_sum, _), grads = loss_and_grad(state.params, batch)
        want, rows = _reference(outputs, batch)
        np.testing.assert_allclose(float(loss_sum) / 3, want, rtol=1e-5)
        assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    assert np.all(rows[:, 1:] > 0)  # the single box is matched in every layer
    assert np.all(_reference(outputs, empty)[1][:, 1:] == 0)  # no box: no-object CE only


@pytest.mark.slow
def test_query_groups_give_the_mean_of_each_groups_loss():
    rng = np.random.default_rng(0)
    layers, batch, groups, queries = 2, 3, 2, 4
    logits = rng.normal(size=(layers, batch, groups * queries, 4)).astype(np.float32)
    boxes = rng.uniform(0.2, 0.6, size=(layers, batch, groups * queries, 4)).astype(np.float32)
    corner = rng.uniform(0, 0.5, size=(batch, 3, 2))
    xyxy = np.concatenate([corner, corner + rng.uniform(0.1, 0.5, size=(batch, 3, 2))], -1)
    labels = rng.integers(1, 4, size=(batch, 3))
    valid = np.array([[True, True, False], [False] * 3, [True] * 3])
    cxcywh = np.concatenate([(xyxy[..., :2] + xyxy[..., 2:]) / 2, xyxy[..., 2:] - xyxy[..., :2]],
                            -1).astype(np.float32)
    total, _ = jax.jit(set_criterion, static_argnames=("weights", "method", "groups"))(
        logits, boxes, cxcywh, labels, valid, weights=CriterionWeights(), method="device",
        groups=groups)
    per_group = [reference_loss(logits[:, :, g * queries:(g + 1) * queries],
                                boxes[:, :, g * queries:(g + 1) * queries], xyxy, labels, valid,
                                np.ones((batch, 2)))[0] for g in range(groups)]
    assert abs(per_group[0] - per_group[1]) > 1e-3
    np.testing.assert_allclose(float(total), np.mean(per_group), rtol=1e-5)


@pytest.mark.slow
def test_predict_uses_the_first_query_group():
    from mlx_research.train.tasks.detr import Task

    task = Task(tiny_config(**{"model.query_groups": 3}), jnp.float32)
    batch = _batch(2)
    variables = task.init_variables(jax.random.key(0), batch)
    logits, boxes = jax.jit(task.model.apply)(variables, batch["image"], batch["image_hw"])
    assert logits.shape == (2, 2, 15, 4)  # layers, images, 3 groups x 5 queries, K + 1
    got = jax.jit(task.predict)(variables, batch)
    want = postprocess(logits[-1, :, :5], boxes[-1, :, :5], batch["image_hw"])
    for key in ("boxes", "scores", "labels"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-6, err_msg=key)


def test_postprocess_scores_labels_and_pixel_boxes():
    logits = jnp.array([[[0.0, 2.0, 1.0, 5.0], [3.0, 0.0, 0.0, 1.0]]])  # K = 3, no-object last
    boxes = jnp.array([[[0.5, 0.5, 0.2, 0.4], [0.25, 0.75, 0.5, 0.5]]])
    out = postprocess(logits, boxes, jnp.array([[40, 80]]))  # h = 40, w = 80
    prob = np.exp(np.asarray(logits[0], np.float64))
    prob /= prob.sum(-1, keepdims=True)
    np.testing.assert_array_equal(out["labels"][0], [2, 1])  # best real class, 1-based
    np.testing.assert_allclose(out["scores"][0], [prob[0, 1], prob[1, 0]], rtol=1e-6)
    np.testing.assert_allclose(out["boxes"][0], [[32, 12, 48, 28], [0, 20, 40, 40]], atol=1e-5)
    assert bool(out["valid"].all())


def test_feature_mask_is_nearest_downsampling_of_the_pixel_mask():
    image_hw = np.array([[64, 64], [40, 17]])
    got = np.asarray(feature_mask(jnp.asarray(image_hw), (8, 8), 8))
    for b, (h, w) in enumerate(image_hw):
        pixels = (np.arange(64)[:, None] < h) & (np.arange(64)[None, :] < w)
        np.testing.assert_array_equal(got[b], pixels[::8, ::8])  # F.interpolate "nearest"
    assert got[1].sum() == 5 * 3


@pytest.mark.parametrize("overrides, message", [
    ({"model.feature_level": "C4"}, "'model.feature_level' must be one of C1, C2, C3"),
    ({"model.hidden_dim": 18}, "'model.hidden_dim' = 18 must be a multiple of 4"),
    ({"model.matcher": "greedy"}, "'model.matcher' must be one of device, scipy"),
    ({"mesh.model": 4, "model.nhead": 2}, "divisible by mesh.model = 4"),
])
def test_config_errors_name_the_key(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        Trainer(tiny_config(**overrides), str(tmp_path))


@pytest.mark.slow
def test_trainer_steps_and_coco_evaluation(setup):
    trainer = setup[0]
    state = trainer.train()
    assert int(state.step) == 2
    records = read_metrics(trainer.workdir)
    assert [r["step"] for r in records if "train/loss" in r] == [1, 2]
    evals = [r for r in records if "eval/coco/AP" in r]
    assert [r["step"] for r in evals] == [2]
    evaluator = trainer.evals["coco"].evaluator
    assert sorted(evaluator.seen_image_ids) == [1, 2, 3, 4]
    assert list(Path(trainer.workdir, "images").glob("coco_detections_*.png"))
    num_classes = len(evaluator.label_to_category_id)
    scores = oracle_scores(evaluator, lambda batch: postprocess(
        *_ground_truth_as_outputs(batch, num_classes), batch["image_hw"]))
    assert scores["AP"] == scores["AR100"] == 1.0, scores


def _ground_truth_as_outputs(batch, num_classes):
    """DETR's raw outputs for the batch's ground truth, one query per box row: logits [B, M, K + 1]
    (the no-object class, last, for padding rows) and cxcywh boxes over the valid image size."""
    x1, y1, x2, y2 = np.moveaxis(np.asarray(batch["boxes"], np.float64), -1, 0)
    h, w = np.asarray(batch["image_hw"], np.float64)[:, None, :].transpose(2, 0, 1)
    boxes = np.stack([(x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h], -1)
    column = np.where(batch["box_valid"], batch["labels"] - 1, num_classes)
    return one_hot_logits(column, num_classes + 1), boxes.astype(np.float32)


@pytest.mark.slow
def test_data4_model2_equals_single_device():
    out = run_with_devices("""
        import tempfile, jax, numpy as np
        from tests.numeric import reordered_sum_rtol
        from tests.test_detr import tiny_config
        from mlx_research.data.pipeline import make_train_iterator
        from mlx_research.train.trainer import Trainer
        results = {}
        for name, devices, mesh in (("one", jax.devices()[:1], {"data": 1, "model": 1}),
                                    ("tp", jax.devices(), {"data": 4, "model": 2})):
            config = tiny_config(batch_size=8, **{"evals.coco.batch_size": 8, "model.dropout": 0.1})
            assert config.model.spatial_prior and config.model.query_groups == 3
            config.mesh.update(mesh)
            t = Trainer(config, tempfile.mkdtemp(), devices=devices)
            it = make_train_iterator(t.train_source, global_batch_size=8, seed=0,
                                     transform=t.task.train_transform)
            batch = jax.device_put(next(it), t.batch_sharding)
            state = t.fresh_state(0)
            spec = state.params["decoder"]["layers_0"]["mlp"]["wi"]["kernel"].sharding.spec
            with t.mesh_context():
                state, metrics = t.train_step(state, batch)
                _, metrics2 = t.train_step(state, batch)
            results[name] = ({k: float(v) for k, v in metrics.items()}, float(metrics2["loss"]),
                             str(spec))
            t.close()
        one, tp = results["one"], results["tp"]
        assert "model" in tp[2], tp[2]
        # The layouts add the first conv's kernel gradient over 8 x 64 x 64 pixels in different
        # orders: float32 rounding allows about eps * sqrt(that) (tests/numeric.py).
        rtol = reordered_sum_rtol(8 * 64 * 64)
        for key in ("loss", "loss_ce", "loss_bbox", "loss_giou", "grad_norm"):
            np.testing.assert_allclose(tp[0][key], one[0][key], rtol=rtol, err_msg=key)
        np.testing.assert_allclose(tp[1], one[1], rtol=rtol)
        print("ok", one[0]["loss"])
    """)
    assert out.startswith("ok")
