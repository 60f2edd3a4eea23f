"""The device mesh with axes ("data", "model", "stage").

One mesh is built per run from the config's axis sizes; the model's logical axis names are mapped
onto it by the rules in `mlx_research.parallel.sharding`.

Physical layout: devices are laid out with ``stage`` outermost, then ``data``, with ``model``
innermost, so that tensor-parallel groups (collectives inside every layer) are the closest devices
(same host / fastest interconnect), data-parallel all-reduces (once per step) come next, and the
pipeline's point-to-point stage transfers cross the slowest links. `jax.make_mesh` picks the
topology-aware device order for that physical shape; the axes are then reordered to the
conventional names order ``("data", "model", "stage")``, which changes only how axes are named,
not which devices are grouped together.
"""

from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

MESH_AXES: tuple[str, str, str] = ("data", "model", "stage")


def resolve_axis_sizes(axes: Mapping[str, int] | None, num_devices: int) -> tuple[int, int, int]:
    """Resolves a config's axis sizes to concrete sizes for ``MESH_AXES``.

    Args:
      axes: mesh axis name -> size; absent axes have size 1, at most one size may be -1 (all the
        remaining devices). ``None`` means ``{"data": -1}``.
      num_devices: number of devices the mesh must cover exactly.

    Returns:
      (data, model, stage) sizes whose product is ``num_devices``.

    Raises:
      ValueError: unknown axis name, invalid size, several -1, or sizes that do not multiply to the
        device count.
    """
    axes = {"data": -1} if axes is None else dict(axes)
    unknown = sorted(set(axes) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"unknown mesh axes {unknown}; expected a subset of {list(MESH_AXES)}")
    for name, size in axes.items():
        is_int = isinstance(size, (int, np.integer)) and not isinstance(size, bool)
        if not is_int or (size < 1 and size != -1):
            raise ValueError(f"mesh axis {name!r} has size {size!r}; sizes are positive ints or -1")
    free = [name for name, size in axes.items() if size == -1]
    if len(free) > 1:
        raise ValueError(f"mesh axes {axes}: at most one axis may be -1, got {free}")
    fixed = int(np.prod([size for size in axes.values() if size != -1]))
    if free:
        if num_devices % fixed:
            raise ValueError(
                f"mesh axes {axes}: {num_devices} devices are not divisible by the fixed sizes' "
                f"product {fixed}")
        axes[free[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise ValueError(f"mesh axes {axes} need {fixed} devices, but {num_devices} are available")
    data, model, stage = (int(axes.get(name, 1)) for name in MESH_AXES)
    return data, model, stage


def create_mesh(
    axes: Mapping[str, int] | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """Builds the ("data", "model", "stage") mesh with Auto axis types.

    Auto axis types are what flax.linen's logical partitioning (`nn.with_logical_partitioning`,
    `nn.with_logical_constraint`) needs; `jax.make_mesh` defaults to Explicit.

    Args:
      axes: mesh axis name -> size, e.g. ``{"data": -1, "model": 2, "stage": 1}``; absent axes
        have size 1 and one axis may be -1 (the remaining devices). Default ``{"data": -1}``.
      devices: devices to use; default all of ``jax.devices()``.

    Returns:
      A `jax.sharding.Mesh` with ``axis_names == ("data", "model", "stage")``.

    Raises:
      ValueError: see `resolve_axis_sizes`.
    """
    devices = list(jax.devices() if devices is None else devices)
    data, model, stage = resolve_axis_sizes(axes, len(devices))
    auto = (AxisType.Auto,) * 3
    physical = jax.make_mesh((stage, data, model), ("stage", "data", "model"), axis_types=auto,
                             devices=devices)
    return Mesh(physical.devices.transpose(1, 2, 0), MESH_AXES, axis_types=auto)
