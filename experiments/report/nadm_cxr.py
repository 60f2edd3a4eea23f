"""NADM from scratch on the built-in synthetic chest X-ray studies (two views per study). Model
size, optimiser, batch, steps, data and evaluation are r2gen_cxr.py's (taken from it), so the two
compare at equal steps; NADM's own fields are the task defaults (mlx_research/train/tasks/nadm.py:
memory of twice the patch features, reference semantic heads, ASL and uncertainty weights).

Run:       ./launch.sh experiments/report/nadm_cxr.py
Smoke:     ./launch.sh experiments/report/nadm_cxr.py:runlocal  (a few steps)
Ablations: :no_memory | :no_decouple (comma-separated, e.g. :runlocal,no_memory)
Result:    see the README's report results table (./launch.sh bench report_cxr nadm).
"""

from experiments.report.r2gen_cxr import get_config as r2gen_config
from mlx_research.config_checks import parse_presets
from mlx_research.train.config import derived_config

PRESETS = ("runlocal", "no_memory", "no_decouple")


def from_r2gen(r2gen_get_config, arg: str | None, source: str):
    """NADM on the settings of an R2Gen experiment (``r2gen_get_config``, its get_config) with the
    presets of ``arg``: "runlocal" | "no_memory" (no abnormal memory, no L_m) | "no_decouple"
    (plain token cross-entropy, no semantic heads); ``source`` names the file in errors."""
    items = parse_presets(arg, PRESETS, source)
    base = r2gen_get_config("runlocal" if "runlocal" in items else None)
    config = derived_config("nadm", base)
    config.optim.wd_exclude = (*config.optim.wd_exclude, "^report_uncertainty$")
    config.model.abnormal_memory = "no_memory" not in items
    config.model.decouple = "no_decouple" not in items
    if "runlocal" in items:
        config.model.update(semantic_topk=8, semantic_layers=1)
    return config


def get_config(arg: str | None = None):
    """arg: comma-separated presets (see `from_r2gen`)."""
    config = from_r2gen(r2gen_config, arg, "nadm_cxr.py")
    # Memory matching by scipy through a host callback: on this 2-core CPU it costs ~0.1 s a
    # step against ~1.2 s for the on-device Hungarian (--config.model.matcher=device on GPU/TPU).
    config.model.matcher = "scipy"
    # Dropout masks from the counter hash (mlx_research.prng): threefry's masks for the memory
    # read's 16 x 242 x 484 x 4 attention weights alone took ~90 ms of a ~700 ms step here.
    config.rng_impl = "hash32"
    return config
