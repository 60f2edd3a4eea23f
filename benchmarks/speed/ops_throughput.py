"""Throughput of ``ops.nms`` and ``ops.roi`` next to torchvision's, measured back to back.

    python -m benchmarks.speed.ops_throughput          (or ./launch.sh bench ops_throughput)

Ours: jitted, one warm-up (compiling) call, then the median of ``--repeats`` timed calls on the
default JAX backend. torchvision's numbers come from the same inputs (numpy, fixed seed) in the
same run: in-process when torch is importable, otherwise from ``--torch-python`` (default
/tmp/tvenv/bin/python when it exists), which runs this file with ``--torchvision-only`` and
prints its JSON. Both use every CPU core by default.

Cases (torchvision Faster R-CNN defaults):

- NMS: N = 1000 and 5000 boxes in a 1024 x 1024 image, uniform scores, IoU threshold 0.7;
  "uniform" boxes are independent (sides 10..200 px, ~90% kept), "clustered" ones jittered
  copies of 50 object boxes (most suppressed, like RPN proposals). Ours with
  ``max_output_size`` = N (the whole torchvision result) and 1000 (RPN post-NMS top-n).
  Reported as boxes per second (N / time).
- RoI Align: 512 RoIs, output 7 x 7, sampling_ratio 2, spatial_scale 1/16 on a
  [2, 64, 64, 256] feature map (NHWC here, NCHW in torchvision); forward RoIs/s, and forward +
  gradient w.r.t. the features. RoI pool on the same inputs for reference.

Writes benchmarks/results/ops_throughput.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks.common import cpu_model, median_seconds, write_result

ROOT = Path(__file__).resolve().parents[2]
NMS_CASES = (("uniform", 1000), ("uniform", 5000), ("clustered", 1000), ("clustered", 5000))
NMS_THRESHOLD = 0.7
ROI_SHAPE = (2, 64, 64, 256)  # B, H, W, C
NUM_ROIS = 512
IMAGE = 1024
DEFAULT_TORCH_PYTHON = "/tmp/tvenv/bin/python"


def nms_inputs(n: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """``uniform``: independent boxes (few suppressed); ``clustered``: jittered copies of 50
    object boxes (most suppressed, like RPN proposals)."""
    rng = np.random.default_rng(n)
    if kind == "uniform":
        xy = rng.uniform(0, IMAGE - 10, (n, 2))
        wh = rng.uniform(10, 200, (n, 2))
    else:
        centres = rng.integers(0, 50, n)
        obj_xy = rng.uniform(0, IMAGE - 200, (50, 2))
        obj_wh = rng.uniform(20, 200, (50, 2))
        wh = obj_wh[centres] * rng.uniform(0.8, 1.25, (n, 2))
        xy = obj_xy[centres] + rng.normal(0, 0.1, (n, 2)) * obj_wh[centres]
    boxes = np.concatenate([xy, np.minimum(xy + wh, IMAGE)], 1).astype(np.float32)
    return boxes, rng.uniform(size=n).astype(np.float32)


def roi_inputs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    feats = rng.normal(size=ROI_SHAPE).astype(np.float32)
    xy = rng.uniform(0, IMAGE - 32, (NUM_ROIS, 2))
    wh = rng.uniform(16, 512, (NUM_ROIS, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, IMAGE)], 1)
    idx = rng.integers(0, ROI_SHAPE[0], (NUM_ROIS, 1))
    return feats, np.concatenate([idx, boxes], 1).astype(np.float32)


def measure_ours(repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    from mlx_research.ops.nms import nms
    from mlx_research.ops.roi import roi_align
    from mlx_research.ops.roi_pool import roi_pool

    out = {"backend": jax.default_backend(), "device": str(jax.devices()[0]),
           "jax": jax.__version__}
    for kind, n in NMS_CASES:
        boxes, scores = map(jnp.asarray, nms_inputs(n, kind))
        for m in sorted({n, 1000}, reverse=True):
            f = jax.jit(lambda b, s, m=m: nms(b, s, NMS_THRESHOLD, m))
            kept = int((f(boxes, scores) >= 0).sum())
            sec = median_seconds(lambda f=f: f(boxes, scores).block_until_ready(), repeats,
                                 warmup=1)  # the warm-up call compiles
            out[f"nms_{kind}_n{n}_max{m}"] = {"seconds": sec, "boxes_per_s": n / sec,
                                              "kept": kept}
    feats, rois = map(jnp.asarray, roi_inputs())
    align = jax.jit(lambda x, r: roi_align(x, r, 7, 1 / 16, 2))
    grad = jax.jit(jax.grad(lambda x, r: jnp.sum(roi_align(x, r, 7, 1 / 16, 2) ** 2)))
    pool = jax.jit(lambda x, r: roi_pool(x, r, 7, 1 / 16))
    for name, f in (("roi_align", align), ("roi_align_fwd_bwd", grad), ("roi_pool", pool)):
        sec = median_seconds(lambda f=f: f(feats, rois).block_until_ready(), repeats,
                             warmup=1)
        out[name] = {"seconds": sec, "rois_per_s": NUM_ROIS / sec}
    return out


def measure_torchvision(repeats: int) -> dict:
    import torch
    import torchvision

    out = {"torch": torch.__version__, "torchvision": torchvision.__version__,
           "threads": torch.get_num_threads()}
    for kind, n in NMS_CASES:
        boxes, scores = map(torch.from_numpy, nms_inputs(n, kind))
        kept = len(torchvision.ops.nms(boxes, scores, NMS_THRESHOLD))
        sec = median_seconds(lambda: torchvision.ops.nms(boxes, scores, NMS_THRESHOLD), repeats,
                             warmup=1)
        out[f"nms_{kind}_n{n}"] = {"seconds": sec, "boxes_per_s": n / sec, "kept": kept}
    feats, rois = roi_inputs()
    x = torch.from_numpy(feats.transpose(0, 3, 1, 2).copy())
    r = torch.from_numpy(rois)

    def fwd_bwd():
        xg = x.clone().requires_grad_(True)
        (torchvision.ops.roi_align(xg, r, 7, 1 / 16, 2) ** 2).sum().backward()

    with torch.no_grad():
        sec = median_seconds(lambda: torchvision.ops.roi_align(x, r, 7, 1 / 16, 2), repeats,
                             warmup=1)
        out["roi_align"] = {"seconds": sec, "rois_per_s": NUM_ROIS / sec}
        sec = median_seconds(lambda: torchvision.ops.roi_pool(x, r, 7, 1 / 16), repeats,
                             warmup=1)
        out["roi_pool"] = {"seconds": sec, "rois_per_s": NUM_ROIS / sec}
    sec = median_seconds(fwd_bwd, repeats, warmup=1)
    out["roi_align_fwd_bwd"] = {"seconds": sec, "rois_per_s": NUM_ROIS / sec}
    return out


def torchvision_numbers(repeats: int, torch_python: str | None) -> dict | None:
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError:
        pass
    else:
        return measure_torchvision(repeats)
    if not torch_python or not Path(torch_python).exists():
        return None
    cmd = [torch_python, "-m", "benchmarks.speed.ops_throughput", "--torchvision-only",
           "--repeats", str(repeats)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(ours: dict, tv: dict | None) -> str:
    lines = ["| case | ours | torchvision (CPU) |", "|---|---|---|"]
    for kind, n in NMS_CASES:
        ref = tv[f"nms_{kind}_n{n}"] if tv else None
        for m in sorted({n, 1000}, reverse=True):
            row = ours[f"nms_{kind}_n{n}_max{m}"]
            theirs = f"{ref['boxes_per_s']:,.0f} boxes/s" if ref and m == n else ""
            lines.append(f"| NMS {kind} N={n} (kept {row['kept']}), max_output_size={m} | "
                         f"{row['boxes_per_s']:,.0f} boxes/s | {theirs} |")
    for name, label in (("roi_align", "RoI Align 512 x 7x7, [2,64,64,256]"),
                        ("roi_align_fwd_bwd", "RoI Align forward + gradient"),
                        ("roi_pool", "RoI pool 512 x 7x7, [2,64,64,256]")):
        ref = f"{tv[name]['rois_per_s']:,.0f} RoIs/s" if tv else "-"
        lines.append(f"| {label} | {ours[name]['rois_per_s']:,.0f} RoIs/s | {ref} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--torch-python", default=DEFAULT_TORCH_PYTHON,
                        help="interpreter with torch + torchvision, when this one has none")
    parser.add_argument("--torchvision-only", action="store_true",
                        help="measure torchvision only and print its JSON (used by the above)")
    args = parser.parse_args(argv)
    if args.torchvision_only:
        print(json.dumps(measure_torchvision(args.repeats)))
        return
    ours = measure_ours(args.repeats)
    tv = torchvision_numbers(args.repeats, args.torch_python)
    result = {
        "setup": {
            "machine": f"{cpu_model()}, {os.cpu_count()} CPU cores",
            "timing": f"median of {args.repeats} calls after a warm-up call",
            "nms": f"N boxes in {IMAGE}x{IMAGE}, uniform (independent, sides 10..200) or "
                   f"clustered (jittered copies of 50 objects), IoU threshold {NMS_THRESHOLD}",
            "roi": f"{NUM_ROIS} RoIs (sides 16..512 px, stride 16), output 7x7, "
                   f"sampling_ratio 2, features {list(ROI_SHAPE)} (B, H, W, C)",
        },
        "ours": ours,
        "torchvision": tv,
    }
    path = write_result("ops_throughput", result)
    print(table(ours, tv))
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
