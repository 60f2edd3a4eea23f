"""Classification losses vs float64 numpy formulas written here (torch / torchvision semantics).

Each test compiles one ``jax.jit`` program holding all of its configurations (compiles are the
cost of these tests, not arithmetic); gradients are checked against numpy finite differences.
"""

import jax
import numpy as np
import pytest

from mlx_research.losses.classification import (
    asymmetric_loss,
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    cross_entropy,
    kl_div,
    nll_loss,
    sigmoid_focal_loss,
    softmax_focal_loss,
)

from tests.numeric import num_grad

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(3, 2, 4)).astype(np.float32)  # [N, L, C], class axis last
TARGET = np.array([[0, 3], [-100, 1], [2, 2]])
WEIGHT = np.array([0.5, 1.0, 2.0, 1.5], np.float32)
REDUCTIONS = ("none", "sum", "mean")


def np_log_softmax(x):
    x = np.asarray(x, np.float64)
    shifted = x - x.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def np_log_sigmoid(x):
    return -np.logaddexp(0.0, -np.asarray(x, np.float64))


def np_reduce(loss, reduction, normalizer=None):
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / (loss.size if normalizer is None else normalizer)


def reductions(fn, *args, **kw):
    """``{reduction: fn(*args, reduction=reduction, **kw)}`` for the three reductions."""
    return {r: fn(*args, reduction=r, **kw) for r in REDUCTIONS}


def grad_of(fn, x, *rest, **kw):
    """Gradient of the scalar ``fn(x, *rest, **kw)`` w.r.t. ``x``."""
    return jax.grad(lambda v: fn(v, *rest, **kw))(x)


def assert_values(values, per, normalizer=None, rtol=1e-5, atol=1e-6):
    for reduction in REDUCTIONS:
        np.testing.assert_allclose(
            values[reduction], np_reduce(per, reduction, normalizer), rtol=rtol, atol=atol
        )


def assert_finite(tree):
    for leaf in jax.tree_util.tree_leaves(tree):
        assert np.all(np.isfinite(np.asarray(leaf))), leaf


def np_cross_entropy_index(logits, target, weight, eps, ignore_index=-100):
    """torch's formula: per-element loss and the weighted-mean normalizer sum w[t]."""
    logp = np_log_softmax(logits)
    num_classes = logits.shape[-1]
    w = np.ones(num_classes) if weight is None else np.asarray(weight, np.float64)
    per, w_sum = np.zeros(target.shape), 0.0
    for i in np.ndindex(target.shape):
        t = target[i]
        if t == ignore_index:
            continue
        per[i] = (1 - eps) * -w[t] * logp[i][t] + eps / num_classes * -(w * logp[i]).sum()
        w_sum += w[t]
    return per, w_sum


CE_CONFIGS = [(None, 0.0), (None, 0.2), (WEIGHT, 0.0), (WEIGHT, 0.2)]


def test_cross_entropy_index_targets_weights_smoothing():
    def run(x):
        values = [
            reductions(cross_entropy, x, TARGET, weight=w, label_smoothing=e) for w, e in CE_CONFIGS
        ]
        grads = [
            grad_of(cross_entropy, x, TARGET, weight=w, label_smoothing=e)
            for w, e in CE_CONFIGS[::3]
        ]
        return values, grads

    values, grads = jax.jit(run)(LOGITS)
    for (weight, eps), got in zip(CE_CONFIGS, values, strict=True):
        per, w_sum = np_cross_entropy_index(LOGITS, TARGET, weight, eps)
        assert_values(got, per, w_sum)  # "mean" divides by sum of w[target] over non-ignored
    for (weight, eps), got in zip(CE_CONFIGS[::3], grads, strict=True):
        w_sum = np_cross_entropy_index(LOGITS, TARGET, weight, eps)[1]
        want = num_grad(
            lambda x: np_cross_entropy_index(x, TARGET, weight, eps)[0].sum() / w_sum, LOGITS
        )
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_cross_entropy_edge_cases():
    custom = np.array([[1, 1], [0, 3], [1, 2]])
    ignored = np.full((3, 2), -100)
    extreme = np.array([[100.0, -100.0, 0.0], [-100.0, 100.0, 50.0]], np.float32)

    def run(x, extreme):
        return {
            "custom": cross_entropy(x, custom, WEIGHT, ignore_index=1, label_smoothing=0.1),
            "unbatched": cross_entropy(x[0, 0], custom[1, 0]),
            "ignored": [
                (
                    cross_entropy(x, ignored, w, label_smoothing=0.1),
                    grad_of(cross_entropy, x, ignored, w, label_smoothing=0.1),
                )
                for w in (None, WEIGHT)
            ],
            "extreme": (
                cross_entropy(extreme, np.array([1, 0]), label_smoothing=0.1),
                grad_of(cross_entropy, extreme, np.array([1, 0]), label_smoothing=0.1),
            ),
        }

    out = jax.jit(run)(LOGITS, extreme)
    per, w_sum = np_cross_entropy_index(LOGITS, custom, WEIGHT, 0.1, ignore_index=1)
    np.testing.assert_allclose(out["custom"], per.sum() / w_sum, rtol=1e-5)
    np.testing.assert_allclose(out["unbatched"], -np_log_softmax(LOGITS[0, 0])[0], rtol=1e-5)
    for value, grad in out["ignored"]:  # torch returns NaN here; we choose 0 with zero gradients
        assert float(value) == 0.0
        np.testing.assert_array_equal(grad, 0.0)
    per, _ = np_cross_entropy_index(extreme, np.array([1, 0]), None, 0.1)
    np.testing.assert_allclose(out["extreme"][0], per.mean(), rtol=1e-5)
    assert_finite(out["extreme"][1])


def np_cross_entropy_probs(logits, probs, weight, eps):
    num_classes = logits.shape[-1]
    return -(np_log_softmax(logits) * (probs * (1 - eps) + eps / num_classes) * weight).sum(-1)


def test_cross_entropy_probability_targets():
    logits = LOGITS.reshape(6, 4)
    probs = RNG.dirichlet(np.ones(4), size=6).astype(np.float32)

    def run(x, p):
        values = [reductions(cross_entropy, x, p, w, label_smoothing=0.1) for w in (None, WEIGHT)]
        # torch ignores ignore_index for probability targets: class 0 still counts.
        ignored = cross_entropy(x, p, WEIGHT, ignore_index=0, label_smoothing=0.1)
        grad = grad_of(cross_entropy, x, p, WEIGHT, ignore_index=0, label_smoothing=0.1)
        return values, ignored, grad

    values, ignored, grad = jax.jit(run)(logits, probs)
    for weight, got in zip((np.ones(4), WEIGHT), values, strict=True):
        per = np_cross_entropy_probs(logits, probs, weight, 0.1)
        assert_values(got, per)  # torch: "mean" divides by N, not by the weights
    per = np_cross_entropy_probs(logits, probs, WEIGHT, 0.1)
    np.testing.assert_allclose(ignored, per.mean(), rtol=1e-5)
    want = num_grad(lambda x: np_cross_entropy_probs(x, probs, WEIGHT, 0.1).mean(), logits)
    np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-6)


def test_nll_loss_weighted_mean_and_ignore():
    logp = np_log_softmax(LOGITS).astype(np.float32)
    ignored = np.full(TARGET.shape, -100)

    def run(x):
        every_ignored = [
            (reductions(nll_loss, x, ignored, w), grad_of(nll_loss, x, ignored, w))
            for w in (None, WEIGHT)
        ]
        values = reductions(nll_loss, x, TARGET, WEIGHT)
        return values, grad_of(nll_loss, x, TARGET, WEIGHT), every_ignored

    values, grad, every_ignored = jax.jit(run)(logp)
    for ignored_values, ignored_grad in every_ignored:  # torch: "mean" is NaN; we choose 0
        for reduction in REDUCTIONS:
            np.testing.assert_array_equal(ignored_values[reduction], 0.0)
        np.testing.assert_array_equal(ignored_grad, 0.0)
    per, w_sum = np_cross_entropy_index(LOGITS, TARGET, WEIGHT, 0.0)
    assert_values(values, per, w_sum)
    want = np.zeros_like(grad)
    for i in np.ndindex(TARGET.shape):
        if TARGET[i] != -100:
            want[i][TARGET[i]] = -WEIGHT[TARGET[i]] / w_sum
    np.testing.assert_allclose(grad, want, rtol=1e-6)


def np_bce_with_logits(x, t, weight=None, pos_weight=None):
    pw = 1.0 if pos_weight is None else pos_weight
    loss = -(pw * t * np_log_sigmoid(x) + (1 - t) * np_log_sigmoid(-x))
    return loss if weight is None else loss * weight


def test_binary_cross_entropy_with_logits():
    x = RNG.normal(size=(4, 3)).astype(np.float32) * 3
    t = RNG.uniform(size=(4, 3)).astype(np.float32)
    weight = RNG.uniform(size=(4, 1)).astype(np.float32)
    pos_weight = np.array([1.0, 3.0, 0.5], np.float32)
    extreme_x = np.array([100.0, -100.0, 100.0, -100.0], np.float32)
    extreme_t = np.array([0.0, 1.0, 1.0, 0.0], np.float32)
    bce = binary_cross_entropy_with_logits

    def run(x, extreme_x):
        values = [
            reductions(bce, x, t, w, pos_weight=pw)
            for w, pw in ((None, None), (weight, pos_weight))
        ]
        grad = grad_of(bce, x, t, weight, pos_weight=pos_weight)
        extreme = bce(extreme_x, extreme_t, reduction="none", pos_weight=2.0)
        return (
            values,
            grad,
            extreme,
            grad_of(bce, extreme_x, extreme_t, reduction="sum", pos_weight=2.0),
        )

    values, grad, extreme, extreme_grad = jax.jit(run)(x, extreme_x)
    assert_values(values[0], np_bce_with_logits(x, t))
    assert_values(values[1], np_bce_with_logits(x, t, weight, pos_weight))
    want = num_grad(lambda v: np_bce_with_logits(v, t, weight, pos_weight).mean(), x)
    np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(extreme, [100.0, 200.0, 0.0, 0.0], atol=1e-5)
    np.testing.assert_allclose(
        extreme_grad, [1.0, -2.0, 0.0, 0.0], atol=1e-6
    )  # (1+(pw-1)t) s(x) - pw t


def test_binary_cross_entropy_clamps_logs_at_minus_100():
    p = np.array([0.0, 1.0, 0.0, 1.0, 0.3, 0.9], np.float32)
    t = np.array([1.0, 0.0, 0.0, 1.0, 0.2, 1.0], np.float32)
    weight = np.array([1.0, 2.0, 1.0, 1.0, 0.5, 1.0], np.float32)
    with np.errstate(divide="ignore"):
        log_p = np.maximum(np.log(p.astype(np.float64)), -100)
        log_q = np.maximum(np.log(1 - p.astype(np.float64)), -100)
    run = jax.jit(
        lambda p: (
            reductions(binary_cross_entropy, p, t, weight),
            grad_of(binary_cross_entropy, p, t, weight),
        )
    )
    values, grad = run(p)
    assert_values(values, -weight * (t * log_p + (1 - t) * log_q))
    assert_finite(grad)
    interior = (p[4:] - t[4:]) / (p[4:] * (1 - p[4:])) * weight[4:] / p.size
    np.testing.assert_allclose(grad[4:], interior, rtol=1e-5)


def test_kl_div_both_target_forms():
    logq = np_log_softmax(RNG.normal(size=(3, 4))).astype(np.float32)
    p = np.array([[0.5, 0.5, 0.0, 0.0], [0.1, 0.2, 0.3, 0.4], [1.0, 0.0, 0.0, 0.0]])
    with np.errstate(divide="ignore"):
        per = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1.0)) - logq), 0.0)
        targets = {False: p.astype(np.float32), True: np.log(p).astype(np.float32)}  # log 0 = -inf

    def run(x):
        return {
            log_target: (
                {r: kl_div(x, t, r, log_target) for r in ("none", "sum", "mean", "batchmean")},
                grad_of(kl_div, x, t, "batchmean", log_target),
            )
            for log_target, t in targets.items()
        }

    want = {"none": per, "sum": per.sum(), "mean": per.mean(), "batchmean": per.sum() / 3}
    for values, grad in jax.jit(run)(logq).values():
        for reduction, value in want.items():
            np.testing.assert_allclose(values[reduction], value, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(grad, -p / 3, atol=1e-6)
    with pytest.raises(ValueError):
        jax.eval_shape(lambda x: kl_div(x, targets[False], reduction="avg"), logq)


def np_sigmoid_focal(x, t, alpha, gamma):
    p = np.exp(np_log_sigmoid(x))
    ce = -(t * np_log_sigmoid(x) + (1 - t) * np_log_sigmoid(-x))
    loss = ce * (1 - (p * t + (1 - p) * (1 - t))) ** gamma
    return loss if alpha < 0 else (alpha * t + (1 - alpha) * (1 - t)) * loss


def test_sigmoid_focal_loss():
    x = RNG.normal(size=(3, 4)).astype(np.float32) * 2
    t = (RNG.uniform(size=(3, 4)) > 0.5).astype(np.float32)
    extreme_x = np.array([100.0, -100.0, 100.0, -100.0, 0.0], np.float32)
    extreme_t = np.array([1.0, 0.0, 0.0, 1.0, 1.0], np.float32)

    def run(x, extreme_x):
        values = {a: reductions(sigmoid_focal_loss, x, t, alpha=a) for a in (0.25, -1.0)}
        grad = grad_of(sigmoid_focal_loss, x, t, reduction="sum")
        extreme = sigmoid_focal_loss(extreme_x, extreme_t, gamma=0.5)
        return (
            values,
            grad,
            extreme,
            grad_of(sigmoid_focal_loss, extreme_x, extreme_t, gamma=0.5, reduction="sum"),
        )

    values, grad, extreme, extreme_grad = jax.jit(run)(x, extreme_x)
    assert jax.eval_shape(lambda v: sigmoid_focal_loss(v, t), x).shape == (
        3,
        4,
    )  # torchvision: "none"
    for alpha in (0.25, -1.0):  # alpha < 0 disables the weighting
        assert_values(values[alpha], np_sigmoid_focal(x, t, alpha, 2.0), atol=1e-7)
    want = num_grad(lambda v: np_sigmoid_focal(v, t, 0.25, 2.0).sum(), x)
    np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        extreme, np_sigmoid_focal(extreme_x, extreme_t, 0.25, 0.5), rtol=1e-5, atol=1e-6
    )
    assert_finite(extreme_grad)


def np_softmax_focal(logits, target, alpha, gamma, ignore_index=-100):
    logp = np_log_softmax(logits)
    per = np.zeros(target.shape)
    for i in np.ndindex(target.shape):
        t = target[i]
        if t == ignore_index:
            continue
        a = 1.0 if alpha is None else (alpha if np.ndim(alpha) == 0 else alpha[t])
        per[i] = -a * (1 - np.exp(logp[i][t])) ** gamma * logp[i][t]
    return per


def test_softmax_focal_loss():
    alphas = (None, 0.25, WEIGHT)
    confident = np.array([[100.0, -100.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
    ignored = np.array([-100, -100])

    def run(x, confident):
        values = [reductions(softmax_focal_loss, x, TARGET, alpha=a, gamma=1.5) for a in alphas]
        grad = grad_of(softmax_focal_loss, x, TARGET, alpha=WEIGHT, gamma=1.5)
        edges = [
            (
                softmax_focal_loss(confident, t, gamma=0.5),
                grad_of(softmax_focal_loss, confident, t, gamma=0.5),
            )
            for t in (np.array([0, -100]), ignored)
        ]
        return values, grad, edges

    values, grad, edges = jax.jit(run)(LOGITS, confident)
    for alpha, got in zip(alphas, values, strict=True):  # "mean" over the 5 non-ignored targets
        assert_values(got, np_softmax_focal(LOGITS, TARGET, alpha, 1.5), normalizer=5, atol=1e-7)
    want = num_grad(lambda v: np_softmax_focal(v, TARGET, WEIGHT, 1.5).sum() / 5, LOGITS)
    np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-6)
    (confident_value, confident_grad), (ignored_value, ignored_grad) = edges
    assert 0.0 <= float(confident_value) < 1e-30
    assert_finite(confident_grad)
    assert float(ignored_value) == 0.0
    np.testing.assert_array_equal(ignored_grad, 0.0)


def np_asymmetric(x, y, gamma_neg, gamma_pos, clip, eps=1e-8, focus=None):
    """The reference AsymmetricLoss.forward in float64; ``focus`` freezes the focusing weight."""
    p = np.exp(np_log_sigmoid(x))
    xs_neg = np.minimum(1 - p + clip, 1.0) if clip else 1 - p
    loss = y * np.log(np.maximum(p, eps)) + (1 - y) * np.log(np.maximum(xs_neg, eps))
    if focus is None:
        pt = p * y + xs_neg * (1 - y)
        focus = (1 - pt) ** (gamma_pos * y + gamma_neg * (1 - y))
    return -(loss * focus), focus


ASL_CONFIGS = [
    (4.0, 1.0, 0.05),
    (5.0, 0.0, 0.0),
]  # (gamma_neg, gamma_pos, clip): defaults, NADM-like


def test_asymmetric_loss_matches_reference():
    x = RNG.normal(size=(3, 5)).astype(np.float32) * 2
    x[0, 0] = -4.0  # p < clip: with clipping this negative has zero loss
    y = (RNG.uniform(size=(3, 5)) > 0.6).astype(np.float32)
    y[0, 0] = 0.0
    extreme_x = np.array([[100.0, -100.0, 100.0, -100.0]], np.float32)
    extreme_y = np.array([[1.0, 1.0, 0.0, 0.0]], np.float32)

    def run(x, extreme_x):
        out = [
            {
                "values": reductions(asymmetric_loss, x, y, *cfg),
                "default": asymmetric_loss(x, y, *cfg),
                "full": grad_of(asymmetric_loss, x, y, *cfg),
                "frozen": grad_of(asymmetric_loss, x, y, *cfg, disable_torch_grad_focal_loss=True),
                "extreme": asymmetric_loss(extreme_x, extreme_y, *cfg),
                "extreme_grad": grad_of(asymmetric_loss, extreme_x, extreme_y, *cfg),
            }
            for cfg in ASL_CONFIGS
        ]
        below_one = (extreme_y, 0.5, 0.5, 0.05)  # focusing exponents < 1 at p -> 0 / 1
        return out, grad_of(asymmetric_loss, extreme_x, *below_one)

    results, below_one_grad = jax.jit(run)(x, extreme_x)
    assert_finite(below_one_grad)
    for cfg, out in zip(ASL_CONFIGS, results, strict=True):
        per, focus = np_asymmetric(x, y, *cfg)
        assert_values(out["values"], per, atol=1e-7)
        np.testing.assert_allclose(out["default"], per.sum(), rtol=1e-5)  # summed, as the reference
        want_full = num_grad(lambda v: np_asymmetric(v, y, *cfg)[0].sum(), x)
        want_frozen = num_grad(lambda v: np_asymmetric(v, y, *cfg, focus=focus)[0].sum(), x)
        np.testing.assert_allclose(out["full"], want_full, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(out["frozen"], want_frozen, rtol=1e-4, atol=1e-6)
        assert not np.allclose(out["full"], out["frozen"])
        np.testing.assert_allclose(
            out["extreme"], np_asymmetric(extreme_x, extreme_y, *cfg)[0].sum(), rtol=1e-5
        )
        assert_finite(out["extreme_grad"])
        if cfg[2]:
            assert float(out["values"]["none"][0, 0]) == 0.0


# (gamma_neg, gamma_pos, clip, eps): clip=None leaves p_m = p; eps = 1e-3 clamps the logs at
# x = -8 (p = 3.4e-4, positive) and, without clip, at x = 8 (1 - p = 3.4e-4, negative).
ASL_EPS_CONFIGS = [(4.0, 1.0, None, 1e-8), (4.0, 1.0, None, 1e-3), (2.0, 1.0, 0.05, 1e-3)]


def test_asymmetric_loss_clip_none_and_eps():
    x = RNG.normal(size=(2, 4)).astype(np.float32)
    x[0, :2] = [-8.0, 8.0]
    y = (RNG.uniform(size=(2, 4)) > 0.5).astype(np.float32)
    y[0, :2] = [1.0, 0.0]
    # The data exercise both options: the eps clamp and clip=None change the reference.
    assert not np.allclose(
        np_asymmetric(x, y, 4.0, 1.0, None)[0], np_asymmetric(x, y, 4.0, 1.0, 0.05)[0]
    )
    assert not np.allclose(
        np_asymmetric(x, y, 4.0, 1.0, None)[0], np_asymmetric(x, y, 4.0, 1.0, None, 1e-3)[0]
    )

    def run(x):
        return [
            (
                asymmetric_loss(x, y, g_neg, g_pos, clip, eps, reduction="none"),
                grad_of(asymmetric_loss, x, y, g_neg, g_pos, clip, eps),
            )
            for g_neg, g_pos, clip, eps in ASL_EPS_CONFIGS
        ]

    for cfg, (per, grad) in zip(ASL_EPS_CONFIGS, jax.jit(run)(x), strict=True):
        want = np_asymmetric(x, y, *cfg)[0]
        np.testing.assert_allclose(per, want, rtol=1e-5, atol=1e-7, err_msg=str(cfg))
        want_grad = num_grad(lambda v: np_asymmetric(v, y, *cfg)[0].sum(), x)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-6, err_msg=str(cfg))


def test_invalid_arguments_raise():
    for fn, args in [
        (cross_entropy, (LOGITS, TARGET)),
        (sigmoid_focal_loss, (LOGITS, LOGITS)),
        (asymmetric_loss, (LOGITS, LOGITS)),
        (nll_loss, (LOGITS, TARGET)),
    ]:
        with pytest.raises(ValueError):
            jax.eval_shape(lambda *a: fn(*a, reduction="batchmean"), *args)
    with pytest.raises(ValueError):
        cross_entropy(LOGITS, TARGET, label_smoothing=1.5)
