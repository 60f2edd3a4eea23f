"""Detection ops: box formats and IoU, box coder, anchors, NMS, RoI pooling/align, sampling,
matching. Pure functions with static shapes, jit- and vmap-compatible; where torchvision has the
op, the same argument names, defaults and results (NHWC features)."""

from mlx_research.ops.anchors import anchor_grid, cell_anchors, num_anchors_per_location
from mlx_research.ops.box_coder import BoxCoder
from mlx_research.ops.boxes import (
    box_area,
    box_convert,
    box_iou,
    clip_boxes_to_image,
    generalized_box_iou,
    remove_small_boxes,
)
from mlx_research.ops.matching import MATCHERS, linear_sum_assignment, matcher
from mlx_research.ops.nms import batched_nms, nms
from mlx_research.ops.roi import multiscale_roi_align, roi_align
from mlx_research.ops.roi_pool import roi_pool
from mlx_research.ops.sampling import balanced_sample

__all__ = [
    "MATCHERS",
    "BoxCoder",
    "anchor_grid",
    "balanced_sample",
    "batched_nms",
    "box_area",
    "box_convert",
    "box_iou",
    "cell_anchors",
    "clip_boxes_to_image",
    "generalized_box_iou",
    "linear_sum_assignment",
    "matcher",
    "multiscale_roi_align",
    "nms",
    "num_anchors_per_location",
    "remove_small_boxes",
    "roi_align",
    "roi_pool",
]
