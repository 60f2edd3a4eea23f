"""NADM: memory matching against scipy, L_m and the partitioned uncertainty-weighted report loss
against float64 numpy, semantic targets against a loop, the decoupling's gradient paths, cached
generation against teacher forcing, and the task end to end (one compilation, a batch without
abnormal studies, data parallelism)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
import scipy.spatial.distance
from flax import traverse_util
from flax.core import meta
from scipy.special import log_softmax

from mlx_research.models.decoding import search
from mlx_research.models.report import nadm
from mlx_research.models.report.abnormal_memory import abnormal_memory_loss, memory_assignment
from mlx_research.testing import run_with_devices
from tests.configs import override
from tests.numeric import reordered_sum_rtol
from tests.report_scores import check_logged_scores

# ------------------------------------------------------------------ memory


def _features(seed, batch=3, n=5, m=9, d=4):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(batch, n, d)).astype(np.float32), rng.normal(size=(m, d)).astype(
        np.float32)


def test_memory_matching_is_unique_and_optimal_like_scipy():
    features, memory = _features(0)
    abnormal = np.array([True, False, True])
    assign = np.asarray(jax.jit(memory_assignment)(features, memory, abnormal))
    assert (assign[1] == -1).all()
    for i in (0, 2):
        cost = scipy.spatial.distance.cdist(features[i].astype(np.float64),
                                            memory.astype(np.float64))
        rows, cols = scipy.optimize.linear_sum_assignment(cost)
        assert len(set(assign[i])) == features.shape[1] and (assign[i] >= 0).all()
        np.testing.assert_allclose(cost[np.arange(5), assign[i]].sum(), cost[rows, cols].sum(),
                                   rtol=1e-6)
    with pytest.raises(ValueError, match="memory_size"):
        memory_assignment(features, memory[:4], abnormal)


def test_memory_loss_against_numpy_and_zero_without_abnormal_images():
    features, memory = _features(1)
    abnormal = np.array([True, False, True])
    loss_fn = jax.jit(jax.value_and_grad(
        lambda f, m, a: abnormal_memory_loss(f, m, a)[0], argnums=(0, 1)))
    loss, (grad_features, grad_memory) = loss_fn(features, memory, abnormal)
    f64, m64 = features.astype(np.float64), memory.astype(np.float64)
    codebook = []
    for i in (0, 2):
        _, cols = scipy.optimize.linear_sum_assignment(scipy.spatial.distance.cdist(f64[i], m64))
        codebook.append(np.mean((f64[i] - m64[cols]) ** 2))
    unit = m64 / np.linalg.norm(m64, axis=1, keepdims=True)
    expected = np.mean(codebook) + np.mean((unit @ unit.T - np.eye(9)) ** 2)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    assert not np.asarray(grad_features).any()  # sg[V]: no gradient into the features
    assert np.abs(np.asarray(grad_memory)).sum() > 0

    loss, (_, grad_memory) = loss_fn(features, memory, np.zeros(3, bool))
    assert float(loss) == 0.0 and not np.asarray(grad_memory).any()


# ------------------------------------------------------------------ report loss and targets

def _np_terms(losses, u, form):
    if form == "kendall":
        return np.exp(-u) * losses + u
    if form == "liebel":
        return 0.5 / u**2 * losses + np.log(1 + u**2)
    return losses / u**2 + np.log(1 + u)


@pytest.mark.parametrize("form", nadm.UNCERTAINTY_FORMS)
def test_partitioned_report_loss_against_numpy(form):
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(2, 6, 7)).astype(np.float32)
    tokens = np.array([[4, 5, 6, 2, 0, 0], [3, 3, 4, 5, 6, 2]])
    tags = np.array([[0, 2, 2, 0, 0, 0], [1, 1, 2, 0, 1, 1]])  # no abnormal-semantic token
    u = np.array([0.8, 1.3, 0.6, 1.7, 0.9], np.float32)

    def loss(u):
        token_losses = -jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], -1)[
            ..., 0]
        return nadm.decoupled_report_loss(token_losses, tokens, tags, u, form)

    (total, parts), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(u)
    nll = -np.take_along_axis(log_softmax(logits.astype(np.float64), -1), tokens[..., None],
                              -1)[..., 0]
    real = tokens != 0
    masks = [real & (tags == i) for i in range(4)] + [real]
    expected_parts = np.array([nll[m].mean() if m.any() else 0.0 for m in masks])
    np.testing.assert_allclose(np.asarray(parts), expected_parts, rtol=1e-5)
    present = np.array([m.any() for m in masks])
    assert present.tolist() == [True, True, True, False, True]
    expected = _np_terms(expected_parts, u.astype(np.float64), form)[present].sum()
    np.testing.assert_allclose(float(total), expected, rtol=1e-5)
    assert float(grad[3]) == 0.0 and (np.asarray(grad)[present] != 0).all()


def test_semantic_targets_against_a_loop():
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, 11, size=(4, 9))
    tags = rng.integers(0, 4, size=(4, 9))
    abnormal, normal = jax.jit(nadm.semantic_targets, static_argnums=(2, 3, 4))(
        tokens, tags, 12, 1, 0)  # any tag ids: here abnormal 1, normal 0
    for want, tag in ((abnormal, 1), (normal, 0)):
        expected = np.zeros((4, 12))
        for b in range(4):
            for t in range(9):
                if tags[b, t] == tag:
                    expected[b, tokens[b, t]] = 1
        np.testing.assert_array_equal(np.asarray(want), expected)


# ------------------------------------------------------------------ model

# Without dropout and R2Gen's relational memory (they compile slowly; NADM's paths do not need
# them).
KW = dict(vocab_size=16, max_len=7, backbone="small_cnn", small_cnn_features=(4, 8, 8),
          d_model=16, d_ff=16, num_heads=2, num_layers=1, dropout=0.0, feature_dropout=0.0,
          use_memory=False, memory_size=12, semantic_topk=3, semantic_layers=1)


def _inputs(seed=0, batch=2):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(batch, 1, 16, 16, 1)).astype(np.float32)
    tokens = rng.integers(3, 16, size=(batch, 7))
    tags = rng.integers(0, 4, size=(batch, 7))
    abnormal_targets, normal_targets = nadm.semantic_targets(tokens, tags, 16, 3, 2)
    return dict(images=images, decoder_inputs=np.concatenate([np.ones((batch, 1), int),
                                                              tokens[:, :-1]], 1),
                abnormal_targets=abnormal_targets, normal_targets=normal_targets,
                abnormal=np.array([True, False][:batch] * (batch // 2))), tokens


# XLA:CPU compiles threefry draws slowly; "rbg" keys keep the init and dropout compiles short.
def _key(seed):
    return jax.random.key(seed, impl="rbg")


@pytest.fixture(scope="module")
def tiny_model():
    """The model with N(0, 0.3^2) parameters drawn by numpy (eval_shape: no init compile)."""
    model = nadm.NADM(**KW)
    inputs, tokens = _inputs()
    shapes = meta.unbox(jax.eval_shape(model.init, _key(0), **inputs))
    rng = np.random.default_rng(5)
    params = jax.tree.map(lambda s: 0.3 * rng.normal(size=s.shape).astype(np.float32),
                          shapes["params"])
    stats = jax.tree.map(lambda s: np.ones(s.shape, np.float32), shapes["batch_stats"])
    return model, {"params": params, "batch_stats": stats}, inputs, tokens


@pytest.mark.slow
def test_decoupling_gradient_paths_and_ablation_parameters(tiny_model):
    """Normal semantics never reach the visual network or the abnormal words; the report loss
    does not reach the visual network (reference), the abnormal semantics do."""
    model, variables, inputs, tokens = tiny_model
    inputs = {**inputs, "abnormal": None}  # no L_m: only the gradient paths of the outputs

    def parts(params):
        out, _ = model.apply({**variables, "params": params}, **inputs, train=True,
                             rngs={"dropout": _key(1)}, mutable=["batch_stats"])
        report = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(out["logits"]),
                                               tokens[..., None], -1))
        semantic = [jnp.sum(jax.nn.sigmoid(out[f"{name}_logits"]) * inputs[f"{name}_targets"])
                    for name in ("normal", "abnormal")]
        return jnp.stack([*semantic, report])

    vjp = jax.jit(lambda params, cotangent: jax.vjp(parts, params)[1](cotangent)[0])
    grads = {name: vjp(variables["params"], np.eye(3, dtype=np.float32)[i])
             for i, name in enumerate(("normal", "abnormal", "report"))}

    def norm(tree, prefix):
        flat = traverse_util.flatten_dict(tree, sep="/")
        return sum(float(np.abs(v).sum()) for k, v in flat.items() if k.startswith(prefix))

    for visual in ("backbone", "att_embed", "memory", "encoder_layers_0"):
        assert norm(grads["normal"], visual) == 0 and norm(grads["report"], visual) == 0, visual
        assert norm(grads["abnormal"], visual) > 0, visual
    assert norm(grads["normal"], "abnormal_head") == 0 and norm(grads["normal"], "tag_embed") == 0
    assert norm(grads["normal"], "normal_head") > 0 and norm(grads["report"], "tag_embed") > 0
    assert norm(grads["report"], "decoder_layers_0") > 0

    def names(**flags):
        shapes = jax.eval_shape(nadm.NADM(**KW, **flags).init, _key(0), **inputs)
        return {k.split("/")[0] for k in traverse_util.flatten_dict(shapes["params"], sep="/")}

    assert {"memory", "abnormal_head", "normal_head", "tag_embed", "report_uncertainty"} <= names()
    assert "memory" not in names(abnormal_memory=False)
    assert not {"abnormal_head", "normal_head", "report_uncertainty"} & names(decouple=False)
    assert variables["params"]["memory"]["memory"].shape == (12, 16)
    assert variables["params"]["report_uncertainty"].shape == (5,)


@pytest.mark.slow
def test_greedy_generation_equals_teacher_forced_argmax(tiny_model):
    model, variables, inputs, _ = tiny_model
    images = inputs["images"]
    generated = np.asarray(jax.jit(lambda v: search(
        *nadm.make_step(model, v, images, 7), 1, batch_size=images.shape[0], max_len=7,
        bos_id=1, eos_id=2, pad_id=0))(variables))

    @jax.jit
    def next_logits(prefix):
        context, _ = model.apply(variables, images, method=nadm.NADM.context)
        return model.apply(variables, context, prefix, method=nadm.NADM.decode)

    prefix = np.zeros((2, 7), int)
    prefix[:, 0] = 1
    expected = np.zeros((2, 7), int)
    for t in range(7):
        expected[:, t] = np.asarray(next_logits(prefix))[:, t].argmax(-1)
        if t + 1 < 7:
            prefix[:, t + 1] = expected[:, t]
    for row, want in zip(generated, expected):
        end = list(want).index(2) + 1 if 2 in want else 7
        np.testing.assert_array_equal(row[:end], want[:end])
        assert (row[end:] == 0).all()


# ------------------------------------------------------------------ task

def tiny_config(**overrides):
    from experiments.report.nadm_cxr import get_config

    config = get_config("runlocal")
    config.model.update(small_cnn_features=(8, 16, 16), d_model=32, d_ff=32, num_heads=2,
                        num_layers=1, rm_num_heads=2, rm_d_model=32, semantic_topk=4,
                        semantic_layers=1, matcher="device", dropout=0.0, feature_dropout=0.0)
    config.data.update(image_size=32, resize=32, crop=28, vocab_studies=200, views=1)
    # Batch 8 (one example per data-parallel device) without dropout (faster compiles).
    config.update(batch_size=8, total_steps=2, log_every=1)
    config.checkpoint.every_steps = 2
    config.evals.report.update(every_steps=2, num_examples=6, batch_size=8, beam_size=1,
                               num_pictures=2, meteor=False)
    return override(config, overrides)


@pytest.mark.slow
def test_trains_evaluates_compiles_once_and_data_parallel_equals_single_device(tmp_path):
    """runlocal end to end; then the first step from a fresh state (one device here) on a batch
    with abnormal studies, on a batch without, and under mesh data=8 (8 fake CPU devices in a
    subprocess) with the same loss and gradient norm."""
    from mlx_research.data.pipeline import make_train_iterator
    from mlx_research.train.metrics import read_metrics
    from mlx_research.train.trainer import Trainer

    trainer = Trainer(tiny_config(), str(tmp_path))
    trainer.train()
    rows = read_metrics(tmp_path)
    scores = [r for r in rows if "eval/report/bleu_4" in r][-1]
    reports = json.loads((tmp_path / "eval" / "report" / "reports_00000002.json").read_text())
    evaluator = trainer.evals["report"].evaluator
    check_logged_scores(scores, reports, evaluator.observations, evaluator.abnormal)
    train = [r for r in rows if "train/loss_memory" in r]
    assert len(train) == 2 and all(r["train/loss_weight"] == 8 for r in train)

    it = make_train_iterator(trainer.train_source, global_batch_size=8, seed=0,
                             transform=trainer.task.train_transform)
    batch = next(it)
    assert (batch["labels"][:, 0] < 1).any()  # the first batch has an abnormal study
    normal = {**batch, "labels": np.eye(1, batch["labels"].shape[1], dtype=np.float32)[[0] * 8]}
    with trainer.mesh_context():
        state, one = trainer.train_step(trainer.fresh_state(0),
                                        jax.device_put(batch, trainer.batch_sharding))
        _, metrics = trainer.train_step(state, jax.device_put(normal, trainer.batch_sharding))
    assert float(one["loss_memory"]) > 0
    assert float(metrics["loss_memory"]) == 0
    w, parts = trainer.config.loss, {k: float(v) for k, v in metrics.items()}
    total = (parts["loss_report"] + w.abnormal_weight * parts["loss_semantic_abnormal"]
             + w.normal_weight * parts["loss_semantic_normal"])  # and no memory term
    np.testing.assert_allclose(parts["loss"], total, rtol=1e-6)  # float32 sums: a few eps
    assert trainer.train_step._cache_size() == 1
    trainer.close()

    out = run_with_devices("""
        import json, tempfile, jax
        from tests.test_nadm import tiny_config
        from mlx_research.data.pipeline import make_train_iterator
        from mlx_research.train.trainer import Trainer
        config = tiny_config()
        config.mesh.update({"data": 8})
        t = Trainer(config, tempfile.mkdtemp())
        it = make_train_iterator(t.train_source, global_batch_size=8, seed=0,
                                 transform=t.task.train_transform)
        with t.mesh_context():
            _, metrics = t.train_step(t.fresh_state(0), jax.device_put(next(it), t.batch_sharding))
        print(json.dumps({k: float(v) for k, v in metrics.items()}))
        t.close()
    """)
    data8 = json.loads(out.strip().splitlines()[-1])
    # The layouts add the first conv's kernel gradient over 8 x 28 x 28 pixels in different
    # orders: float32 rounding allows about eps * sqrt(that) (tests/numeric.py).
    rtol = reordered_sum_rtol(8 * 28 * 28)
    for key in ("loss", "grad_norm", "loss_memory", "loss_semantic_normal", "loss_report"):
        np.testing.assert_allclose(data8[key], float(one[key]), rtol=rtol, err_msg=key)


@pytest.mark.parametrize("key,value,match", [
    ("model.uncertainty_form", "gauss", "'model.uncertainty_form' must be one of"),
    ("model.matcher", "greedy", "'model.matcher' must be one of"),
    ("loss.asl_clip", 2.0, "'loss.asl_clip' must be in"),
    ("model.semantic_topk", 1000, "'model.semantic_topk' = 1000 exceeds the vocabulary"),
])
def test_bad_config_is_a_one_line_error(tmp_path, key, value, match):
    from mlx_research.errors import ConfigError
    from mlx_research.train.trainer import Trainer

    with pytest.raises(ConfigError, match=match):
        Trainer(tiny_config(**{key: value}), str(tmp_path))
