"""torchvision ResNet state dict -> variables of ``mlx_research.nn.resnet18/34/50``.

    python -m mlx_research.tools.convert_torchvision resnet50 IN.pth OUT.npz

Only the CLI needs torch, to read the ``.pth`` (``pip install torch``); ``convert`` takes numpy
arrays and checks them against our model's variable tree (``jax.eval_shape``). ``OUT.npz`` holds one float32 array per leaf, keyed by its "/"-joined path
(``params/conv1/kernel``, ``batch_stats/bn1/mean``, ...; see ``mlx_research.tree.flatten``);
``load_npz`` turns it back into ``{"params": ..., "batch_stats": ...}``.

Names map by the rule of ``mlx_research.nn.resnet`` (``layer2_0/downsample_0`` <->
``layer2.0.downsample.0``): conv ``weight`` [O, I, kh, kw] -> ``kernel`` [kh, kw, I, O];
BatchNorm ``weight``/``bias`` -> ``params`` ``scale``/``bias``; ``running_mean``/``running_var``
-> ``batch_stats`` ``mean``/``var``. ``num_batches_tracked`` is dropped, and so is the
classifier ``fc.*``: our backbones have no classifier head. Apply the result with
``train=False`` to reproduce torchvision's eval mode (running statistics, eps 1e-5).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mlx_research.nn import resnet
from mlx_research.tree import flatten

ARCHS = ("resnet18", "resnet34", "resnet50")

# Our leaf name -> torch parameter/buffer name.
_LEAF_TO_TORCH = {
    "kernel": "weight",
    "scale": "weight",
    "bias": "bias",
    "mean": "running_mean",
    "var": "running_var",
}
_OIHW_TO_HWIO = (2, 3, 1, 0)
_HWIO_TO_OIHW = (3, 2, 0, 1)


def _torch_module_name(name: str) -> str:
    """``layer2_0`` -> ``layer2.0``, ``downsample_1`` -> ``downsample.1``, ``bn1`` -> ``bn1``."""
    base, sep, index = name.rpartition("_")
    return f"{base}.{index}" if sep and index.isdigit() else name


def _target_shapes(arch: str, norm: str = "batch") -> dict[str, tuple[int, ...]]:
    """{"/"-joined variable path: shape} of our ``arch`` backbone (traced, nothing allocated)."""
    model = getattr(resnet, arch)(norm=norm)
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    return {name: tuple(leaf.shape) for name, leaf in flatten(variables).items()}


def torch_key(path: str) -> str:
    """torchvision state-dict key of one of our variable paths.

    Args:
        path: e.g. ``"params/layer2_0/downsample_0/kernel"``.

    Returns:
        e.g. ``"layer2.0.downsample.0.weight"``.
    """
    _, *modules, leaf = path.split("/")
    return ".".join([*(_torch_module_name(m) for m in modules), _LEAF_TO_TORCH[leaf]])


def _is_ignored(key: str) -> bool:
    return key.startswith("fc.") or key.endswith(".num_batches_tracked")


def convert(
    state_dict: Mapping[str, Any], arch: str, norm: str = "batch"
) -> dict[str, dict[str, Any]]:
    """Converts a torchvision ResNet state dict to our variables.

    Args:
        state_dict: torchvision key -> array (numpy, or anything ``np.asarray`` takes), conv
            weights [O, I, kh, kw], BatchNorm vectors [C].
        arch: ``"resnet18"``, ``"resnet34"`` or ``"resnet50"``.
        norm: the target model's norm: ``"batch"`` (BatchNorm scale/bias in ``params``) or
            ``"frozen_batch"`` (``FrozenBatchNorm``: scale/bias with the statistics in
            ``batch_stats``, nothing trainable), as for a detection backbone.

    Returns:
        ``{"params": ..., "batch_stats": ...}`` nested dicts of float32 numpy arrays with
        exactly the tree of ``mlx_research.nn.<arch>()`` (conv kernels [kh, kw, I, O]).

    Raises:
        ValueError: for an unknown ``arch``, or naming the first missing key, unexpected key
            (other than ``fc.*`` and ``*.num_batches_tracked``) or mis-shaped tensor.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHS)}")
    if norm not in ("batch", "frozen_batch"):
        raise ValueError(f"unknown norm {norm!r}; expected batch or frozen_batch")
    targets = _target_shapes(arch, norm)
    keys = {torch_key(path): path for path in targets}
    unexpected = sorted(k for k in state_dict if k not in keys and not _is_ignored(k))
    if unexpected:
        raise ValueError(f"unexpected key {unexpected[0]!r} in the {arch} state dict")

    variables: dict[str, dict[str, Any]] = {}
    for key, path in keys.items():
        if key not in state_dict:
            raise ValueError(f"missing key {key!r} in the {arch} state dict")
        value = np.asarray(state_dict[key], dtype=np.float32)
        is_kernel = path.endswith("/kernel")
        want = targets[path]
        want_torch = tuple(want[i] for i in _HWIO_TO_OIHW) if is_kernel else want
        if value.shape != want_torch:
            raise ValueError(f"key {key!r} has shape {value.shape}, expected {want_torch}")
        node = variables
        *parents, leaf = path.split("/")
        for name in parents:
            node = node.setdefault(name, {})
        # np.array copies: the result never aliases the caller's arrays.
        node[leaf] = np.array(value.transpose(_OIHW_TO_HWIO) if is_kernel else value, order="C")
    return variables


def write_npz(
    state_dict: Mapping[str, Any], arch: str, out_path: str | Path, norm: str = "batch"
) -> None:
    """Converts ``state_dict`` (see ``convert``) and saves it as a "/"-keyed ``.npz``."""
    np.savez(out_path, **flatten(convert(state_dict, arch, norm)))


def load_npz(path: str | Path) -> dict[str, Any]:
    """Reads a ``write_npz`` file back into nested dicts of numpy arrays."""
    tree: dict[str, Any] = {}
    with np.load(path) as data:
        for name in data.files:
            node = tree
            *parents, leaf = name.split("/")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = data[name]
    return tree


def main(argv: list[str] | None = None) -> int:
    """CLI: ``ARCH IN.pth OUT.npz``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m mlx_research.tools.convert_torchvision",
        description="Convert a torchvision ResNet state dict (.pth) to an mlx_research .npz.",
    )
    parser.add_argument("arch", choices=ARCHS)
    parser.add_argument("input", type=Path, help="torchvision state dict saved by torch.save")
    parser.add_argument("output", type=Path, help=".npz to write (np.savez adds the suffix if missing)")
    parser.add_argument("--norm", choices=("batch", "frozen_batch"), default="batch",
                        help="the norm of the model that will load it (frozen_batch: detection)")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("error: reading a .pth needs torch; pip install torch", file=sys.stderr)
        return 1
    state_dict = torch.load(args.input, map_location="cpu", weights_only=True)
    if not isinstance(state_dict, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state_dict.values()
    ):
        hint = "save one with torch.save(model.state_dict(), path)"
        print(f"error: {args.input} is not a state dict of tensors; {hint}", file=sys.stderr)
        return 1
    arrays = {k: v.detach().cpu().float().numpy() for k, v in state_dict.items()}
    try:
        write_npz(arrays, args.arch, args.output, args.norm)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.output} ({args.arch}, {len(arrays)} tensors read)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
