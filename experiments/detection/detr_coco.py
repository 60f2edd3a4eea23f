"""DETR R50 (facebookresearch/detr's defaults) on a COCO-format folder.

Run:  ./launch.sh experiments/detection/detr_coco.py --config.data.root=/data/coco
      (root/annotations/instances_{train,val}.json and root/{train,val}/ image folders; the
      paths are config fields). Start from a converted torchvision ResNet-50:
      python -m mlx_research.tools.convert_torchvision resnet50 resnet50.pth resnet50.npz
      --norm=frozen_batch, then --config.init_from.path=resnet50.npz (loaded under backbone).
      Tensor parallel Transformer: --config.mesh.model=2 (heads and FFN split; 8 heads, FFN
      2048 divide by 2, 4 or 8).
Differences from the reference recipe: one square input size (data.image_size, images resized
to fit and padded) with scale jitter instead of DETR's multi-scale resize and random crops;
labels are the 80 contiguous categories (DETR sizes its head by the largest COCO id).
Result: not measured here (no COCO on the development machine); DETR R50 reaches 42.0 AP after
500 epochs (REFERENCES.md).
"""

from mlx_research.train.config import default_config
from mlx_research.train.presets import apply_presets


def get_config(arg: str | None = None):
    config = default_config("detr")
    # DETR: 300 epochs of 118k images at batch 64 (~1850 steps each), lr drop after 200.
    config.total_steps = 555_000
    config.batch_size = 64
    config.write_images = True
    config.optim.update(name="adamw", lr=1e-4, weight_decay=1e-4, grad_clip_norm=0.1,
                        schedule="step", decay_boundaries=(370_000,), decay_factor=0.1,
                        lr_multipliers=(("^backbone/", 0.1),))
    config.optim.frozen = ("^backbone/(conv1|layer1_)",)  # DETR trains layer2..layer4 only
    config.model.update(
        backbone="resnet50", norm="frozen_batch", feature_level="C5", hidden_dim=256, nhead=8,
        num_encoder_layers=6, num_decoder_layers=6, dim_feedforward=2048, dropout=0.1,
        num_queries=100, matcher="device",
    )
    config.init_from.prefix = "backbone"
    config.data.update(dataset="coco", image_size=800, max_boxes=100, scale_min=0.6,
                       scale_max=1.0)
    config.evals.coco.update(every_steps=20_000, num_examples=5000, batch_size=16)
    return apply_presets(config, arg, {}, __file__)  # no presets: any :ARG is an error
