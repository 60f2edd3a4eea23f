"""MKMIA from scratch on the built-in synthetic chest X-ray studies (two views per study). Model
size, optimiser, batch, steps, data and evaluation are r2gen_cxr.py's (taken from it), so that the
two compare at equal steps; MKMIA's own fields are the task defaults (mlx_research/train/tasks/
mkmia.py: knowledge fusion of dictionary and prior report, multilevel alignment, loss weights).

Run:       ./launch.sh experiments/report/mkmia_cxr.py
Smoke:     ./launch.sh experiments/report/mkmia_cxr.py:runlocal  (a few steps)
Ablations: :no_dictionary | :no_history | :coarse_only (comma-separated, e.g. :runlocal,no_history)
Result:    not measured yet (a 3000-step run goes into the README's report results table).
"""

from experiments.report.r2gen_cxr import get_config as r2gen_config
from mlx_research.train.tasks.mkmia import config_from_report

PRESETS = ("runlocal", "no_dictionary", "no_history", "coarse_only")


def get_config(arg: str | None = None):
    """arg: comma-separated presets: "runlocal" | "no_dictionary" | "no_history" |
    "coarse_only" (coarse alignment only: no region-word KL)."""
    items = [item for item in (arg or "").split(",") if item]
    for item in items:
        if item not in PRESETS:
            raise ValueError(f"mkmia_cxr.py: unknown preset {item!r} (known: {', '.join(PRESETS)})")
    config = config_from_report(r2gen_config("runlocal" if "runlocal" in items else None))
    config.model.use_dictionary = "no_dictionary" not in items
    config.model.use_history = "no_history" not in items
    config.model.alignment = "coarse" if "coarse_only" in items else "multilevel"
    return config
