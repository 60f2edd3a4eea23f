"""NADM from scratch on the built-in synthetic chest X-ray studies (two views per study), with the
model size, optimiser, batch and steps of r2gen_cxr.py (so the two compare at equal steps).

Run:     ./launch.sh experiments/report/nadm_cxr.py
Smoke:   ./launch.sh experiments/report/nadm_cxr.py:runlocal  (a few steps)
Ablations: :no_memory (no abnormal memory, no L_m), :no_decouple (plain token cross-entropy,
         no semantic heads); presets combine with commas (e.g. :no_memory,runlocal).
Result:  see the README's report results table.
"""

from mlx_research.nn.regularization import DEFAULT_EXCLUDE
from mlx_research.train.config import default_config


def get_config(arg: str | None = None):
    """arg: comma-separated presets: "no_memory" | "no_decouple" | "runlocal"."""
    config = default_config("nadm")
    config.total_steps = 3000
    config.batch_size = 16
    config.log_every = 50
    config.eval_every = 1000
    config.write_images = True
    config.checkpoint.every_steps = 500
    config.optim.update(name="adamw", lr=5e-4, weight_decay=1e-4, warmup_steps=200,
                        schedule="cosine", grad_clip_norm=1.0,
                        wd_exclude=(*DEFAULT_EXCLUDE, "^report_uncertainty$"))
    config.model.update(backbone="small_cnn", small_cnn_features=(32, 64, 128), d_model=128,
                        d_ff=256, num_heads=4, num_layers=2, dropout=0.1, rm_num_slots=3,
                        rm_num_heads=4, rm_d_model=128)
    # NADM: 2 x 121 patch features per study -> 484 memory entries; reference heads and losses.
    # Memory matching by scipy through a host callback: on this 2-core CPU it costs ~0.1 s a
    # step against ~1.2 s for the on-device Hungarian (--config.model.matcher=device on GPU/TPU).
    config.model.update(abnormal_memory=True, memory_size=-1, matcher="scipy", decouple=True,
                        semantic_topk=25, semantic_layers=3, uncertainty_form="liebel")
    config.data.update(dataset="synthetic", image_size=96, resize=96, crop=88, hflip=False)
    config.eval.update(num_examples=500, batch_size=50, beam_size=3)

    for item in filter(None, (arg or "").split(",")):
        if item == "no_memory":
            config.model.abnormal_memory = False
        elif item == "no_decouple":
            config.model.decouple = False
        elif item == "runlocal":
            config.total_steps, config.log_every, config.eval_every = 4, 2, 4
            config.checkpoint.every_steps = 4
            config.eval.update(num_examples=8, batch_size=8, beam_size=2)
        else:
            raise ValueError(f"nadm_cxr.py: unknown preset {item!r} "
                             "(known: no_memory, no_decouple, runlocal)")
    return config
