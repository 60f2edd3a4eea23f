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
from mlx_research.config_checks import parse_presets
from mlx_research.train.config import derived_config

PRESETS = ("runlocal", "no_dictionary", "no_history", "coarse_only")


def from_r2gen(r2gen_get_config, arg: str | None, source: str):
    """MKMIA on the settings of an R2Gen experiment (``r2gen_get_config``, its get_config) with the
    presets of ``arg``: "runlocal" | "no_dictionary" | "no_history" | "coarse_only" (coarse
    alignment only: no region-word KL); ``source`` names the file in errors."""
    items = parse_presets(arg, PRESETS, source)
    base = r2gen_get_config("runlocal" if "runlocal" in items else None)
    config = derived_config("mkmia", base)
    config.model.use_dictionary = "no_dictionary" not in items
    config.model.use_history = "no_history" not in items
    config.model.alignment = "coarse" if "coarse_only" in items else "multilevel"
    if "runlocal" in items:
        config.model.align_dim = 32
    return config


def get_config(arg: str | None = None):
    """arg: comma-separated presets (see `from_r2gen`)."""
    return from_r2gen(r2gen_config, arg, "mkmia_cxr.py")
