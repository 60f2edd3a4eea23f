"""YOLO v1 from scratch on the built-in synthetic shapes (circles, squares, triangles).

Run:     ./launch.sh experiments/detection/yolo_shapes.py
Quick:   ./launch.sh experiments/detection/yolo_shapes.py:quick     (1000 steps)
Smoke:   ./launch.sh experiments/detection/yolo_shapes.py:runlocal  (a few steps)
Result:  COCO AP 0.661, AP50 0.951 on the 256 shapes validation images (the same images as
         faster_rcnn_shapes.py) after 2000 steps, 24 min on the 2-core CPU shared with other
         jobs (./launch.sh bench yolo_shapes, benchmarks/results/yolo_shapes.json); quick:
         AP 0.603, AP50 0.924 after 1000 steps.
"""

from mlx_research.train.config import default_config
from mlx_research.train.presets import apply_presets, runlocal


def get_config(arg: str | None = None):
    """arg: comma-separated presets: "quick" | "runlocal"."""
    config = default_config("yolo")
    config.total_steps = 2000
    config.batch_size = 16
    config.log_every = 50
    config.write_images = True
    config.checkpoint.every_steps = 500
    config.optim.update(name="adamw", lr=2e-3, weight_decay=1e-4, warmup_steps=100,
                        schedule="cosine", grad_clip_norm=10.0)
    config.model.update(
        backbone="small_cnn", small_cnn_features=(32, 64, 128, 256), feature_level="C4",
        grid_size=8, boxes_per_cell=2, head="conv", head_convs=2, head_channels=256,
        output_activation="sigmoid", conf_target="iou",
    )
    config.data.update(image_size=128, max_boxes=8, shapes_max_objects=6)
    config.evals.coco.update(every_steps=500, num_examples=256, batch_size=32)
    return apply_presets(config, arg, {"quick": quick, "runlocal": runlocal(
        6, num_examples=16, batch_size=8)}, __file__)


def quick(config):
    """500 steps, one evaluation at the end."""
    config.total_steps, config.evals.coco.every_steps = 500, 500
    config.checkpoint.every_steps = 500
