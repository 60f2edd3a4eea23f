"""Faster R-CNN from scratch on the built-in synthetic shapes (circles, squares, triangles).

Run:     ./launch.sh experiments/detection/faster_rcnn_shapes.py
Quick:   ./launch.sh experiments/detection/faster_rcnn_shapes.py:quick     (about 5 min on 2 CPU cores)
Smoke:   ./launch.sh experiments/detection/faster_rcnn_shapes.py:runlocal  (a few steps)
Result:  see the README's results table (./launch.sh bench faster_rcnn_shapes,
         benchmarks/results/faster_rcnn_shapes.json).
"""

from mlx_research.train.config import default_config
from mlx_research.train.presets import apply_presets, runlocal


def get_config(arg: str | None = None):
    """arg: comma-separated presets: "quick" | "runlocal"."""
    config = default_config("faster_rcnn")
    config.total_steps = 4000
    config.batch_size = 8
    config.log_every = 50
    config.write_images = True
    config.checkpoint.every_steps = 500
    config.optim.update(name="sgd", lr=0.02, momentum=0.9, weight_decay=1e-4, warmup_steps=100,
                        schedule="cosine", grad_clip_norm=10.0)
    config.model.update(
        backbone="small_cnn", small_cnn_features=(32, 64, 128), feature_levels=("C3",),
        anchor_sizes=((16, 32, 64),), aspect_ratios=((0.5, 1.0, 2.0),),
        rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300,
        rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100,
        box_batch_size_per_image=64, representation_size=256,
    )
    config.data.update(image_size=128, max_boxes=8, shapes_max_objects=6)
    config.evals.coco.update(every_steps=1000, num_examples=256, batch_size=32)
    return apply_presets(config, arg, {"quick": quick, "runlocal": runlocal(
        6, num_examples=16, batch_size=8)}, __file__)


def quick(config):
    """1200 steps (about 5 min on 2 CPU cores), evaluated at 600 and 1200."""
    config.total_steps, config.evals.coco.every_steps = 1200, 600
    config.checkpoint.every_steps = 600
