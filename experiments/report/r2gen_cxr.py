"""R2Gen from scratch on the built-in synthetic chest X-ray studies (two views per study).

Run:     ./launch.sh experiments/report/r2gen_cxr.py
Smoke:   ./launch.sh experiments/report/r2gen_cxr.py:runlocal  (a few steps)
Result:  see the README's report results table (./launch.sh bench report_cxr r2gen,
         benchmarks/results/report_r2gen.json).
"""

from mlx_research.train.config import default_config
from mlx_research.train.presets import apply_presets, runlocal


def get_config(arg: str | None = None):
    """arg: comma-separated presets: "base" (no relational memory) | "runlocal"."""
    config = default_config("report")
    config.total_steps = 2000
    config.batch_size = 16
    config.log_every = 50
    config.write_images = True
    config.checkpoint.every_steps = 500
    config.optim.update(name="adamw", lr=5e-4, weight_decay=1e-4, warmup_steps=200,
                        schedule="cosine", grad_clip_norm=1.0)
    config.model.update(backbone="small_cnn", small_cnn_features=(32, 64, 128), d_model=128,
                        d_ff=256, num_heads=4, num_layers=2, dropout=0.1, rm_num_slots=3,
                        rm_num_heads=4, rm_d_model=128,
                        feature_dropout=0.1)  # R2Gen's 0.5 suits pretrained features, not scratch
    config.data.update(dataset="synthetic", image_size=96, resize=96, crop=88, hflip=False)
    config.evals.report.update(every_steps=1000, num_examples=500, batch_size=50, beam_size=3)
    return apply_presets(config, arg, {"base": base, "runlocal": runlocal(
        4, num_examples=8, batch_size=8, beam_size=2)}, __file__)


def base(config):
    """The plain Transformer baseline: no relational memory, no conditional layer norm."""
    config.model.use_memory = False
