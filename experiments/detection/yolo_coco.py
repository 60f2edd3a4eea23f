"""YOLO v1 (the paper's S = 7, B = 2, 448 px input, fully connected head) on a COCO-format folder.

Run:  ./launch.sh experiments/detection/yolo_coco.py --config.data.root=/data/coco
      (root/annotations/instances_{train,val}.json and root/{train,val}/ image folders; the
      paths are config fields). The paper pretrains its Darknet backbone on ImageNet; here start
      from a converted torchvision ResNet-50:
      python -m mlx_research.tools.convert_torchvision resnet50 resnet50.pth resnet50.npz
      --norm=frozen_batch, then --config.init_from.path=resnet50.npz (loaded under body).
      The C5 map (14 x 14 at 448 px) is average-pooled to the 7 x 7 grid.
Result: not measured here (no COCO on the development machine).
"""

from mlx_research.train.config import default_config
from mlx_research.train.presets import apply_presets


def get_config(arg: str | None = None):
    config = default_config("yolo")
    # Paper (VOC, batch 64): 135 epochs, lr 1e-3 -> 1e-2 warmup, 1e-2 for 75 epochs, 1e-3 for
    # 30, 1e-4 for 30; momentum 0.9, weight decay 5e-4. COCO train2017 at batch 64 is ~1850
    # steps per epoch.
    config.total_steps = 250_000
    config.batch_size = 64
    config.write_images = True
    config.optim.update(name="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, warmup_steps=2000,
                        schedule="step", decay_boundaries=(140_000, 195_000), decay_factor=0.1,
                        grad_clip_norm=10.0)
    config.optim.frozen = ("^body/(conv1|layer1_)",)
    config.model.update(
        backbone="resnet50", norm="frozen_batch", feature_level="C5", grid_size=7,
        boxes_per_cell=2, head_convs=2, head_channels=1024, head="fc", fc_hidden=4096,
        dropout=0.5, output_activation="sigmoid", lambda_coord=5.0, lambda_noobj=0.5,
        conf_target="iou", score_thresh=0.01, nms_thresh=0.5, detections_per_img=100,
    )
    config.init_from.prefix = "body"
    config.data.update(dataset="coco", image_size=448, max_boxes=100, scale_min=0.8,
                       scale_max=1.2)
    config.evals.coco.update(every_steps=10_000, num_examples=5000, batch_size=64)
    return apply_presets(config, arg, {}, __file__)  # no presets: any :ARG is an error
