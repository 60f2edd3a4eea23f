"""R2Gen on MIMIC-CXR in R2Gen's layout (annotation.json + images/, one view per study),
R2Gen's published settings except the visual extractor (ResNet-50 here; load torchvision ImageNet
weights with init_from). The settings live in r2gen_iu_xray.py (`r2gen_config`).

Run:  ./launch.sh experiments/report/r2gen_mimic_cxr.py --config.data.root=/data/mimic_cxr
      [--config.data.chexpert_csv=/data/mimic-cxr-2.0.0-chexpert.csv  (reference labels)]
      [--config.init_from.path=resnet50.npz --config.init_from.prefix=backbone]
      (convert weights with: python -m mlx_research.tools.convert_torchvision resnet50 IN.pth OUT.npz)
Smoke: add :runlocal
Result: not measured here (the dataset is not distributed with the code).
"""

from experiments.report.r2gen_iu_xray import r2gen_config


def get_config(arg: str | None = None):
    """arg: comma-separated presets: "base" (no relational memory) | "runlocal"."""
    return r2gen_config("mimic_cxr", arg)
