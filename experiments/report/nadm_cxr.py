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
from mlx_research.train.config import derived_config
from mlx_research.train.presets import apply_presets

PRESETS = {
    # the R2Gen experiment's runlocal (taken in `from_r2gen`) and smaller semantic heads
    "runlocal": lambda config: config.model.update(semantic_topk=8, semantic_layers=1),
    "no_memory": lambda config: config.model.update(abnormal_memory=False),  # no memory, no L_m
    "no_decouple": lambda config: config.model.update(decouple=False),  # plain CE, no heads
}


def from_r2gen(r2gen_get_config, arg: str | None, source: str):
    """NADM on the settings of an R2Gen experiment (``r2gen_get_config``, its get_config) with the
    presets of ``arg`` (`PRESETS`); ``source`` names the file in errors."""
    runlocal = "runlocal" in (arg or "").split(",")
    config = derived_config("nadm", r2gen_get_config("runlocal" if runlocal else None))
    config.optim.wd_exclude = (*config.optim.wd_exclude, "^report_uncertainty$")
    return apply_presets(config, arg, PRESETS, source)


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
