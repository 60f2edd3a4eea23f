"""Faster R-CNN (ResNet-50 FPN, torchvision's defaults) on a COCO-format folder.

Run:  ./launch.sh experiments/detection/faster_rcnn_coco.py --config.data.root=/data/coco
      (root/annotations/instances_{train,val}.json and root/{train,val}/ image folders; the
      paths are config fields). Start from a converted torchvision ResNet-50:
      python -m mlx_research.tools.convert_torchvision resnet50 resnet50.pth resnet50.npz
      --norm=frozen_batch, then --config.init_from.path=resnet50.npz (loaded under body).
Result: not measured here (no COCO on the development machine).
"""

from mlx_research.train.config import default_config
from mlx_research.train.presets import apply_presets


def get_config(arg: str | None = None):
    config = default_config("faster_rcnn")
    config.total_steps = 90_000  # torchvision's 26 epochs at batch 16 are ~190k steps; 1x ~ 90k
    config.batch_size = 16
    config.write_images = True
    config.optim.update(name="sgd", lr=0.02, momentum=0.9, weight_decay=1e-4, warmup_steps=1000,
                        schedule="step", decay_boundaries=(60_000, 80_000), decay_factor=0.1)
    config.optim.frozen = ("^body/(conv1|layer1_)",)  # torchvision: trainable_backbone_layers=3
    config.model.update(
        backbone="resnet50", norm="frozen_batch", feature_levels=("C2", "C3", "C4", "C5"), fpn=True,
        anchor_sizes=((32,), (64,), (128,), (256,), (512,)),
        aspect_ratios=((0.5, 1.0, 2.0),) * 5,
    )
    config.init_from.prefix = "body"
    config.data.update(dataset="coco", image_size=800, max_boxes=100, scale_min=1.0, scale_max=1.0)
    config.evals.coco.update(every_steps=10_000, num_examples=5000, batch_size=16)
    return apply_presets(config, arg, {}, __file__)  # no presets: any :ARG is an error
