"""One-time parity of ``mlx_research.ops.nms`` / ``ops.roi`` with real torchvision (CPU).

torch is not a dependency of the package, so this runs in the parity venv, which has torch,
torchvision, numpy and jax (the repository is imported from the working tree):

    /tmp/tvenv/bin/python -m benchmarks.parity.ops_nms_roi_parity

Random inputs (numpy, fixed seed) go through torchvision's op (NCHW) and ours (NHWC). NMS:
exact equality of the kept index lists (continuous scores, and separately integer scores with
many ties). RoI ops: max |ours - torchvision| over every case, also for the RoI Align gradient with
respect to the features. Writes benchmarks/results/ops_nms_roi_parity.json.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from benchmarks.common import write_result


def random_boxes(rng: np.random.Generator, n: int, extent: float, size: tuple[float, float]):
    xy = rng.uniform(-0.1 * extent, extent, (n, 2))
    wh = rng.uniform(size[0], size[1], (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def random_rois(rng: np.random.Generator, k: int, batch: int, extent: float, size):
    boxes = random_boxes(rng, k, extent, size)
    boxes[: k // 10, 2:] = boxes[: k // 10, :2] + rng.uniform(0, 0.5, (k // 10, 2))  # tiny RoIs
    idx = rng.integers(0, batch, (k, 1)).astype(np.float32)
    return np.concatenate([idx, boxes], 1)


def nms_parity(rng) -> dict:
    import torch
    import torchvision

    from mlx_research.ops.nms import batched_nms, nms

    def compare(ours, ref, scores):
        ours = ours[ours >= 0]
        if np.array_equal(ours, ref):
            return "equal"
        if len(ours) == len(ref) and set(ours) == set(ref) and np.array_equal(
                scores[ours], scores[ref]):
            return "equal up to the order of tied scores"
        return "different"

    rows = []
    for n in (1, 10, 100, 1000, 3000):
        for thr in (0.3, 0.5, 0.7):
            for trial in range(3):
                boxes = random_boxes(rng, n, 500.0, (5.0, 120.0))
                scores = rng.uniform(size=n).astype(np.float32)
                ref = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), thr)
                ref = ref.numpy()
                ours = np.asarray(nms(boxes, scores, thr))
                rows.append({"op": "nms", "n": n, "iou_threshold": thr,
                             "result": compare(ours, ref, scores), "kept": int(len(ref)),
                             "tied_scores": int(n - len(np.unique(scores)))})
                classes = rng.integers(0, 5, n)
                ref = torchvision.ops.batched_nms(
                    torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(classes),
                    thr).numpy()
                ours = np.asarray(batched_nms(boxes, scores, classes, thr))
                rows.append({"op": "batched_nms", "n": n, "iou_threshold": thr,
                             "result": compare(ours, ref, scores), "kept": int(len(ref)),
                             "tied_scores": int(n - len(np.unique(scores)))})
    ties = {}
    for n in (16, 200, 2000):
        equal = 0
        for _ in range(20):
            boxes = random_boxes(rng, n, 100.0 * math.sqrt(n / 16), (5.0, 60.0))
            scores = rng.integers(0, 4, n).astype(np.float32)  # many ties
            ref = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.5)
            ours = np.asarray(nms(boxes, scores, 0.5))
            equal += bool(np.array_equal(ours[ours >= 0], ref.numpy()))
        ties[f"n={n}"] = f"{equal}/20 equal"
    return {
        "cases": len(rows),
        "equal": sum(r["result"] == "equal" for r in rows),
        "not_equal": [r for r in rows if r["result"] != "equal"],
        "not_equal_note": "continuous random float32 scores still tie now and then at N=3000; "
                          "torchvision's per-class batched_nms path (N > 1000 on CPU) merges the "
                          "classes with an unstable sort, so tied boxes may come out swapped",
        "tied_scores": ties,
        "tied_scores_note": "integer scores in 0..3: torchvision's nms kernel visits equal scores "
                            "in index order, as ours does",
    }


def roi_parity(rng) -> dict:
    import jax
    import jax.numpy as jnp
    import torch
    import torchvision

    from mlx_research.ops.roi import multiscale_roi_align, roi_align
    from mlx_research.ops.roi_pool import roi_pool

    out = {"roi_align": [], "roi_align_tv32_vs_tv64": [], "roi_align_grad": [], "roi_pool": []}
    for scale, extent, size in ((1.0, 24.0, (0.0, 14.0)), (0.5, 48.0, (0.0, 30.0)),
                                (0.3, 80.0, (0.0, 50.0)), (1 / 16, 380.0, (0.0, 300.0))):
        feats = rng.normal(size=(2, 20, 24, 8)).astype(np.float32)
        rois = random_rois(rng, 200, 2, extent, size)
        ft = torch.from_numpy(feats.transpose(0, 3, 1, 2).copy())
        rt = torch.from_numpy(rois)
        for output_size in (7, (3, 5)):
            for sr in (1, 2, 3):
                for aligned in (False, True):
                    ref = torchvision.ops.roi_align(ft, rt, output_size, scale, sr, aligned)
                    ours = roi_align(feats, rois, output_size, scale, sr, aligned)
                    diff = np.abs(np.asarray(ours) - ref.numpy().transpose(0, 2, 3, 1)).max()
                    out["roi_align"].append(float(diff))
                    ref64 = torchvision.ops.roi_align(ft.double(), rt.double(), output_size,
                                                      scale, sr, aligned)
                    out["roi_align_tv32_vs_tv64"].append(float((ref - ref64).abs().max()))
            ref = torchvision.ops.roi_pool(ft, rt, output_size, scale)
            ours = roi_pool(feats, rois, output_size, scale)
            diff = np.abs(np.asarray(ours) - ref.numpy().transpose(0, 2, 3, 1)).max()
            out["roi_pool"].append(float(diff))
        for aligned in (False, True):
            cot = rng.normal(size=(len(rois), 7, 7, 8)).astype(np.float32)
            ftg = ft.clone().requires_grad_(True)
            y = torchvision.ops.roi_align(ftg, rt, 7, scale, 2, aligned)
            (y * torch.from_numpy(cot.transpose(0, 3, 1, 2).copy())).sum().backward()
            grad = jax.grad(lambda f: jnp.sum(roi_align(f, rois, 7, scale, 2, aligned) * cot))(
                jnp.asarray(feats))
            diff = np.abs(np.asarray(grad) - ftg.grad.numpy().transpose(0, 2, 3, 1)).max()
            out["roi_align_grad"].append(float(diff))

    # MultiScaleRoIAlign on a 4-level FPN of a 256 x 320 image.
    image = (256, 320)
    levels = [rng.normal(size=(2, image[0] // s, image[1] // s, 8)).astype(np.float32)
              for s in (4, 8, 16, 32)]
    rois = random_rois(rng, 300, 2, 300.0, (1.0, 260.0))
    pooler = torchvision.ops.MultiScaleRoIAlign(["p2", "p3", "p4", "p5"], 7, 2)
    x = {f"p{i + 2}": torch.from_numpy(f.transpose(0, 3, 1, 2).copy()) for i, f in enumerate(levels)}
    boxes = [torch.from_numpy(rois[rois[:, 0] == b, 1:]) for b in range(2)]
    order = np.concatenate([np.nonzero(rois[:, 0] == b)[0] for b in range(2)])
    ref = pooler(x, boxes, [image, image]).numpy().transpose(0, 2, 3, 1)
    ours = np.asarray(multiscale_roi_align(levels, rois, image, 7, 2))[order]
    ms = {"max_abs_diff": float(np.abs(ours - ref).max()),
          "rois": len(rois), "levels": [list(f.shape) for f in levels]}
    return {
        "roi_align_max_abs_diff": max(out["roi_align"]),
        "roi_align_cases": len(out["roi_align"]),
        "roi_align_float32_noise": {
            "torchvision_float32_vs_float64_max_abs_diff": max(out["roi_align_tv32_vs_tv64"]),
            "note": "torchvision's own float32 result differs this much from its float64 one on "
                    "the same inputs (sample coordinates rounded to float32)"},
        "roi_align_grad_max_abs_diff": max(out["roi_align_grad"]),
        "roi_pool_max_abs_diff": max(out["roi_pool"]),
        "roi_pool_cases": len(out["roi_pool"]),
        "multiscale_roi_align": ms,
    }


def main() -> None:
    # No options; --help prints the summary.
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    import jax
    import torch
    import torchvision

    rng = np.random.default_rng(0)
    start = time.time()
    result = {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "jax": jax.__version__,
        "nms": nms_parity(rng),
        "roi": roi_parity(rng),
    }
    result["seconds"] = round(time.time() - start, 1)
    write_result("ops_nms_roi_parity", result, echo=True)


if __name__ == "__main__":
    main()
