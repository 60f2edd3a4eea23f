"""R2Gen on IU X-Ray in R2Gen's layout (annotation.json + images/), R2Gen's published settings
except the visual extractor (ResNet-50 here; load torchvision ImageNet weights with init_from).

Run:  ./launch.sh experiments/report/r2gen_iu_xray.py --config.data.root=/data/iu_xray
      [--config.init_from.path=resnet50.npz --config.init_from.prefix=backbone]
      (convert weights with: python -m mlx_research.tools.convert_torchvision resnet50 IN.pth OUT.npz)
Smoke: add :runlocal
Result: not measured here (the dataset is not distributed with the code).
"""

from experiments.report.r2gen_cxr import base
from mlx_research.train.config import default_config
from mlx_research.train.presets import apply_presets, runlocal


# R2Gen's run scripts: epochs, training studies, seed.
_RUNS = {"iu_xray": (100, 2069, 9223), "mimic_cxr": (30, 270790, 456789)}


def get_config(arg: str | None = None):
    """arg: comma-separated presets: "base" (no relational memory) | "runlocal"."""
    return r2gen_config("iu_xray", arg)


def r2gen_config(dataset: str, arg: str | None = None):
    """R2Gen's published settings for `dataset` ("iu_xray" | "mimic_cxr") and the presets."""
    epochs, studies, seed = _RUNS[dataset]
    config = default_config("report")
    config.total_steps = epochs * studies // 16  # R2Gen's epochs of the training studies
    config.seed = seed
    config.batch_size = 16
    config.log_every = 100
    config.write_images = True
    config.checkpoint.every_steps = 1000
    # R2Gen: Adam (amsgrad), visual extractor lr 5e-5, the rest 1e-4, weight decay 5e-5,
    # step decay per epoch, gradients clipped by VALUE at 0.1 (here: by global norm).
    config.optim.update(name="adamw", lr=1e-4, weight_decay=5e-5, warmup_steps=0,
                        schedule="cosine", grad_clip_norm=0.1,
                        lr_multipliers=(("^backbone/", 0.5),))
    config.model.update(backbone="resnet50", norm="frozen_batch", d_model=512, d_ff=512,
                        num_heads=8, num_layers=3, dropout=0.1, rm_num_slots=3, rm_num_heads=8,
                        rm_d_model=512)
    config.data.update(dataset=dataset, root="", resize=256, crop=224, hflip=True)
    config.evals.report.update(every_steps=2000, split="test", batch_size=16, beam_size=3)
    return apply_presets(config, arg, {"base": base, "runlocal": _runlocal},
                         f"r2gen_{dataset}.py")


def _runlocal(config):
    """A few steps of a tiny model on small images (a smoke test of a real folder)."""
    runlocal(4, batch_size=2, beam_size=2)(config)
    config.batch_size = 2
    config.model.update(backbone="small_cnn", norm="batch", d_model=32, d_ff=32, num_heads=2,
                        num_layers=1, rm_num_heads=2, rm_d_model=32)
    config.optim.lr_multipliers = ()
    config.data.update(resize=64, crop=56)
