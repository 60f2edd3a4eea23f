"""Classification losses with torch / torchvision semantics, class axis last.

torch puts the class axis at dim 1 (``[N, C, d1, ...]``); here it is the last axis
(``[N, d1, ..., C]``), JAX's layout. Everything else (argument names, defaults, ignored
targets, weighted means, label smoothing, clamps) follows torch, with one chosen difference:
a "mean" over a batch whose targets are all ignored (or weigh 0) is 0 with zero gradients,
where torch returns NaN.

Class-index targets outside ``[0, C)`` other than ``ignore_index`` are not checked (torch
raises); they cannot be checked under jit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from mlx_research.losses.reduction import REDUCTIONS, reduce_loss


def _safe_pow(base: jax.Array, exponent: ArrayLike) -> jax.Array:
    """``base ** exponent`` for ``base >= 0``; ``0 ** 0 = 1`` and a zero (not NaN) gradient at 0."""
    positive = base > 0
    powered = jnp.where(positive, base, 1.0) ** exponent
    return jnp.where(positive, powered, jnp.where(jnp.asarray(exponent) == 0, 1.0, 0.0))


def _pick(values: jax.Array, index: jax.Array) -> jax.Array:
    """``values[..., index]`` per element: [..., C] x [...] int -> [...]."""
    return jnp.take_along_axis(values, index[..., None], axis=-1)[..., 0]


def _class_targets(
    target: jax.Array, weight: ArrayLike | None, ignore_index: int, dtype: jnp.dtype
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Safe class indices, per-element class weights (0 where ignored) and the valid mask."""
    valid = target != ignore_index
    safe_target = jnp.where(valid, target, 0)
    class_weight = jnp.ones((), dtype) if weight is None else jnp.asarray(weight)[safe_target]
    return safe_target, jnp.where(valid, class_weight, 0), valid


def nll_loss(
    input: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> jax.Array:
    """Negative log-likelihood of class indices (torch ``F.nll_loss``, class axis last).

    ``l_n = -w[t_n] input[n, t_n]``, 0 where ``t_n == ignore_index``; "mean" divides the
    sum by ``sum_n w[t_n]`` over non-ignored targets (0 if there are none; torch: NaN).

    Args:
      input: [N, ..., C] log-probabilities.
      target: [N, ...] int class indices.
      weight: optional [C] class weights.
      ignore_index: target value that contributes nothing.
      reduction: "mean" | "sum" | "none".

    Returns:
      Scalar, or [N, ...] for "none".
    """
    input, target = jnp.asarray(input), jnp.asarray(target)
    safe_target, class_weight, _ = _class_targets(target, weight, ignore_index, input.dtype)
    loss = -class_weight * _pick(input, safe_target)
    return reduce_loss(loss, reduction, normalizer=jnp.sum(class_weight))


def cross_entropy(
    input: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> jax.Array:
    """Softmax cross-entropy (torch ``F.cross_entropy``, class axis last), via optax.

    Integer ``target`` holds class indices: ``l_n = (1-eps) w[t_n] (-log p[n, t_n])
    + eps/C sum_c w_c (-log p[n, c])``, 0 where ignored; "mean" divides both parts by
    ``sum_n w[t_n]`` over non-ignored targets, as torch (0 if there are none; torch: NaN).
    Float ``target`` of ``input``'s shape holds class probabilities (smoothed to
    ``t (1-eps) + eps/C``): ``l_n = -sum_c w_c t[n, c] log p[n, c]``, "mean" over ``N x ...``;
    ``ignore_index`` is silently unused there, as in torch ("only applicable when the target
    contains class indices").

    Args:
      input: [N, ..., C] (or [C]) logits.
      target: [N, ...] int class indices, or [N, ..., C] float class probabilities.
      weight: optional [C] class weights.
      ignore_index: index target that contributes nothing (unused for probability targets).
      reduction: "mean" | "sum" | "none".
      label_smoothing: ``eps`` in [0, 1].

    Returns:
      Scalar, or [N, ...] for "none".
    """
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be between 0.0 and 1.0, got {label_smoothing}")
    input, target = jnp.asarray(input), jnp.asarray(target)
    num_classes = input.shape[-1]
    class_weights = jnp.ones(num_classes, input.dtype) if weight is None else jnp.asarray(weight)

    if not jnp.issubdtype(target.dtype, jnp.integer):
        if target.shape != input.shape:
            raise ValueError(
                f"probability targets need input's shape {input.shape}, got {target.shape}"
            )
        if label_smoothing > 0:
            target = target * (1 - label_smoothing) + label_smoothing / num_classes
        loss = optax.softmax_cross_entropy(input, target * class_weights)
        return reduce_loss(loss, reduction)

    if target.shape != input.shape[:-1]:
        raise ValueError(f"index targets need shape {input.shape[:-1]}, got {target.shape}")
    safe_target, class_weight, valid = _class_targets(target, weight, ignore_index, input.dtype)
    loss = class_weight * optax.softmax_cross_entropy_with_integer_labels(input, safe_target)
    if label_smoothing > 0:
        every_class = jnp.broadcast_to(class_weights, input.shape)
        smooth = jnp.where(valid, optax.softmax_cross_entropy(input, every_class), 0.0)
        loss = (1 - label_smoothing) * loss + label_smoothing / num_classes * smooth
    return reduce_loss(loss, reduction, normalizer=jnp.sum(class_weight))


def binary_cross_entropy_with_logits(
    input: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    reduction: str = "mean",
    pos_weight: ArrayLike | None = None,
) -> jax.Array:
    """Sigmoid cross-entropy on logits (torch ``F.binary_cross_entropy_with_logits``).

    ``l = -w [p_w t log s(x) + (1 - t) log(1 - s(x))]`` with log-sigmoid forms, finite for any
    logit. Built on ``optax.sigmoid_binary_cross_entropy``.

    Args:
      input: [...] logits.
      target: [...] targets in [0, 1].
      weight: optional element weights broadcastable to ``input``.
      reduction: "mean" | "sum" | "none".
      pos_weight: optional positive-class weights broadcast along the last axis, e.g. [C].

    Returns:
      Scalar, or [...] for "none".
    """
    input = jnp.asarray(input)
    target = jnp.asarray(target, input.dtype)
    loss = optax.sigmoid_binary_cross_entropy(input, target)
    if pos_weight is not None:
        loss = loss - (jnp.asarray(pos_weight) - 1) * target * jax.nn.log_sigmoid(input)
    if weight is not None:
        loss = loss * jnp.asarray(weight)
    return reduce_loss(loss, reduction)


def binary_cross_entropy(
    input: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    reduction: str = "mean",
) -> jax.Array:
    """Binary cross-entropy on probabilities (torch ``F.binary_cross_entropy``).

    ``l = -w [t max(log p, -100) + (1 - t) max(log(1 - p), -100)]``. Gradients are those of
    this clamped expression: finite at ``p = 0`` and ``p = 1`` (zero in the clamped region).
    Prefer ``binary_cross_entropy_with_logits``.

    Args:
      input: [...] probabilities in [0, 1].
      target: [...] targets in [0, 1].
      weight: optional element weights broadcastable to ``input``.
      reduction: "mean" | "sum" | "none".

    Returns:
      Scalar, or [...] for "none".
    """
    input = jnp.asarray(input)
    target = jnp.asarray(target, input.dtype)

    def clamped_log(x: jax.Array) -> jax.Array:
        """``max(log x, -100)`` with a zero, not NaN, gradient at ``x = 0``."""
        positive = x > 0
        log_x = jnp.log(jnp.where(positive, x, 1.0))
        return jnp.where(positive, jnp.maximum(log_x, -100.0), -100.0)

    loss = -(target * clamped_log(input) + (1 - target) * clamped_log(1 - input))
    if weight is not None:
        loss = loss * jnp.asarray(weight)
    return reduce_loss(loss, reduction)


def kl_div(
    input: ArrayLike,
    target: ArrayLike,
    reduction: str = "mean",
    log_target: bool = False,
) -> jax.Array:
    """Kullback-Leibler divergence ``KL(target || exp(input))`` point-wise (torch ``F.kl_div``).

    ``input`` is log-probabilities. Point-wise loss ``t (log t - input)``, 0 where ``t <= 0``
    (or ``exp(t) (t - input)`` with ``log_target``, 0 where ``t = -inf``; torch gives NaN
    there). As in torch, "mean" averages over *all* elements; "batchmean" (the true KL per
    sample) divides the sum by ``input.shape[0]``.

    Args:
      input: [N, ...] log-probabilities.
      target: [N, ...] probabilities (log-probabilities if ``log_target``).
      reduction: "mean" | "batchmean" | "sum" | "none".
      log_target: whether ``target`` is given in log space.

    Returns:
      Scalar, or [N, ...] for "none".
    """
    input, target = jnp.asarray(input), jnp.asarray(target)
    if log_target:
        finite = target > -jnp.inf
        safe_t = jnp.where(finite, target, 0.0)
        loss = jnp.where(finite, jnp.exp(safe_t) * (safe_t - input), 0.0)
    else:
        positive = target > 0
        log_t = jnp.log(jnp.where(positive, target, 1.0))
        loss = jnp.where(positive, target * (log_t - input), 0.0)
    if reduction == "batchmean":
        total = jnp.sum(loss)
        return total / input.shape[0] if input.ndim else total
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"{reduction!r} is not a valid value for reduction; expected one of "
            f"{REDUCTIONS + ('batchmean',)}"
        )
    return reduce_loss(loss, reduction)


def sigmoid_focal_loss(
    inputs: ArrayLike,
    targets: ArrayLike,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
) -> jax.Array:
    """Sigmoid focal loss (torchvision ``ops.sigmoid_focal_loss``) via ``optax.sigmoid_focal_loss``.

    ``l = -alpha_t (1 - p_t)^gamma log p_t`` with ``p_t = p t + (1 - p)(1 - t)``,
    ``alpha_t = alpha t + (1 - alpha)(1 - t)``; ``alpha < 0`` disables the weighting. The
    focusing term is computed in log space, so gradients stay finite as ``p -> 0/1`` even for
    ``gamma < 1``. The default reduction is "none", as in torchvision.

    Args:
      inputs: [...] logits.
      targets: [...] targets in [0, 1].
      alpha: positive-class weight in [0, 1], or negative for none.
      gamma: focusing exponent >= 0.
      reduction: "none" | "mean" | "sum".

    Returns:
      [...] for "none", else a scalar.
    """
    inputs = jnp.asarray(inputs)
    targets = jnp.asarray(targets, inputs.dtype)
    loss = optax.sigmoid_focal_loss(
        inputs, targets, alpha=None if alpha < 0 else alpha, gamma=gamma
    )
    return reduce_loss(loss, reduction)


def softmax_focal_loss(
    logits: ArrayLike,
    target: ArrayLike,
    alpha: ArrayLike | None = None,
    gamma: float = 2.0,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> jax.Array:
    """Multi-class focal loss ``-alpha_t (1 - p_t)^gamma log p_t`` over a softmax.

    Written by hand (optax has only the sigmoid form). ``1 - p_t`` is ``-expm1(log p_t)``, exact
    near ``p_t = 1``; the gradient is finite there for any ``gamma >= 0``. "mean" averages over
    non-ignored targets (0 if there are none).

    Args:
      logits: [N, ..., C] logits.
      target: [N, ...] int class indices.
      alpha: None (no weighting), a scalar, or [C] class weights.
      gamma: focusing exponent >= 0.
      ignore_index: target value that contributes nothing.
      reduction: "mean" | "sum" | "none".

    Returns:
      Scalar, or [N, ...] for "none".
    """
    logits, target = jnp.asarray(logits), jnp.asarray(target)
    valid = target != ignore_index
    safe_target = jnp.where(valid, target, 0)
    log_pt = _pick(jax.nn.log_softmax(logits, axis=-1), safe_target)
    loss = -_safe_pow(-jnp.expm1(log_pt), gamma) * log_pt
    if alpha is not None:
        alpha = jnp.asarray(alpha)
        loss = loss * (alpha if alpha.ndim == 0 else alpha[safe_target])
    loss = jnp.where(valid, loss, 0.0)
    return reduce_loss(loss, reduction, normalizer=jnp.sum(valid))


def asymmetric_loss(
    logits: ArrayLike,
    targets: ArrayLike,
    gamma_neg: float = 4.0,
    gamma_pos: float = 1.0,
    clip: float | None = 0.05,
    eps: float = 1e-8,
    disable_torch_grad_focal_loss: bool = False,
    reduction: str = "sum",
) -> jax.Array:
    """Asymmetric loss for multi-label classification (Ridnik et al., ICCV 2021).

    Follows the reference ``AsymmetricLoss`` (Alibaba-MIIL/ASL): ``p = sigmoid(x)``,
    ``p_neg = min(1 - p + clip, 1)``, ``l = -[y log(max(p, eps)) + (1 - y) log(max(p_neg, eps))]
    * (1 - p_t)^(gamma_pos y + gamma_neg (1 - y))`` with ``p_t = p y + p_neg (1 - y)``; the
    reference returns the sum, hence the default reduction. Written by hand (not in optax).

    Args:
      logits: [..., C] logits.
      targets: [..., C] binarised multi-label targets.
      gamma_neg: focusing exponent of negatives.
      gamma_pos: focusing exponent of positives.
      clip: probability margin shifted off negatives; None or 0 disables it.
      eps: clamp inside the logs.
      disable_torch_grad_focal_loss: put the focusing weight under ``stop_gradient``.
      reduction: "sum" | "mean" | "none".

    Returns:
      Scalar, or [..., C] for "none".
    """
    logits = jnp.asarray(logits)
    targets = jnp.asarray(targets, logits.dtype)
    xs_pos = jax.nn.sigmoid(logits)
    xs_neg = 1 - xs_pos
    if clip is not None and clip > 0:
        xs_neg = jnp.minimum(xs_neg + clip, 1.0)
    log_pos = jnp.log(jnp.maximum(xs_pos, eps))
    log_neg = jnp.log(jnp.maximum(xs_neg, eps))
    loss = targets * log_pos + (1 - targets) * log_neg
    if gamma_neg > 0 or gamma_pos > 0:
        pt = xs_pos * targets + xs_neg * (1 - targets)
        focus = _safe_pow(1 - pt, gamma_pos * targets + gamma_neg * (1 - targets))
        if disable_torch_grad_focal_loss:
            focus = jax.lax.stop_gradient(focus)
        loss = loss * focus
    return reduce_loss(-loss, reduction)
