"""Losses as pure, jit-able functions with torch's names, defaults and reductions.

Class axes are last (JAX layout). Every loss takes ``reduction="mean"|"sum"|"none"``.
"""

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
from mlx_research.losses.embedding import (
    contrastive_loss,
    cosine_embedding_loss,
    cosine_similarity,
    cosine_similarity_loss,
)
from mlx_research.losses.memory import codebook_loss, orthogonality_loss
from mlx_research.losses.regression import (
    huber_loss,
    l1_loss,
    mse_loss,
    smooth_l1_loss,
)
from mlx_research.losses.reduction import reduce_loss
from mlx_research.losses.weighting import UncertaintyWeighting, uncertainty_weighted_sum

__all__ = [
    "UncertaintyWeighting",
    "asymmetric_loss",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "codebook_loss",
    "contrastive_loss",
    "cosine_embedding_loss",
    "cosine_similarity",
    "cosine_similarity_loss",
    "cross_entropy",
    "huber_loss",
    "kl_div",
    "l1_loss",
    "mse_loss",
    "nll_loss",
    "orthogonality_loss",
    "reduce_loss",
    "sigmoid_focal_loss",
    "smooth_l1_loss",
    "softmax_focal_loss",
    "uncertainty_weighted_sum",
]
