"""MKMIA on IU X-Ray in R2Gen's layout; every setting of r2gen_iu_xray.py (taken from it:
R2Gen's published optimiser and model size, ResNet-50 visual extractor) plus MKMIA's own fields at
the task defaults (mlx_research/train/tasks/mkmia.py). The knowledge dictionary is
<root>/knowledge.json if present (or --config.data.knowledge_file=...), else the built-in one.

Run:   ./launch.sh experiments/report/mkmia_iu_xray.py --config.data.root=/data/iu_xray
       [--config.init_from.path=resnet50.npz --config.init_from.prefix=backbone]
       (the same parameter names as R2Gen: an R2Gen checkpoint loads too)
Smoke: add :runlocal
Ablations: :no_dictionary | :no_history | :coarse_only (comma-separated)
Result: not measured here (the dataset is not distributed with the code).
"""

from experiments.report.mkmia_cxr import from_r2gen
from experiments.report.r2gen_iu_xray import get_config as r2gen_config


def get_config(arg: str | None = None):
    """arg: comma-separated presets: "runlocal" | "no_dictionary" | "no_history" | "coarse_only"."""
    return from_r2gen(r2gen_config, arg, "mkmia_iu_xray.py")
