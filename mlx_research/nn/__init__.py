"""Building blocks: activations, norms, attention, position encodings, Transformer, ResNet,
regularization. Every module is a `flax.linen` module; every function is jit-able."""

from mlx_research.nn.activations import (
    GatedLinearUnit,
    PReLU,
    RReLU,
    elu,
    gelu,
    get_activation,
    glu,
    identity,
    leaky_relu,
    relu,
    rrelu,
    sigmoid,
    silu,
    swish,
    tanh,
)
from mlx_research.nn.attention import (
    HeadProjection,
    MultiHeadAttention,
    combine_masks,
    make_causal_mask,
    make_padding_mask,
    scaled_dot_product_attention,
)
from mlx_research.nn.normalization import (
    NORM_NAMES,
    BatchNorm,
    FrozenBatchNorm,
    GroupNorm,
    InstanceNorm,
    LayerNorm,
    get_norm,
)
from mlx_research.nn.position import (
    LearnedPositionEmbedding,
    LearnedPositionEmbedding2D,
    sine_position_encoding_2d,
    sinusoidal_position_encoding,
)
from mlx_research.nn.regularization import (
    DEFAULT_EXCLUDE,
    Dropout,
    decay_mask,
    dropout,
    l1_penalty,
    l2_penalty,
)
from mlx_research.nn.resnet import (
    BasicBlock,
    Bottleneck,
    ResNet,
    SmallCNN,
    resnet18,
    resnet34,
    resnet50,
)
from mlx_research.nn.transformer import (
    MlpBlock,
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
)

_SUBMODULES = {"activations", "attention", "normalization", "position", "regularization",
               "resnet", "transformer"}
__all__ = sorted(name for name in dir() if not name.startswith("_") and name not in _SUBMODULES)
