"""DETR (Carion et al. 2020): a Transformer that predicts a set of boxes, trained by matching.

Network (facebookresearch/detr ``models/detr.py``, ``transformer.py``): a `Backbone` (ImageNet
normalisation, ``SmallCNN`` or a ResNet) whose map at ``feature_level`` goes through a 1x1
input projection to ``hidden_dim``; 2-D sine positions (``normalize=True``) over the valid
(unpadded) feature pixels; a Transformer encoder over the flattened map and a decoder
whose ``num_queries`` object queries start at zero content with learned query positions; every
decoder layer's output (after the decoder's final LayerNorm) goes through the shared class head
(``num_classes + 1`` logits) and the 3-layer box MLP with a sigmoid (normalised cxcywh).

Label layout: targets carry labels ``1..K`` (0 = padding, never a class, as everywhere in this
codebase); logit column ``c`` scores label ``c + 1`` and the last column ``K`` is "no object".
(DETR sizes its head ``max_id + 2``, so a column for id 0 exists there but is never a target;
leaving that column out is the only difference.)

Two convergence aids from later DETR papers, off by default (off = DETR): ``spatial_prior``
(SMCA, Gao et al. 2021: a Gaussian-like cross-attention window around a learned reference
point per query, box centres predicted relative to it; ``SpatiallyModulatedDecoder``) and
``query_groups`` (Group DETR, Chen et al. 2023: G independent groups of queries, each matched
one-to-one, inference with the first). Training DETR from scratch on small synthetic images
stays on the "every query predicts the mean box" plateau for thousands of steps; these two
leave it within a few hundred (see experiments/detection/detr_shapes.py).

Detector parts (`interface`): `DETR` (images -> `DetrOutputs`, every decoder layer's class
logits and boxes), `DetrCriterion` (`set_criterion.py`: DETR's Hungarian matching and set
criterion) and `DetrPostprocess` (DETR's ``PostProcess`` of the last layer's first query group).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mlx_research.config_fields import config_field
from mlx_research.models.backbone import Backbone
from mlx_research.nn.position import LearnedPositionEmbedding, sine_position_encoding_2d
from mlx_research.nn.transformer import (TransformerDecoder, TransformerDecoderLayer,
                                         TransformerEncoder)
from mlx_research.ops.boxes import box_convert


class BoxMLP(nn.Module):
    """DETR's ``MLP``: ``num_layers`` Dense layers, relu between them: [..., D] -> [..., out]."""

    hidden_dim: int
    out_dim: int = 4
    num_layers: int = 3
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.num_layers):
            last = i == self.num_layers - 1
            x = nn.Dense(self.out_dim if last else self.hidden_dim, dtype=self.dtype,
                         name=f"layers_{i}")(x)
            x = x if last else nn.relu(x)
        return x


def feature_mask(image_hw: jax.Array, feature_hw: tuple[int, int], stride: int) -> jax.Array:
    """Valid feature pixels: DETR's nearest-neighbour downsampling of the image padding mask.

    Args:
      image_hw: [B, 2] int, valid (unpadded) height and width of each image in pixels.
      feature_hw: (h, w) of the feature map.
      stride: image pixels per feature pixel.

    Returns:
      [B, h, w] bool, True where ``row * stride < height`` and ``col * stride < width``.
    """
    rows = jnp.arange(feature_hw[0]) * stride
    cols = jnp.arange(feature_hw[1]) * stride
    return ((rows[None, :, None] < image_hw[:, 0, None, None])
            & (cols[None, None, :] < image_hw[:, 1, None, None]))


class SpatiallyModulatedDecoder(nn.Module):
    """DETR's decoder with SMCA's spatial prior (Gao et al. 2021, single scale, shared centre).

    Each query has a learned reference point ``r = sigmoid(Dense(query_pos))`` (x, y in [0, 1]
    of the valid image). In every layer each head predicts a spread ``s = sigmoid(Dense(tgt +
    query_pos))`` per axis, and its cross-attention logits get ``log G = -((x - r_x)^2 / s_x^2
    + (y - r_y)^2 / s_y^2) / beta`` at key position (x, y) (feature-cell centres, normalised):
    a Gaussian-like window the query can widen or move, so attention is local from the start.

    Attributes:
      num_layers: decoder layers.
      beta: bandwidth of the prior (larger = wider windows).
      layer_kwargs: ``TransformerDecoderLayer`` fields (d_model, nhead, ...).
    """

    num_layers: int
    beta: float
    layer_kwargs: dict

    @nn.compact
    def __call__(self, memory: jax.Array, key_xy: jax.Array, key_mask: jax.Array, pos: jax.Array,
                 query_pos: jax.Array, deterministic: bool,
                 self_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """memory/pos [B, S, D], key_xy [B, S, 2], key_mask [B, 1, 1, S], query_pos [B, Q, D],
        self_mask [1, 1, Q, Q] or None -> (outputs [L, B, Q, D] after the final norm,
        reference point logits [Q, 2])."""
        heads = self.layer_kwargs["nhead"]
        reference_logit = nn.Dense(2, name="reference_points")(query_pos[0])
        reference = jax.nn.sigmoid(reference_logit)
        offset = key_xy[:, None, None, :, :] - reference[None, None, :, None, :]  # [B,1,Q,S,2]
        tgt, outputs = jnp.zeros_like(query_pos), []
        norm = nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, dtype=self.layer_kwargs[
            "dtype"], name="norm")
        for i in range(self.num_layers):
            spread = jax.nn.sigmoid(nn.Dense(2 * heads, name=f"spread_{i}")(tgt + query_pos))
            spread = jnp.maximum(spread, 1e-3)  # finite bias when the sigmoid saturates
            spread = spread.reshape(*spread.shape[:2], heads, 2).transpose(0, 2, 1, 3)
            bias = -((offset / spread[:, :, :, None, :]) ** 2).sum(-1) / self.beta  # [B,H,Q,S]
            tgt = TransformerDecoderLayer(**self.layer_kwargs, name=f"layers_{i}")(
                tgt, memory, self_mask, key_mask, pos, query_pos, deterministic,
                cross_bias=bias.astype(memory.dtype))
            outputs.append(norm(tgt))
        return jnp.stack(outputs), reference_logit


class DetrOutputs(NamedTuple):
    """Every decoder layer's predictions, L = num_decoder_layers (the last layer last), G * Q
    queries (G = query_groups, group-major).

    Attributes:
      logits: [L, B, G * Q, K + 1] float32, the last column no-object.
      boxes: [L, B, G * Q, 4] float32 cxcywh in [0, 1] of the valid image.
    """

    logits: jax.Array
    boxes: jax.Array


class DETR(nn.Module):
    """Backbone + input projection + Transformer encoder/decoder + class and box heads.

    Attributes:
      num_classes: object classes K (no-object excluded); the class head has K + 1 outputs.
      backbone: "small_cnn" | "resnet18" | "resnet34" | "resnet50".
      small_cnn_features: SmallCNN stage widths (stride 2 each).
      feature_level: backbone map fed to the Transformer, "C<k>" (stride 2^k).
      norm: backbone norm: "batch" | "frozen_batch" (pretrained) | "group".
      hidden_dim: Transformer width D (a multiple of nhead and of 4: D / 2 sine features per
        axis).
      nhead: attention heads.
      num_encoder_layers: encoder layers.
      num_decoder_layers: decoder layers L (each one's output is scored).
      dim_feedforward: FFN width.
      dropout: Transformer dropout.
      pre_norm: pre-LN layers (DETR's ``--pre_norm``) instead of post-LN.
      pos_temperature: wavelength base of the sine positions (DETR's temperature, 10000).
      pos_scale: range of the normalised positions (DETR: 2 pi, one period of the fastest
        feature across the map; larger values add finer position features).
      num_queries: object queries Q: most detections per image.
      spatial_prior: SMCA's Gaussian-like cross-attention prior around learned reference points,
        box centres predicted relative to them (``SpatiallyModulatedDecoder``); not in DETR.
      spatial_prior_beta: the prior's bandwidth (larger = wider attention windows).
      query_groups: Group DETR (Chen et al. 2023): G groups of ``num_queries`` queries that
        attend only within their group; each group is matched to the targets on its own
        (one-to-one within a group, G positives per object). Outputs hold all G * Q queries,
        group-major; inference uses group 0. 1 = DETR.
      dtype: computation dtype.
    """

    num_classes: int
    backbone: str = config_field("resnet50")
    small_cnn_features: Sequence[int] = config_field((32, 64, 128))
    feature_level: str = config_field("C5")
    norm: str = config_field("batch")
    hidden_dim: int = config_field(256, low=4)
    nhead: int = config_field(8, low=1)
    num_encoder_layers: int = config_field(6, low=0)
    num_decoder_layers: int = config_field(6, low=1)
    dim_feedforward: int = config_field(2048, low=1)
    dropout: float = config_field(0.1, low=0, high=0.99)
    pre_norm: bool = config_field(False)
    pos_temperature: float = config_field(10000.0, low=1)
    pos_scale: float = config_field(2 * math.pi, low=0)
    num_queries: int = config_field(100, low=1)
    spatial_prior: bool = config_field(False)
    spatial_prior_beta: float = config_field(1.0, low=1e-6)
    query_groups: int = config_field(1, low=1)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, image_hw: jax.Array,
                 train: bool = False) -> DetrOutputs:
        """Scores every query at every decoder layer.

        Args:
          images: [B, H, W, 3] float in [0, 1], padded bottom/right.
          image_hw: [B, 2] int, valid height and width of each image.
          train: batch statistics and dropout on (needs a "dropout" rng when dropout > 0).

        Returns:
          DetrOutputs.
        """
        extractor = Backbone(
            arch=self.backbone, feature_levels=(self.feature_level,),
            small_cnn_features=tuple(self.small_cnn_features), norm=self.norm,
            body_name="backbone", dtype=self.dtype, name="extractor")
        (features,) = extractor(images, train)
        batch, height, width = features.shape[:3]
        src = nn.Conv(self.hidden_dim, (1, 1), dtype=self.dtype, name="input_proj")(features)
        stride = extractor.strides()[0]
        valid = feature_mask(image_hw, (height, width), stride)
        pos = sine_position_encoding_2d(valid, self.hidden_dim // 2, self.pos_temperature,
                                        scale=self.pos_scale).astype(self.dtype)
        src = src.reshape(batch, height * width, self.hidden_dim)
        pos = pos.reshape(batch, height * width, self.hidden_dim)
        key_mask = valid.reshape(batch, 1, 1, height * width)

        layer_kwargs = dict(d_model=self.hidden_dim, nhead=self.nhead,
                            dim_feedforward=self.dim_feedforward, dropout=self.dropout,
                            norm_first=self.pre_norm, dtype=self.dtype)
        memory = TransformerEncoder(num_layers=self.num_encoder_layers, **layer_kwargs,
                                    name="encoder")(src, key_mask, pos, deterministic=not train)
        queries = self.num_queries * self.query_groups
        query_pos = LearnedPositionEmbedding(queries, self.hidden_dim,
                                             name="query_embed")(queries)
        query_pos = jnp.broadcast_to(query_pos.astype(self.dtype),
                                     (batch, queries, self.hidden_dim))
        group = jnp.arange(queries) // self.num_queries
        self_mask = None  # Group DETR: queries attend within their group
        if self.query_groups > 1:
            self_mask = (group[:, None] == group[None, :])[None, None]
        if self.spatial_prior:
            cells = (jnp.arange(height * width) // width, jnp.arange(height * width) % width)
            key_xy = jnp.stack([(cells[1] + 0.5) * stride / image_hw[:, 1:2],
                                (cells[0] + 0.5) * stride / image_hw[:, 0:1]], -1)  # [B, S, 2]
            hs, reference_logit = SpatiallyModulatedDecoder(
                self.num_decoder_layers, self.spatial_prior_beta, layer_kwargs, name="decoder")(
                memory, key_xy, key_mask, pos, query_pos, not train, self_mask)
        else:
            hs = TransformerDecoder(num_layers=self.num_decoder_layers, final_norm=True,
                                    return_intermediate=True, **layer_kwargs, name="decoder")(
                jnp.zeros_like(query_pos), memory, self_mask=self_mask, cross_mask=key_mask,
                pos=pos, query_pos=query_pos, deterministic=not train)
        logits = nn.Dense(self.num_classes + 1, dtype=self.dtype, name="class_embed")(hs)
        boxes = BoxMLP(self.hidden_dim, dtype=self.dtype, name="bbox_embed")(hs)
        boxes = boxes.astype(jnp.float32)
        if self.spatial_prior:  # centres relative to the reference points
            boxes = boxes.at[..., :2].add(reference_logit.astype(jnp.float32))
        return DetrOutputs(logits.astype(jnp.float32), jax.nn.sigmoid(boxes))


def postprocess(logits: jax.Array, boxes: jax.Array,
                image_hw: jax.Array) -> dict[str, jax.Array]:
    """DETR's ``PostProcess``: one detection per query, in pixels of the valid image.

    Args:
      logits: [B, Q, K + 1] (the last decoder layer's).
      boxes: [B, Q, 4] cxcywh normalised.
      image_hw: [B, 2] valid height and width of each image.

    Returns:
      {"boxes": [B, Q, 4] xyxy pixels, "scores": [B, Q] the highest class probability (no-object
      excluded), "labels": [B, Q] int32 in 1..K, "valid": [B, Q] all True}.
    """
    prob = jax.nn.softmax(logits, axis=-1)[..., :-1]
    height, width = image_hw[:, 0].astype(jnp.float32), image_hw[:, 1].astype(jnp.float32)
    scale = jnp.stack([width, height, width, height], axis=-1)[:, None, :]
    return {
        "boxes": box_convert(boxes, "cxcywh", "xyxy") * scale,
        "scores": prob.max(-1),
        "labels": (jnp.argmax(prob, axis=-1) + 1).astype(jnp.int32),
        "valid": jnp.ones(prob.shape[:2], bool),
    }


@dataclasses.dataclass(frozen=True)
class DetrPostprocess:
    """`postprocess` of the last decoder layer's first query group (Group DETR infers with it).

    Attributes:
      num_queries: Q, the queries of one group.
    """

    num_queries: int

    def __call__(self, outputs: DetrOutputs, image_hw: jax.Array) -> dict[str, jax.Array]:
        """One detection per query [B, Q] (see `interface`), all valid, as DETR's COCO
        evaluation keeps every query."""
        q = self.num_queries
        return postprocess(outputs.logits[-1, :, :q], outputs.boxes[-1, :, :q], image_hw)
