"""MKMIA: alignment losses against float64 numpy formulas, the knowledge dictionary's tokens, empty
and masked histories, cached generation, configs, the trainer end to end and data parallelism."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core.meta import unbox
from scipy.special import log_softmax, softmax

from mlx_research.data.pipeline import make_eval_iterator, make_train_iterator, to_global_batch
from mlx_research.data.tokenizer import EOS_ID, PAD_ID, UNK_ID, Vocabulary
from mlx_research.errors import ConfigError
from mlx_research.models.report.alignment import (
    coarse_alignment_losses,
    fine_alignment_kl,
    sequence_mask,
)
from mlx_research.models.report.mkmia import KnowledgeFusion
from mlx_research.testing import run_with_devices
from mlx_research.train.metrics import read_metrics
from mlx_research.train.tasks.mkmia import Task, dictionary_tokens
from mlx_research.train.trainer import Trainer
from tests.configs import override
from tests.numeric import reordered_sum_rtol
from tests.report_scores import check_logged_scores

MAX_LEN, BATCH = 24, 8


def tiny_config(*presets, **overrides):
    """runlocal with a tiny model, no dropout (the data-parallel test compares losses) and greedy
    evaluation; train and evaluation batches of BATCH (one compile of the model's forward).
    R2Gen's relational memory is off (a third less compile time; tests/test_r2gen_model.py covers
    it, and MKMIA changes only the memory the decoder attends to)."""
    from experiments.report.mkmia_cxr import get_config

    config = get_config(",".join(("runlocal", *presets)))
    config.model.update(small_cnn_features=(8, 8, 16), d_model=16, d_ff=16, num_heads=2,
                        num_layers=1, rm_num_heads=2, rm_d_model=16, align_dim=8, dropout=0.0,
                        feature_dropout=0.0, use_memory=False)
    config.data.update(image_size=32, resize=32, crop=24, vocab_studies=100, max_len=MAX_LEN)
    config.update(batch_size=BATCH, total_steps=2, log_every=1, write_images=False)
    config.checkpoint.every_steps = 2
    config.evals.report.update(every_steps=2, num_examples=BATCH, batch_size=BATCH, beam_size=1,
                               num_pictures=1, meteor=False)
    return override(config, overrides)


# ------------------------------------------------------------------ numpy references

def np_unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_coarse(image, report, temperature):
    """1 - cos of matched rows; symmetric InfoNCE written out row by row."""
    cos = np.sum(np_unit(image) * np_unit(report), axis=-1)
    logits = np_unit(image) @ np_unit(report).T / temperature
    i2t = [-log_softmax(logits[i])[i] for i in range(len(image))]
    t2i = [-log_softmax(logits[:, i])[i] for i in range(len(image))]
    return np.mean(1 - cos), np.mean(0.5 * (np.array(i2t) + np.array(t2i)))


def np_fine_kl(regions, words, valid, tau):
    """KL(q || p) of every real word over all regions and of every region over all real words,
    p the batch-wide softmax, q the matched study's softmax (zero elsewhere), by loops."""
    b, t, n = words.shape[0], words.shape[1], regions.shape[1]
    sim = np.einsum("ita,jna->itjn", np_unit(words), np_unit(regions)) / tau
    word_kls = []
    for i in range(b):
        for w in range(t):
            if not valid[i, w]:
                continue
            p = softmax(sim[i, w].reshape(-1)).reshape(b, n)
            q = softmax(sim[i, w, i])
            word_kls.append(np.sum(q * (np.log(q) - np.log(p[i]))))
    real = [(i, w) for i in range(b) for w in range(t) if valid[i, w]]
    region_kls = []
    for j in range(b):
        own = [w for w in range(t) if valid[j, w]]
        if not own:
            continue
        for r in range(n):
            p = softmax([sim[i, w, j, r] for i, w in real])
            p_own = np.array([p[real.index((j, w))] for w in own])
            q = softmax([sim[j, w, j, r] for w in own])
            region_kls.append(np.sum(q * (np.log(q) - np.log(p_own))))
    return 0.5 * (np.mean(word_kls) + np.mean(region_kls))


# ------------------------------------------------------------------ losses

def test_coarse_alignment_losses_match_numpy():
    rng = np.random.default_rng(0)
    image, report = rng.normal(size=(2, 5, 7))
    report[2] = 3 * image[2]  # one perfectly aligned pair: cosine loss 0 for it
    for temperature in (0.07, 1.0):
        cos, con = jax.jit(coarse_alignment_losses, static_argnums=2)(
            jnp.float32(image), jnp.float32(report), temperature)
        want_cos, want_con = np_coarse(image, report, temperature)
        np.testing.assert_allclose(cos, want_cos, rtol=1e-5)
        np.testing.assert_allclose(con, want_con, rtol=1e-5)


def test_fine_alignment_kl_matches_numpy():
    rng = np.random.default_rng(1)
    regions, words = rng.normal(size=(3, 4, 6)), rng.normal(size=(3, 5, 6))
    valid = np.ones((3, 5), bool)
    valid[0, 3:] = False
    valid[1, 1:] = False
    fine = jax.jit(fine_alignment_kl, static_argnums=3)
    for tau in (0.1, 1.0):
        got = fine(jnp.float32(regions), jnp.float32(words), valid, tau)
        np.testing.assert_allclose(got, np_fine_kl(regions, words, valid, tau), rtol=1e-4)
    # A report without any real word adds no word terms and its image no region terms.
    valid[2] = False
    got = fine(jnp.float32(regions), jnp.float32(words), valid, 0.5)
    np.testing.assert_allclose(got, np_fine_kl(regions, words, valid, 0.5), rtol=1e-4)
    # Identical regions and words (no alignment information): log B for the words, and for the
    # regions -log of the own report's share of the real words.
    flat = fine(jnp.ones((3, 4, 6)), jnp.ones((3, 5, 6)), np.ones((3, 5), bool), 0.5)
    np.testing.assert_allclose(flat, np.log(3), rtol=1e-5)


def test_sequence_mask_reads_up_to_the_first_eos():
    tokens = np.array([[5, 6, EOS_ID, 7, EOS_ID, 9], [PAD_ID] * 6, [5, PAD_ID, 6, EOS_ID, 0, 0]])
    want = np.array([[1, 1, 1, 0, 0, 0], [0] * 6, [1, 0, 1, 1, 0, 0]], bool)
    np.testing.assert_array_equal(sequence_mask(jnp.asarray(tokens), PAD_ID, EOS_ID), want)


def test_dictionary_tokens_rows_organs_fields():
    vocab = Vocabulary(["heart", "enlarged", "lungs", "clear", "the", "are"])
    knowledge = {"heart": {"aliases": ["heart", "cardiac"], "normal": ["no cardiomegaly"],
                           "abnormal": ["enlarged"]},
                 "lung": {"aliases": ["lungs"], "normal": ["the lungs are clear"],
                          "abnormal": ["edema"]}}
    tokens, organs, fields = dictionary_tokens(knowledge, vocab)
    # "cardiac", "no cardiomegaly" and "edema" have no known word and are left out.
    ids = vocab.token_id
    want = [[ids("heart"), EOS_ID, 0, 0, 0], [ids("enlarged"), EOS_ID, 0, 0, 0],
            [ids("lungs"), EOS_ID, 0, 0, 0],
            [ids("the"), ids("lungs"), ids("are"), ids("clear"), EOS_ID]]
    np.testing.assert_array_equal(tokens, want)
    np.testing.assert_array_equal(organs, [0, 0, 1, 1])
    np.testing.assert_array_equal(fields, [0, 2, 0, 1])
    cut, _, _ = dictionary_tokens(knowledge, vocab, length=3)
    np.testing.assert_array_equal(cut[3], [ids("the"), ids("lungs"), EOS_ID])
    assert UNK_ID not in tokens[:, 0]
    with pytest.raises(ValueError, match="no phrase has a word in the report vocabulary"):
        dictionary_tokens(knowledge, Vocabulary(["pneumothorax"]))


# ------------------------------------------------------------------ model

def np_layer_norm(x, p, eps=1e-6):
    """R2Gen's LayerNorm: unbiased std, eps added to the std."""
    return p["gamma"] * (x - x.mean(-1, keepdims=True)) / (x.std(-1, ddof=1, keepdims=True)
                                                           + eps) + p["beta"]


@pytest.mark.slow
def test_fusion_skips_studies_without_knowledge_and_masks_padding():
    """Row 1 has no valid knowledge token: its output is the final norm of its input (numpy),
    whatever the keys, with finite gradients; invalid keys of row 0 do not matter, valid ones do."""
    fusion = KnowledgeFusion(d_model=8, nhead=2, dropout=0.0)
    rng = np.random.default_rng(2)
    x, keys = jnp.float32(rng.normal(size=(2, 3, 8))), jnp.float32(rng.normal(size=(2, 4, 8)))
    valid = np.array([[1, 1, 0, 0], [0, 0, 0, 0]], bool)
    shapes = jax.eval_shape(fusion.init, jax.random.key(0), x, keys, valid)
    variables = jax.tree.map(lambda s: jnp.float32(rng.normal(size=s.shape) * 0.5),
                             unbox(shapes))  # every bias and norm away from 0 / 1
    apply = jax.jit(fusion.apply)
    base = apply(variables, x, keys, valid)
    norm = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"]["norm_out"])
    np.testing.assert_allclose(base[1], np_layer_norm(np.float64(x[1]), norm), rtol=1e-4,
                               atol=1e-5)
    other = apply(variables, x, keys.at[0, 2:].set(5.0).at[1].set(-3.0), valid)
    np.testing.assert_allclose(other, base, rtol=1e-6, atol=1e-6)
    assert np.abs(apply(variables, x, keys.at[0, 0].set(5.0), valid)[0] - base[0]).max() > 1e-3
    grads = jax.jit(jax.grad(lambda v, x: fusion.apply(v, x, keys, valid)[1].sum(),
                             argnums=(0, 1)))(variables, x)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny config trained for 2 steps and evaluated: (trainer, final state, workdir)."""
    workdir = tmp_path_factory.mktemp("mkmia")
    trainer = Trainer(tiny_config(), str(workdir))
    state = trainer.train()
    trainer.close()
    return trainer, state, workdir


def _train_batch(trainer, seed=1):
    it = make_train_iterator(trainer.train_source, global_batch_size=BATCH, seed=seed,
                             transform=trainer.task.train_transform)
    return next(it)


@functools.cache
def _forward(trainer):
    """Jitted evaluation-mode model call on a batch's model inputs (one compile for the file)."""
    model = trainer.task.model
    return jax.jit(lambda variables, inputs: model.apply(variables, **inputs))


def _with_priors(batch, vocab):
    """Even rows get a prior report, odd rows none."""
    priors = ["the heart is enlarged . the lungs are clear .", "",
              "there is a small left pleural effusion .", ""] * (BATCH // 4)
    prior_tokens = np.stack([vocab.encode(p, MAX_LEN) if p else np.zeros(MAX_LEN, np.int32)
                             for p in priors])
    return {**batch, "prior_tokens": prior_tokens}


@pytest.mark.slow
def test_trainer_runs_evaluates_and_compiles_once(trained):
    trainer, state, workdir = trained
    assert int(state.step) == 2 and int(state.bad_step) < 0
    assert trainer.train_step._cache_size() == 1
    rows = read_metrics(workdir)
    train, w = [r for r in rows if "train/loss" in r], trainer.config.loss
    assert [r["step"] for r in train] == [1, 2]
    for r in train:  # the logged total is the weighted sum of the logged terms
        total = (r["train/loss_ce"] + w.w_cos * r["train/loss_cos"]
                 + w.w_con * r["train/loss_con"] + w.w_kl * r["train/loss_kl"])
        np.testing.assert_allclose(r["train/loss"], total, rtol=1e-6)
    scores = [r for r in rows if "eval/report/bleu_4" in r][-1]
    reports = json.loads((workdir / "eval" / "report" / "reports_00000002.json").read_text())
    assert len(reports) == BATCH
    evaluator = trainer.evals["report"].evaluator
    check_logged_scores(scores, reports, evaluator.observations, evaluator.abnormal)


@pytest.mark.slow
def test_studies_without_prior_give_finite_loss_and_gradients(trained):
    trainer, state, _ = trained
    batch = _train_batch(trainer)
    batch["prior_tokens"] = np.zeros_like(batch["prior_tokens"])
    with trainer.mesh_context():
        copy = jax.tree.map(jnp.copy, state)  # the step donates its state
        new_state, metrics = trainer.train_step(copy, jax.device_put(batch,
                                                                     trainer.batch_sharding))
    assert trainer.train_step._cache_size() == 1
    assert int(new_state.step) == 3 and int(new_state.bad_step) < 0  # loss and gradients finite
    weights = trainer.config.loss
    total = metrics["loss_ce"] + weights.w_cos * metrics["loss_cos"] + (
        weights.w_con * metrics["loss_con"] + weights.w_kl * metrics["loss_kl"])
    np.testing.assert_allclose(metrics["loss"], total, rtol=1e-5)


@pytest.mark.slow
def test_history_padding_is_masked_and_the_history_is_used(trained):
    trainer, state, _ = trained
    task, forward = trainer.task, _forward(trainer)
    variables = {"params": state.params, **state.model_state}
    batch = _with_priors(_train_batch(trainer), task.vocab)
    base = forward(variables, task.model_inputs(batch))
    prior = batch["prior_tokens"].copy()
    for row in (0, 2):
        after = np.arange(MAX_LEN) > np.argmax(prior[row] == EOS_ID)
        prior[row, after] = np.arange(after.sum()) % 20 + 4  # words after EOS
    garbage = forward(variables, task.model_inputs({**batch, "prior_tokens": prior}))
    for key in base:
        np.testing.assert_allclose(garbage[key], base[key], rtol=1e-6, atol=1e-6, err_msg=key)
    prior[0, 1] = prior[0, 1] + 1  # a real word of the history
    changed = forward(variables, task.model_inputs({**batch, "prior_tokens": prior}))
    assert np.abs(changed["logits"][0] - base["logits"][0]).max() > 1e-5
    np.testing.assert_allclose(changed["logits"][1:], base["logits"][1:], rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_greedy_generation_decodes_the_fused_memory(trained):
    """The evaluator's greedy tokens equal the argmax of teacher-forced logits on their own
    prefix, which read the knowledge-fused memory (dictionary and the batch's prior reports)."""
    trainer, state, _ = trained
    task, evaluator = trainer.task, trainer.evals["report"].evaluator
    variables = {"params": state.params, **state.model_state}
    batch = next(make_eval_iterator(evaluator.source, global_batch_size=BATCH,
                                    transform=evaluator.transform))
    batch = to_global_batch(_with_priors(batch, task.vocab), trainer.batch_sharding)
    with trainer.mesh_context():
        tokens = trainer.evals["report"].predict(variables, batch)["tokens"]
    assert trainer.evals["report"].predict._cache_size() == 1  # the evaluation's program
    inputs = task.model_inputs(jax.tree.map(np.asarray, {**batch, "tokens": tokens}))
    logits = _forward(trainer)(variables, inputs)["logits"]
    real = sequence_mask(tokens, PAD_ID, EOS_ID)
    np.testing.assert_array_equal(np.where(real, logits.argmax(-1), PAD_ID), tokens)


# ------------------------------------------------------------------ configs

@pytest.mark.parametrize("key,value,match", [
    ("model.alignment", "fine", "'model.alignment'"),
    ("data.knowledge_len", 1, "'data.knowledge_len' = 1"),
    ("loss.temperature", 0.0, "'loss.temperature'"),
])
def test_bad_config_is_a_one_line_error(key, value, match):
    with pytest.raises(ConfigError, match=match):
        Task.validate_config(tiny_config(**{key: value}))


# ------------------------------------------------------------------ trainer

@pytest.mark.slow
def test_data_parallel_loss_equals_single_device(trained):
    """The first step from a fresh state: here on one device, in a subprocess on mesh data=8."""
    trainer = trained[0]
    batch = _train_batch(trainer, seed=0)
    with trainer.mesh_context():
        _, one = trainer.train_step(trainer.fresh_state(0), jax.device_put(
            batch, trainer.batch_sharding))
    out = run_with_devices("""
        import json, tempfile, jax
        from tests.test_mkmia import BATCH, _train_batch, tiny_config
        from mlx_research.train.trainer import Trainer
        t = Trainer(tiny_config(**{"mesh.data": 8}), tempfile.mkdtemp())
        batch = jax.device_put(_train_batch(t, seed=0), t.batch_sharding)
        with t.mesh_context():
            _, metrics = t.train_step(t.fresh_state(0), batch)
        print(json.dumps({k: float(v) for k, v in metrics.items()}))
        t.close()
    """)
    data8 = json.loads(out.splitlines()[-1])
    # The layouts add the first conv's kernel gradient over 8 studies x 2 views x 24 x 24 pixels
    # in different orders: float32 rounding allows about eps * sqrt(that) (tests/numeric.py).
    rtol = reordered_sum_rtol(BATCH * 2 * 24 * 24)
    for key in ("loss", "grad_norm", "loss_ce", "loss_con", "loss_kl"):
        np.testing.assert_allclose(data8[key], float(one[key]), rtol=rtol, err_msg=key)
