"""NADM on IU X-Ray in R2Gen's layout (annotation.json + images/): every setting of
r2gen_iu_xray.py (taken from it: R2Gen's published optimiser and model size, ResNet-50 visual
extractor) plus NADM's reference heads and losses (the task defaults; 2 views x 7 x 7 features ->
196 memory entries).

Run:   ./launch.sh experiments/report/nadm_iu_xray.py --config.data.root=/data/iu_xray
       [--config.init_from.path=resnet50.npz --config.init_from.prefix=backbone]
       (convert weights with: python -m mlx_research.tools.convert_torchvision resnet50 IN.pth OUT.npz)
Smoke: add :runlocal.  Ablations: :no_memory, :no_decouple (combine with commas).
Result: not measured here (the dataset is not distributed with the code).
"""

from experiments.report.nadm_cxr import from_r2gen
from experiments.report.r2gen_iu_xray import get_config as r2gen_config


def get_config(arg: str | None = None):
    """arg: comma-separated presets: "runlocal" | "no_memory" | "no_decouple"."""
    return from_r2gen(r2gen_config, arg, "nadm_iu_xray.py")
