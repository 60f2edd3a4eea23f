"""Layer-stacked Transformer encoder/decoder that run through the GPipe pipeline.

The ``num_layers`` layers' weights are stacked on a leading axis with logical name "layers"
(mapped to the "stage" mesh axis by the sharding rules), so the parameter tree is the same for
every stage count and a checkpoint restores under any mesh. At apply time the stack is cut into
S = ``mesh.shape["stage"]`` stages of ``num_layers / S`` consecutive layers each and run with
`mlx_research.parallel.pipeline.pipeline_apply`; each stage scans over its layers. Without a mesh,
with S == 1 and at initialisation, the layers run as one sequential scan (the same function).

`pipeline_apply` moves a single ``[B, L, D]`` array between stages, so the per-example masks
travel with it as one extra channel holding the token-validity flags (``[B, L, D + 1]``). The
decoder's stage input is memory and target concatenated along the length axis; memory passes
through every stage unchanged, which also routes its gradient back through the pipeline.

Dropout is not supported inside the pipelined stacks (a stage function sees no micro-batch index
to draw masks from): training with ``dropout > 0`` raises.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from mlx_research.nn.attention import combine_masks, make_causal_mask, make_padding_mask
from mlx_research.nn.transformer import (
    TransformerDecoderLayer,
    TransformerEncoderLayer,
    _StackBase,
)
from mlx_research.parallel.pipeline import pipeline_apply

Array = jax.Array
LayerFn = Callable[[Any, Array], Array]


def _pack(x: Array, valid: Array) -> Array:
    """x [B, L, D], valid [B, L] bool -> [B, L, D + 1] with the flags in the last channel."""
    return jnp.concatenate([x, valid[..., None].astype(x.dtype)], axis=-1)


def _unpack(packed: Array) -> tuple[Array, Array]:
    """Inverse of `_pack`: [B, L, D + 1] -> (x [B, L, D], valid [B, L] bool)."""
    return packed[..., :-1], packed[..., -1] > 0.5


def _add_layers_axis(tree: Any) -> Any:
    """Prepends the logical axis "layers" to every `nn.Partitioned` box of a vmapped init."""
    return jax.tree.map(
        lambda box: box.add_axis(0, {nn.PARTITION_NAME: "layers"}),
        tree,
        is_leaf=lambda x: isinstance(x, nn.Partitioned),
    )


class _PipelinedStack(_StackBase):
    """Stacked-weight layers run sequentially or through `pipeline_apply` (see module doc)."""

    num_microbatches: int = 1

    def _stacked_params(self, layer: nn.Module, *example: Any) -> Any:
        """Creates (at init) or reads the [num_layers, ...] stacked weights of ``layer``."""

        def init(rng: Array) -> Any:
            keys = jax.random.split(rng, self.num_layers)
            stacked = jax.vmap(lambda key: layer.init(key, *example)["params"])(keys)
            return _add_layers_axis(stacked)

        return self.param("layers", init)

    def _run(self, layer_fn: LayerFn, stacked: Any, packed: Array, deterministic: bool) -> Array:
        """Applies the num_layers layers of ``stacked`` to ``packed`` [B, L, D + 1]."""
        if not deterministic and self.dropout > 0:
            raise ValueError(f"pipelined layer stacks do not support dropout in training; got "
                             f"dropout={self.dropout} (set it to 0)")
        mesh = jax.sharding.get_abstract_mesh()
        stages = 1 if mesh.empty else dict(mesh.shape).get("stage", 1)
        if self.num_layers % stages:
            raise ValueError(f"num_layers={self.num_layers} is not divisible by the {stages} "
                             "pipeline stages of the mesh's 'stage' axis")

        def stage_fn(params: Any, h: Array) -> Array:
            return lax.scan(lambda h, p: (layer_fn(p, h), None), h, params)[0]

        if stages == 1 or self.is_initializing():
            return stage_fn(stacked, packed)
        per_stage = self.num_layers // stages
        stage_params = jax.tree.map(
            lambda p: p.reshape(stages, per_stage, *p.shape[1:]), stacked)
        return pipeline_apply(stage_fn, stage_params, packed, mesh=mesh,
                              num_microbatches=self.num_microbatches)

    def _normed(self, x: Array) -> Array:
        norm = self._final_norm()
        return x if norm is None else norm(x)


class PipelinedEncoder(_PipelinedStack):
    """Encoder stack of ``TransformerEncoderLayer`` with stacked weights.

    Attributes:
      num_microbatches: M of the GPipe schedule (the batch must be divisible by it).
      (others): as ``TransformerEncoder``.
    """

    @nn.compact
    def __call__(self, x: Array, valid: Array, deterministic: bool = True) -> Array:
        """Encodes ``x: [B, S, D]`` whose padding is ``valid: [B, S]`` False; returns [B, S, D]."""
        layer = TransformerEncoderLayer(**self._layer_kwargs(), parent=None)
        stacked = self._stacked_params(layer, x, make_padding_mask(None, valid))

        def layer_fn(params: Any, packed: Array) -> Array:
            h, ok = _unpack(packed)
            h = layer.apply({"params": params}, h, make_padding_mask(None, ok))
            return _pack(h, ok)

        h, _ = _unpack(self._run(layer_fn, stacked, _pack(x, valid), deterministic))
        return self._normed(h)


class PipelinedDecoder(_PipelinedStack):
    """Causal decoder stack of ``TransformerDecoderLayer`` with stacked weights.

    Self-attention is causal and ignores padded targets; cross-attention ignores padded memory.

    Attributes:
      num_microbatches: M of the GPipe schedule (the batch must be divisible by it).
      (others): as ``TransformerDecoder`` (no ``return_intermediate``).
    """

    @nn.compact
    def __call__(
        self,
        tgt: Array,
        memory: Array,
        tgt_valid: Array,
        memory_valid: Array,
        deterministic: bool = True,
    ) -> Array:
        """Decodes ``tgt: [B, T, D]`` attending to ``memory: [B, S, D]``.

        Args:
          tgt: [B, T, D] target embeddings.
          memory: [B, S, D] encoder output.
          tgt_valid: [B, T] bool, False at padded targets.
          memory_valid: [B, S] bool, False at padded memory tokens.
          deterministic: must be True unless ``dropout == 0``.

        Returns:
          [B, T, D].
        """
        layer = TransformerDecoderLayer(**self._layer_kwargs(), parent=None)
        src_len, tgt_len = memory.shape[1], tgt.shape[1]

        def masks(mem_ok: Array, tgt_ok: Array) -> tuple[Array, Array]:
            self_mask = combine_masks(make_causal_mask(tgt_len), make_padding_mask(None, tgt_ok))
            return self_mask, make_padding_mask(None, mem_ok)

        stacked = self._stacked_params(layer, tgt, memory, *masks(memory_valid, tgt_valid))

        def layer_fn(params: Any, packed: Array) -> Array:
            h, ok = _unpack(packed)
            mem, y = h[:, :src_len], h[:, src_len:]
            y = layer.apply({"params": params}, y, mem, *masks(ok[:, :src_len], ok[:, src_len:]))
            return _pack(jnp.concatenate([mem, y], axis=1), ok)

        packed = _pack(jnp.concatenate([memory, tgt], axis=1),
                       jnp.concatenate([memory_valid, tgt_valid], axis=1))
        h, _ = _unpack(self._run(layer_fn, stacked, packed, deterministic))
        return self._normed(h[:, src_len:])
