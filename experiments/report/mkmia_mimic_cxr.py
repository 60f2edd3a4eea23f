"""MKMIA on MIMIC-CXR in R2Gen's layout; every setting of r2gen_mimic_cxr.py (taken from it:
R2Gen's published optimiser and model size, ResNet-50 visual extractor) plus MKMIA's own fields at
the task defaults (mlx_research/train/tasks/mkmia.py). The knowledge dictionary is
<root>/knowledge.json if present (or --config.data.knowledge_file=...), else the built-in one.

Run:   ./launch.sh experiments/report/mkmia_mimic_cxr.py --config.data.root=/data/mimic_cxr
       [--config.init_from.path=resnet50.npz --config.init_from.prefix=backbone]
       (the same parameter names as R2Gen: an R2Gen checkpoint loads too)
Smoke: add :runlocal
Ablations: :no_dictionary | :no_history | :coarse_only (comma-separated)
Result: not measured here (the dataset is not distributed with the code).
"""

from experiments.report.r2gen_mimic_cxr import get_config as r2gen_config
from mlx_research.train.tasks.mkmia import config_from_report

PRESETS = ("runlocal", "no_dictionary", "no_history", "coarse_only")


def get_config(arg: str | None = None):
    """arg: comma-separated presets: "runlocal" | "no_dictionary" | "no_history" |
    "coarse_only" (coarse alignment only: no region-word KL)."""
    items = [item for item in (arg or "").split(",") if item]
    for item in items:
        if item not in PRESETS:
            raise ValueError(f"mkmia_mimic_cxr.py: unknown preset {item!r} "
                             f"(known: {', '.join(PRESETS)})")
    config = config_from_report(r2gen_config("runlocal" if "runlocal" in items else None))
    config.model.use_dictionary = "no_dictionary" not in items
    config.model.use_history = "no_history" not in items
    config.model.alignment = "coarse" if "coarse_only" in items else "multilevel"
    if "runlocal" in items:
        config.model.align_dim = 32
    return config
