"""The public surface promised by the README is importable from the package roots."""

import mlx_research.losses
import mlx_research.nn

NN = """sigmoid tanh relu leaky_relu elu gelu silu swish glu rrelu PReLU RReLU GatedLinearUnit
get_activation BatchNorm LayerNorm InstanceNorm GroupNorm FrozenBatchNorm get_norm
scaled_dot_product_attention MultiHeadAttention make_padding_mask make_causal_mask combine_masks
sinusoidal_position_encoding sine_position_encoding_2d LearnedPositionEmbedding
TransformerEncoderLayer TransformerDecoderLayer TransformerEncoder TransformerDecoder
ResNet resnet18 resnet34 resnet50 SmallCNN l1_penalty l2_penalty decay_mask Dropout dropout"""
LOSSES = """cross_entropy binary_cross_entropy_with_logits binary_cross_entropy nll_loss kl_div
sigmoid_focal_loss softmax_focal_loss asymmetric_loss l1_loss smooth_l1_loss mse_loss huber_loss
cosine_embedding_loss cosine_similarity_loss contrastive_loss codebook_loss orthogonality_loss
uncertainty_weighted_sum UncertaintyWeighting"""


def test_nn_exports():
    missing = [n for n in NN.split() if n not in mlx_research.nn.__all__]
    assert not missing
    assert all(callable(getattr(mlx_research.nn, n)) for n in NN.split())


def test_losses_exports():
    missing = [n for n in LOSSES.split() if n not in mlx_research.losses.__all__]
    assert not missing
    assert all(callable(getattr(mlx_research.losses, n)) for n in LOSSES.split())


OPS = """box_convert box_area box_iou generalized_box_iou clip_boxes_to_image remove_small_boxes
BoxCoder anchor_grid nms batched_nms roi_align roi_pool multiscale_roi_align balanced_sample
linear_sum_assignment matcher"""


def test_ops_exports():
    import mlx_research.ops

    missing = [n for n in OPS.split() if n not in mlx_research.ops.__all__]
    assert not missing
    assert all(callable(getattr(mlx_research.ops, n)) for n in OPS.split())
