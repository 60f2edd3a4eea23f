"""Cosine and contrastive losses vs numpy formulas (torch semantics), one jit program per test."""

import jax
import numpy as np

from mlx_research.losses.embedding import (
    contrastive_loss,
    cosine_embedding_loss,
    cosine_similarity,
    cosine_similarity_loss,
)

from tests.numeric import num_grad

RNG = np.random.default_rng(0)
REDUCTIONS = ("none", "sum", "mean")


def np_reduce(loss, reduction):
    return {"none": loss, "sum": loss.sum(), "mean": loss.mean()}[reduction]


def np_cosine(a, b, axis=-1, eps=1e-8):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    norms = np.maximum(np.linalg.norm(a, axis=axis), eps) * np.maximum(
        np.linalg.norm(b, axis=axis), eps
    )
    return (a * b).sum(axis) / norms


def test_cosine_similarity_and_loss():
    x1 = RNG.normal(size=(4, 3)).astype(np.float32)
    x2 = RNG.normal(size=(4, 3)).astype(np.float32)
    x1[0] = 0.0  # zero vector: cosine 0, finite gradient

    def run(x1, x2):
        return (
            cosine_similarity(x1, x2),
            cosine_similarity(x1, x2, axis=0),
            cosine_similarity(x1, x2[:1]),
            {r: cosine_similarity_loss(x1, x2, reduction=r) for r in REDUCTIONS},
            jax.grad(lambda a: cosine_similarity_loss(a, x2))(x1),
        )

    cos, cos_axis0, cos_broadcast, losses, grad = jax.jit(run)(x1, x2)
    np.testing.assert_allclose(cos, np_cosine(x1, x2), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(cos_axis0, np_cosine(x1, x2, axis=0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        cos_broadcast, np_cosine(x1, np.broadcast_to(x2[:1], x1.shape)), rtol=1e-5, atol=1e-7
    )
    assert float(cos[0]) == 0.0
    for r in REDUCTIONS:
        np.testing.assert_allclose(
            losses[r], np_reduce(1 - np_cosine(x1, x2), r), rtol=1e-5, atol=1e-7
        )
    assert np.all(np.isfinite(grad))
    want = num_grad(lambda a: (1 - np_cosine(a, x2)).mean(), x1)
    np.testing.assert_allclose(grad[1:], want[1:], rtol=1e-3, atol=1e-5)


def np_cosine_embedding(a, b, target, margin):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    cos = (a * b).sum(-1) / np.sqrt(((a * a).sum(-1) + 1e-12) * ((b * b).sum(-1) + 1e-12))
    return np.where(
        target == 1, 1 - cos, np.where(target == -1, np.maximum(cos - margin, 0.0), 0.0)
    )


def test_cosine_embedding_loss():
    a = RNG.normal(size=(5, 3)).astype(np.float32)
    b = RNG.normal(size=(5, 3)).astype(np.float32)
    b[3] = a[3] * 2.0  # dissimilar pair with cos = 1 > margin
    a[4] = 0.0  # zero vector
    target = np.array([1, -1, 1, -1, -1])

    def run(a, b):
        values = {
            r: cosine_embedding_loss(a, b, target, margin=0.2, reduction=r) for r in REDUCTIONS
        }
        unbatched = cosine_embedding_loss(a[0], b[0], target[0])
        return (
            values,
            unbatched,
            jax.grad(lambda v: cosine_embedding_loss(v, b, target, margin=0.2))(a),
        )

    values, unbatched, grad = jax.jit(run)(a, b)
    per = np_cosine_embedding(a, b, target, 0.2)
    for r in REDUCTIONS:
        np.testing.assert_allclose(values[r], np_reduce(per, r), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(unbatched, per[0], rtol=1e-5)
    assert np.all(np.isfinite(grad))
    want = num_grad(lambda v: np_cosine_embedding(v, b, target, 0.2).mean(), a)
    # Row 4 is the zero vector: cos rises from 0 with slope ~1e6 there, beyond central differences.
    np.testing.assert_allclose(grad[:4], want[:4], rtol=1e-3, atol=1e-5)


def np_clip_loss(a, b, scale):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    # F.normalize: x / max(||x||, 1e-12), so a zero row stays zero.
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    logits = scale * a @ b.T

    def ce_diag(z):
        z = z - z.max(-1, keepdims=True)
        return -(np.diag(z) - np.log(np.exp(z).sum(-1)))

    return 0.5 * (ce_diag(logits) + ce_diag(logits.T))


def test_contrastive_loss_temperature_scale_and_padding():
    img = RNG.normal(size=(5, 4)).astype(np.float32)
    txt = RNG.normal(size=(5, 4)).astype(np.float32)
    valid = np.array([True, True, False, True, False])

    def run(img, txt):
        return {
            "reductions": {r: contrastive_loss(img, txt, reduction=r) for r in REDUCTIONS},
            "scale": contrastive_loss(img, txt, logit_scale=np.float32(np.exp(2.0))),
            "padded": contrastive_loss(img, txt, 0.1, valid=valid, reduction="none"),
            "padded_mean": contrastive_loss(img, txt, 0.1, valid=valid),
            "padded_grad": jax.grad(lambda v: contrastive_loss(v, txt, 0.1, valid=valid))(img),
            "empty": contrastive_loss(img, txt, valid=np.zeros(5, bool)),
            "empty_grad": jax.grad(lambda v: contrastive_loss(v, txt, valid=np.zeros(5, bool)))(
                img
            ),
        }

    out = jax.jit(run)(img, txt)
    per = np_clip_loss(img, txt, 1 / 0.07)
    for r in REDUCTIONS:
        np.testing.assert_allclose(out["reductions"][r], np_reduce(per, r), rtol=1e-5)
    np.testing.assert_allclose(out["scale"], np_clip_loss(img, txt, np.exp(2.0)).mean(), rtol=1e-5)
    subset = np_clip_loss(img[valid], txt[valid], 10.0)  # padding is neither query nor negative
    np.testing.assert_allclose(out["padded"][valid], subset, rtol=1e-5)
    np.testing.assert_array_equal(out["padded"][~valid], 0.0)
    np.testing.assert_allclose(out["padded_mean"], subset.mean(), rtol=1e-5)
    assert np.all(np.isfinite(out["padded_grad"]))
    np.testing.assert_array_equal(out["padded_grad"][~valid], 0.0)
    assert float(out["empty"]) == 0.0
    np.testing.assert_array_equal(out["empty_grad"], 0.0)


def test_contrastive_loss_zero_embeddings():
    img = RNG.normal(size=(4, 3)).astype(np.float32)
    txt = RNG.normal(size=(4, 3)).astype(np.float32)
    img[1] = 0.0
    txt[2] = 0.0
    zeros = np.zeros_like(img)

    def loss(a, b):
        return contrastive_loss(a, b, 0.1)

    def run(img, txt):
        grad = jax.grad(loss, argnums=(0, 1))
        return {
            "none": contrastive_loss(img, txt, 0.1, reduction="none"),
            "grads": grad(img, txt),
            "all_zero": (loss(zeros, zeros), grad(zeros, zeros)),
        }

    out = jax.jit(run)(img, txt)
    # A zero embedding has all-zero logits against every partner (all-zero inputs: log N).
    np.testing.assert_allclose(out["none"], np_clip_loss(img, txt, 10.0), rtol=1e-5)
    np.testing.assert_allclose(out["all_zero"][0], np.log(4), rtol=1e-6)
    for grad in (*out["grads"], *out["all_zero"][1]):
        assert np.all(np.isfinite(grad))
    # Rows off the zero vectors match finite differences (at a zero row the loss has a kink).
    want_img = num_grad(lambda a: np_clip_loss(a, txt, 10.0).mean(), img)
    want_txt = num_grad(lambda b: np_clip_loss(img, b, 10.0).mean(), txt)
    rows = np.arange(4)
    np.testing.assert_allclose(
        out["grads"][0][rows != 1], want_img[rows != 1], rtol=1e-3, atol=1e-5
    )
    np.testing.assert_allclose(
        out["grads"][1][rows != 2], want_txt[rows != 2], rtol=1e-3, atol=1e-5
    )
