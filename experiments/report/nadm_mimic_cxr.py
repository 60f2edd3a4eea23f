"""NADM on MIMIC-CXR in R2Gen's layout (annotation.json + images/, one view per study), with the
settings of r2gen_mimic_cxr.py (R2Gen's published ones, ResNet-50 visual extractor) and NADM's
reference heads and losses.

Run:  ./launch.sh experiments/report/nadm_mimic_cxr.py --config.data.root=/data/mimic_cxr
      [--config.data.chexpert_csv=/data/mimic-cxr-2.0.0-chexpert.csv  (reference labels)]
      [--config.init_from.path=resnet50.npz --config.init_from.prefix=backbone]
      (convert weights with: python -m mlx_research.tools.convert_torchvision resnet50 IN.pth OUT.npz)
Smoke: add :runlocal.  Ablations: :no_memory, :no_decouple (combine with commas).
Result: not measured here (the dataset is not distributed with the code).
"""

from mlx_research.nn.regularization import DEFAULT_EXCLUDE
from mlx_research.train.config import default_config


def get_config(arg: str | None = None):
    """arg: comma-separated presets: "no_memory" | "no_decouple" | "runlocal"."""
    config = default_config("nadm")
    config.total_steps = 30 * 270790 // 16  # R2Gen: 30 epochs of the 270790 training studies
    config.seed = 456789  # R2Gen's seed
    config.batch_size = 16
    config.log_every = 100
    config.eval_every = 2000
    config.write_images = True
    config.checkpoint.every_steps = 1000
    # R2Gen: Adam (amsgrad), visual extractor lr 5e-5, the rest 1e-4, weight decay 5e-5,
    # step decay per epoch, gradients clipped by VALUE at 0.1 (here: by global norm).
    config.optim.update(name="adamw", lr=1e-4, weight_decay=5e-5, warmup_steps=0,
                        schedule="cosine", grad_clip_norm=0.1,
                        lr_multipliers=(("^backbone/", 0.5),),
                        wd_exclude=(*DEFAULT_EXCLUDE, "^report_uncertainty$"))
    config.model.update(backbone="resnet50", norm="frozen_batch", d_model=512, d_ff=512,
                        num_heads=8, num_layers=3, dropout=0.1, rm_num_slots=3, rm_num_heads=8,
                        rm_d_model=512)
    # NADM (7 x 7 ResNet-50 features -> 98 memory entries, the reference's).
    config.model.update(abnormal_memory=True, memory_size=-1, matcher="device", decouple=True,
                        semantic_topk=25, semantic_layers=3, uncertainty_form="liebel")
    config.data.update(dataset="mimic_cxr", root="", resize=256, crop=224, hflip=True)
    config.eval.update(split="test", batch_size=16, beam_size=3)

    for item in filter(None, (arg or "").split(",")):
        if item == "no_memory":
            config.model.abnormal_memory = False
        elif item == "no_decouple":
            config.model.decouple = False
        elif item == "runlocal":
            config.total_steps, config.log_every, config.eval_every = 4, 2, 4
            config.checkpoint.every_steps = 4
            config.batch_size = 2
            config.model.update(backbone="small_cnn", norm="batch", d_model=32, d_ff=32,
                                num_heads=2, num_layers=1, rm_num_heads=2, rm_d_model=32,
                                semantic_topk=8, semantic_layers=1)
            config.optim.lr_multipliers = ()
            config.data.update(resize=64, crop=56)
            config.eval.update(batch_size=2, beam_size=2)
        else:
            raise ValueError(f"nadm_mimic_cxr.py: unknown preset {item!r} "
                             "(known: no_memory, no_decouple, runlocal)")
    return config
