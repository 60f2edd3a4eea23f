"""Parity of ``mlx_research.tools.convert_torchvision`` with real torchvision (eval mode).

torch and torchvision are not dependencies of the package, so the check runs in two steps
(from the repository root):

    python3 -m venv /tmp/tvenv
    /tmp/tvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 numpy
    /tmp/tvenv/bin/python -m benchmarks.parity.torchvision_parity --dump /tmp/tv_parity.npz
    .venv/bin/python -m benchmarks.parity.torchvision_parity --compare /tmp/tv_parity.npz

``--dump`` (torch, torchvision, numpy; no jax): for resnet18 and resnet50 builds torchvision's
model with ``weights=None`` and ``torch.manual_seed(0)``, randomizes every BatchNorm's affine and
running statistics (weight, var in [0.5, 1.5]; bias, mean ~ N(0, 0.2)), switches to eval mode
and saves the state dict, a random [2, 3, 64, 64] input and the layer1..layer4 outputs.
``--compare`` (jax): converts each state dict with ``convert``, runs our backbone with
``train=False`` on the NHWC input and reports, per level C2..C5 and overall, the max absolute
difference and that divided by the level's max |torchvision output|; writes
benchmarks/results/torchvision_parity.json. Both run on CPU in float32.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.common import today, write_result

ARCHS = ("resnet18", "resnet50")
LEVELS = ("C2", "C3", "C4", "C5")


def dump(path: Path) -> None:
    """Saves ``<arch>/sd/<key>``, ``<arch>/x`` [2, 3, 64, 64] and ``<arch>/<level>`` (NCHW)."""
    import torch
    import torchvision

    arrays: dict[str, np.ndarray] = {
        "meta/torch": np.array(torch.__version__),
        "meta/torchvision": np.array(torchvision.__version__),
    }
    for arch in ARCHS:
        torch.manual_seed(0)
        model = getattr(torchvision.models, arch)(weights=None)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0.0, 0.2)
                    m.running_mean.normal_(0.0, 0.2)
                    m.running_var.uniform_(0.5, 1.5)
            model.eval()
            x = torch.randn(2, 3, 64, 64)
            y = model.maxpool(model.relu(model.bn1(model.conv1(x))))
            layers = (model.layer1, model.layer2, model.layer3, model.layer4)
            for level, layer in zip(LEVELS, layers, strict=True):
                y = layer(y)
                arrays[f"{arch}/{level}"] = y.numpy()
        arrays[f"{arch}/x"] = x.numpy()
        for key, value in model.state_dict().items():
            arrays[f"{arch}/sd/{key}"] = value.numpy()
    np.savez(path, **arrays)
    print(f"wrote {path}")


def compare(path: Path) -> dict:
    """Converts the dumped state dicts, runs our backbones and writes the JSON report."""
    import jax

    from mlx_research.nn import resnet
    from mlx_research.tools.convert_torchvision import convert

    data = np.load(path)
    rows = []
    for arch in ARCHS:
        prefix = f"{arch}/sd/"
        state_dict = {k[len(prefix) :]: data[k] for k in data.files if k.startswith(prefix)}
        variables = convert(state_dict, arch)
        x = data[f"{arch}/x"].transpose(0, 2, 3, 1)  # NCHW -> NHWC
        model = getattr(resnet, arch)()
        out = jax.jit(lambda v, x, m=model: m.apply(v, x, train=False))(variables, x)
        levels = {}
        for level in LEVELS:
            ref = data[f"{arch}/{level}"].transpose(0, 2, 3, 1).astype(np.float64)
            diff = np.abs(np.asarray(out[level], np.float64) - ref).max()
            levels[level] = {
                "shape_nhwc": "x".join(map(str, ref.shape)),
                "max_abs_diff": float(diff),
                "max_rel_diff": float(diff / np.abs(ref).max()),
                "max_abs_ref": float(np.abs(ref).max()),
            }
        rows.append(
            {
                "arch": arch,
                "max_abs_diff": max(v["max_abs_diff"] for v in levels.values()),
                "max_rel_diff": max(v["max_rel_diff"] for v in levels.values()),
                "levels": levels,
            }
        )
    result = {
        "check": "torchvision layer1..layer4 vs our C2..C5, eval mode, float32 CPU, "
        "random init with randomized BatchNorm, input [2, 3, 64, 64]",
        "max_rel_diff_definition": "max |ours - torchvision| / max |torchvision| per level",
        "commands": [
            "/tmp/tvenv/bin/python -m benchmarks.parity.torchvision_parity "
            "--dump /tmp/tv_parity.npz",
            ".venv/bin/python -m benchmarks.parity.torchvision_parity --compare /tmp/tv_parity.npz",
        ],
        "results": rows,
        "torch": str(data["meta/torch"]),
        "torchvision": str(data["meta/torchvision"]),
        "jax": jax.__version__,
        "devices": [str(d) for d in jax.devices()],
        "date": today(),
    }
    write_result("torchvision_parity", result, echo=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--dump", type=Path, help="(torch venv) write torchvision outputs here")
    mode.add_argument("--compare", type=Path, help="(jax venv) compare against this dump")
    args = parser.parse_args()
    if args.dump:
        dump(args.dump)
    else:
        compare(args.compare)


if __name__ == "__main__":
    main()
