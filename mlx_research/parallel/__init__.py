"""Parallelism: the ("data", "model", "stage") mesh, logical sharding rules, GPipe pipeline."""

from mlx_research.parallel.mesh import MESH_AXES, create_mesh, resolve_axis_sizes
from mlx_research.parallel.pipeline import bubble_fraction, pipeline_apply
from mlx_research.parallel.sharding import (
    DEFAULT_RULES,
    FSDP_RULES,
    batch_sharding,
    bytes_per_device,
    get_rules,
    logical_shardings,
    shard_tree,
)

__all__ = [
    "DEFAULT_RULES",
    "FSDP_RULES",
    "MESH_AXES",
    "batch_sharding",
    "bubble_fraction",
    "bytes_per_device",
    "create_mesh",
    "get_rules",
    "logical_shardings",
    "pipeline_apply",
    "resolve_axis_sizes",
    "shard_tree",
]
