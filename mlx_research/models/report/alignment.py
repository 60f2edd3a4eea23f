"""MKMIA's multilevel image-report alignment (MIRA) losses, and the token masks they use.

Coarse (global) alignment, between the global image embedding ``g_v`` of a study and the global
embedding ``g_r`` of its ground-truth report (rows of a batch; row i of both is the matched pair):

- cosine similarity loss on the matched pairs: ``mean_i (1 - cos(g_v_i, g_r_i))``;
- InfoNCE over the batch (CLIP's symmetric form, `mlx_research.losses.contrastive_loss`):
  ``logits_ij = cos(g_v_i, g_r_j) / temperature``, the mean of the image->report and
  report->image cross-entropies at the matched column/row, averaged over the batch.

Fine (region-word) alignment, `fine_alignment_kl`: with ``s(i,t; j,n) = cos(w_it, v_jn) / tau``
the similarity of word t of report i and region n of image j,

- word -> regions: each word distributes its attention over every region of every image of the
  batch, ``p_it(j, n) = softmax_(j,n) s(i,t; j,n)``; the *alignment distribution* the pairing
  asks for keeps it inside the word's own image, ``q_it(j, n) = [j = i] softmax_n s(i,t; i,n)``;
- regions -> words: each region distributes its attention over every word of every report,
  ``p_jn(i, t) = softmax_(i,t) s(i,t; j,n)`` (real words only), and
  ``q_jn(i, t) = [i = j] softmax_t s(j,t; j,n)``;
- ``L_kl = 1/2 (mean over real words of KL(q_it || p_it) + mean over regions of KL(q_jn || p_jn))``.

``KL(q || p)`` here equals ``-log`` of the probability mass the batch-wide distribution puts on
the matched study (``q`` is ``p`` restricted to it and renormalised), so the fine level is a
word-to-image and region-to-report contrast whose within-pair attention stays free: a word may
align to any region of its image. It is not minimised by collapsing the similarities (a uniform
``s`` gives ``log B``), unlike a KL between the two directions of one pair.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mlx_research.losses import contrastive_loss, cosine_similarity_loss, kl_div

Array = jax.Array

# Logit of a masked word: exp(_MASKED - max) is exactly 0 in float32, and it stays finite.
_MASKED = -1e9


def sequence_mask(tokens: Array, pad_id: int, eos_id: int) -> Array:
    """Positions of a token sequence that are read: not ``pad_id``, up to and including the first
    ``eos_id``; whatever follows the first EOS is ignored.

    Args:
      tokens: ``[..., L]`` int token ids.
      pad_id: padding id.
      eos_id: end-of-sequence id.

    Returns:
      ``[..., L]`` bool (all False for an all-``pad_id`` sequence, e.g. a missing prior report).
    """
    eos = tokens == eos_id
    eos_before = (jnp.cumsum(eos, axis=-1) - eos) > 0
    return (tokens != pad_id) & ~eos_before


def masked_mean(x: Array, valid: Array) -> Array:
    """Mean of ``x: [..., L, D]`` over the positions where ``valid: [..., L]``; 0 for none."""
    weights = valid.astype(x.dtype)[..., None]
    return jnp.sum(x * weights, axis=-2) / jnp.maximum(jnp.sum(weights, axis=-2), 1.0)


def coarse_alignment_losses(
    image_global: Array, report_global: Array, temperature: float
) -> tuple[Array, Array]:
    """Coarse alignment: cosine similarity loss and InfoNCE (see the module doc).

    Args:
      image_global: ``[B, A]`` global image embeddings.
      report_global: ``[B, A]`` global report embeddings, row i matched with image i.
      temperature: InfoNCE softmax temperature.

    Returns:
      ``(cosine_loss, contrastive_loss)``, float32 scalars, each a mean over the B pairs.
    """
    image_global = image_global.astype(jnp.float32)
    report_global = report_global.astype(jnp.float32)
    cosine = cosine_similarity_loss(image_global, report_global, reduction="mean")
    contrastive = contrastive_loss(image_global, report_global, temperature=temperature)
    return cosine, contrastive


def _unit(x: Array) -> Array:
    """Rows of ``x`` scaled to unit L2 norm (norm floored at 1e-12, as torch F.normalize)."""
    return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-24))


def fine_alignment_kl(
    regions: Array, words: Array, word_valid: Array, temperature: float
) -> Array:
    """Fine (region-word) alignment loss ``L_kl`` (see the module doc).

    Args:
      regions: ``[B, N, A]`` region embeddings of the B images.
      words: ``[B, T, A]`` word embeddings of the B matched reports.
      word_valid: ``[B, T]`` bool, the real words (a report with none adds no word terms and its
        image no region terms).
      temperature: ``tau`` of the similarity softmaxes.

    Returns:
      float32 scalar.
    """
    b, t, n = words.shape[0], words.shape[1], regions.shape[1]
    word_valid = jnp.asarray(word_valid, bool)
    sim = jnp.einsum("ita,jna->itjn", _unit(words.astype(jnp.float32)),
                     _unit(regions.astype(jnp.float32))) / temperature  # [B, T, B, N]
    same = jnp.arange(b)

    # Word -> regions: softmax over the B * N regions of the batch.
    log_p = jax.nn.log_softmax(sim.reshape(b, t, b * n), axis=-1).reshape(b, t, b, n)
    q = jax.nn.softmax(sim[same, :, same], axis=-1)  # [B, T, N], own image
    word_kl = jnp.sum(kl_div(log_p[same, :, same], q, reduction="none"), axis=-1)  # [B, T]
    word_term = jnp.sum(jnp.where(word_valid, word_kl, 0.0)) / jnp.maximum(word_valid.sum(), 1)

    # Regions -> words: softmax over the real words of the batch.
    masked = jnp.where(word_valid[:, :, None, None], sim, _MASKED)
    log_p = jax.nn.log_softmax(masked.reshape(b * t, b * n), axis=0).reshape(b, t, b, n)
    q = jax.nn.softmax(masked[same, :, same], axis=1)  # [B, T, N], own report
    region_kl = jnp.sum(kl_div(log_p[same, :, same], q, reduction="none"), axis=1)  # [B, N]
    has_words = jnp.broadcast_to(word_valid.any(axis=1)[:, None], region_kl.shape)
    region_term = jnp.sum(jnp.where(has_words, region_kl, 0.0)) / jnp.maximum(has_words.sum(), 1)
    return 0.5 * (word_term + region_term)
