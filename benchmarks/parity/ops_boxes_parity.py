"""Parity of ``mlx_research.ops`` box ops, box coder, anchors and sampling counts with torchvision.

torch is not a dependency of the package, so this runs once in a venv holding torch,
torchvision and jax, from the repository root (no mlx_research install needed):

    /tmp/tvenv/bin/python -m benchmarks.parity.ops_boxes_parity

Compares, on random float32 inputs (seeded), ``box_iou``, ``generalized_box_iou``,
``box_convert`` (all 6 conversions), ``box_area``, ``clip_boxes_to_image``,
``remove_small_boxes``, ``BoxCoder.encode_single``/``decode_single`` (weights (1,1,1,1) and
(10,10,5,5), codes large enough to hit the dw/dh clip, class-specific [N, C*4] decoding),
``AnchorGenerator`` (exact equality, one and five levels, non-dividing feature sizes, odd sizes)
and the per-image counts of ``BalancedPositiveNegativeSampler`` (the draws themselves differ by
construction). Pairs where torchvision returns NaN (0/0 for zero-area boxes) are counted and
checked to be 0 on our side. Writes benchmarks/results/ops_boxes_parity.json.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.common import write_result


def random_boxes(rng: np.random.Generator, n: int, degenerate: bool) -> np.ndarray:
    xy = rng.uniform(-50, 600, (n, 2))
    wh = rng.uniform(0.5, 300, (n, 2))
    if degenerate:
        wh[rng.random(n) < 0.1, 0] = 0.0
        wh[rng.random(n) < 0.1, 1] = 0.0
        xy[-8:] = xy[-8]  # a few identical (possibly zero-area) boxes
        wh[-4:] = 0.0
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def compare(ours, theirs) -> dict:
    ours = np.asarray(ours, np.float64)
    theirs = np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    nan = np.isnan(theirs)
    diff = np.abs(ours - theirs)[~nan]
    scale = np.maximum(np.abs(theirs[~nan]), 1.0)
    out = {
        "shape": list(theirs.shape),
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "max_rel_diff": float((diff / scale).max()) if diff.size else 0.0,
        # Error against the largest magnitude: decoded corners cx -+ w/2 can cancel to ~0, which
        # inflates the per-element relative error of ulp-level exp differences.
        "max_abs_diff_over_max_abs": float(diff.max() / max(np.abs(theirs[~nan]).max(), 1e-30))
        if diff.size else 0.0,
        "exact_fraction": float((diff == 0).mean()) if diff.size else 1.0,
    }
    if nan.any():
        out["torchvision_nan"] = int(nan.sum())
        out["ours_at_torchvision_nan"] = sorted({float(v) for v in ours[nan]})
    out["ours_finite"] = bool(np.isfinite(ours).all())
    return out


def main() -> None:
    # No options; --help prints the summary.
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    import jax
    import torch
    import torchvision
    from torchvision.models.detection import _utils as det_utils
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.image_list import ImageList
    from torchvision.ops import boxes as tvb

    from mlx_research.ops import boxes as ours
    from mlx_research.ops.anchors import anchor_grid
    from mlx_research.ops.box_coder import BoxCoder
    from mlx_research.ops.sampling import balanced_sample

    start = time.time()
    rng = np.random.default_rng(0)
    results: dict = {
        "meta": {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "dtype": "float32",
        }
    }
    t = torch.from_numpy

    # ---- box ops
    b1, b2 = random_boxes(rng, 300, True), random_boxes(rng, 200, True)
    b2[:50] = b1[:50] + rng.normal(0, 5, (50, 4)).astype(np.float32)  # many overlapping pairs
    b2[:50, 2:] = np.maximum(b2[:50, 2:], b2[:50, :2])
    results["box_iou"] = compare(jax.jit(ours.box_iou)(b1, b2), tvb.box_iou(t(b1), t(b2)))
    results["generalized_box_iou"] = compare(
        jax.jit(ours.generalized_box_iou)(b1, b2), tvb.generalized_box_iou(t(b1), t(b2))
    )
    fmts = ("xyxy", "xywh", "cxcywh")
    conv = {}
    for i in fmts:
        src = tvb.box_convert(t(b1), "xyxy", i).numpy()
        for o in fmts:
            if i != o:
                conv[f"{i}->{o}"] = compare(
                    ours.box_convert(src, i, o), tvb.box_convert(t(src), i, o)
                )["max_abs_diff"]
        results[f"box_iou_fmt_{i}"] = compare(
            ours.box_iou(src, tvb.box_convert(t(b2), "xyxy", i).numpy(), fmt=i),
            tvb.box_iou(t(src), tvb.box_convert(t(b2), "xyxy", i), fmt=i),
        )
    results["box_convert_max_abs_diff"] = conv
    results["box_area"] = compare(ours.box_area(b1), tvb.box_area(t(b1)))
    results["clip_boxes_to_image"] = compare(
        ours.clip_boxes_to_image(b1, (333, 517)), tvb.clip_boxes_to_image(t(b1), (333, 517))
    )
    keep = np.asarray(ours.remove_small_boxes(b1, 20.0))
    results["remove_small_boxes_indices_equal"] = bool(
        np.array_equal(np.flatnonzero(keep), tvb.remove_small_boxes(t(b1), 20.0).numpy())
    )

    # ---- box coder
    coder_results = {}
    for weights in ((1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)):
        gt = random_boxes(rng, 500, False)
        anchors = random_boxes(rng, 500, False)
        tv_coder = det_utils.BoxCoder(weights)
        coder = BoxCoder(weights)
        codes = rng.normal(0, 2, (500, 4)).astype(np.float32) * np.float32(weights)
        codes[:20, 2:] = np.float32(weights[2]) * 50.0  # far beyond the clip
        cls_codes = rng.normal(0, 1, (500, 3 * 4)).astype(np.float32)
        coder_results[str(weights)] = {
            "encode": compare(
                jax.jit(coder.encode)(gt, anchors), tv_coder.encode_single(t(gt), t(anchors))
            ),
            "decode": compare(
                jax.jit(coder.decode)(codes, anchors), tv_coder.decode_single(t(codes), t(anchors))
            ),
            "decode_class_specific": compare(
                jax.jit(coder.decode)(cls_codes.reshape(500, 3, 4), anchors[:, None])
                .reshape(500, 12),
                tv_coder.decode_single(t(cls_codes), t(anchors)),
            ),
        }
    results["box_coder"] = coder_results

    # ---- anchors
    anchor_cases = {
        "default_1_level": ((512, 704), ((16, 22),), ((128, 256, 512),), ((0.5, 1.0, 2.0),)),
        "non_dividing_1_level": ((333, 517), ((21, 33),), ((45, 91, 128),), ((0.5, 1.0, 2.0),)),
        "fpn_5_levels": (
            (600, 904),
            ((150, 226), (75, 113), (38, 57), (19, 29), (10, 15)),
            ((32,), (64,), (128,), (256,), (512,)),
            ((0.5, 1.0, 2.0),) * 5,
        ),
        "mixed_levels_odd_sizes": (
            (97, 131), ((13, 17), (7, 9)), ((15, 27, 45), (33,)), ((0.25, 1.0, 3.0), (0.5, 2.0))
        ),
    }
    anchor_results = {}
    for name, (image_size, feature_sizes, sizes, ratios) in anchor_cases.items():
        gen = AnchorGenerator(sizes, ratios)
        images = ImageList(torch.zeros(1, 3, *image_size), [image_size])
        feats = [torch.zeros(1, 1, h, w) for h, w in feature_sizes]
        tv_anchors = gen(images, feats)[0].numpy()
        mine = np.asarray(anchor_grid(image_size, feature_sizes, sizes, ratios))
        anchor_results[name] = {
            "num_anchors": int(tv_anchors.shape[0]),
            "exact_equal": bool(
                mine.shape == tv_anchors.shape and np.array_equal(mine, tv_anchors)
            ),
        }
    results["anchor_generator"] = anchor_results

    # ---- balanced sampling counts
    sampler = det_utils.BalancedPositiveNegativeSampler(256, 0.5)
    count_equal = []
    for i in range(20):
        n = 2000
        num_pos = int(rng.integers(0, 300))
        num_neg = int(rng.integers(0, 400)) if i % 3 == 0 else int(rng.integers(0, n - num_pos))
        labels = np.full(n, -1, np.int64)
        perm = rng.permutation(n)
        labels[perm[:num_pos]] = rng.integers(1, 5, num_pos)
        labels[perm[num_pos:num_pos + num_neg]] = 0
        tv_pos, tv_neg = sampler([t(labels)])
        pos, neg = balanced_sample(jax.random.key(i), labels.astype(np.int32), 256, 0.5)
        count_equal.append(
            int(tv_pos[0].sum()) == int(np.sum(pos)) and int(tv_neg[0].sum()) == int(np.sum(neg))
        )
    results["balanced_sampler_counts_equal"] = f"{sum(count_equal)}/{len(count_equal)}"
    results["seconds"] = round(time.time() - start, 2)

    write_result("ops_boxes_parity", results, echo=True)


if __name__ == "__main__":
    main()
