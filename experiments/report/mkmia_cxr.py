"""MKMIA from scratch on the built-in synthetic chest X-ray studies (two views per study). Model
size, optimiser, batch, steps, data and evaluation are r2gen_cxr.py's (taken from it), so that the
two compare at equal steps; MKMIA's own fields are the task defaults (mlx_research/train/tasks/
mkmia.py: knowledge fusion of dictionary and prior report, multilevel alignment, loss weights).

Run:       ./launch.sh experiments/report/mkmia_cxr.py
Smoke:     ./launch.sh experiments/report/mkmia_cxr.py:runlocal  (a few steps)
Ablations: :no_dictionary | :no_history | :coarse_only (comma-separated, e.g. :runlocal,no_history)
Result:    see the README's report results table (./launch.sh bench report_cxr mkmia).
"""

from experiments.report.r2gen_cxr import get_config as r2gen_config
from mlx_research.train.config import derived_config
from mlx_research.train.presets import apply_presets

PRESETS = {
    # the R2Gen experiment's runlocal (taken in `from_r2gen`) and a narrower alignment space
    "runlocal": lambda config: config.model.update(align_dim=32),
    "no_dictionary": lambda config: config.model.update(use_dictionary=False),
    "no_history": lambda config: config.model.update(use_history=False),
    "coarse_only": lambda config: config.model.update(alignment="coarse"),  # no region-word KL
}


def from_r2gen(r2gen_get_config, arg: str | None, source: str):
    """MKMIA on the settings of an R2Gen experiment (``r2gen_get_config``, its get_config) with the
    presets of ``arg`` (`PRESETS`); ``source`` names the file in errors."""
    runlocal = "runlocal" in (arg or "").split(",")
    config = derived_config("mkmia", r2gen_get_config("runlocal" if runlocal else None))
    return apply_presets(config, arg, PRESETS, source)


def get_config(arg: str | None = None):
    """arg: comma-separated presets (see `from_r2gen`)."""
    return from_r2gen(r2gen_config, arg, "mkmia_cxr.py")
