"""Convergence of a report-generation experiment on the synthetic chest X-rays: every report score
on the synthetic test split and the wall time, trained from scratch.

Run:  ./launch.sh bench report_cxr MODEL [PRESET]   MODEL: r2gen | nadm | mkmia (the config
      experiments/report/MODEL_cxr.py), PRESET e.g. an ablation; writes
      benchmarks/results/report_MODEL[_PRESET].json
"""

import argparse
import importlib

from benchmarks.common import write_result
from benchmarks.convergence.training import train

_CURVE = ("bleu_4", "cider", "clinical_f1_macro", "clinical_f1_macro_abnormal")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", choices=("r2gen", "nadm", "mkmia"),
                        help="the config experiments/report/MODEL_cxr.py")
    parser.add_argument("preset", nargs="?", default="", help="the config's preset, e.g. an "
                        "ablation such as no_memory")
    args = parser.parse_args()
    model, preset = args.model, args.preset
    config = importlib.import_module(f"experiments.report.{model}_cxr").get_config(preset)
    wall, evals, machine = train(config, "eval/report/bleu_4")
    write_result(f"report_{model}" + (f"_{preset}" if preset else ""), {
        "experiment": f"experiments/report/{model}_cxr.py" + (f":{preset}" if preset else ""),
        "command": f"./launch.sh bench report_cxr {model}" + (f" {preset}" if preset else ""),
        "steps": config.total_steps,
        "batch_size": config.batch_size,
        "test_studies": config.evals.report.num_examples,
        "beam_size": config.evals.report.beam_size,
        **{k.split("/")[-1]: round(v, 4) for k, v in evals[-1].items()
           if k.startswith("eval/report/")},
        "curve": [{"step": r["step"], **{k: round(r[f"eval/report/{k}"], 4) for k in _CURVE}}
                  for r in evals],
        "wall_seconds": round(wall, 1),
        **machine,
    }, echo=True)


if __name__ == "__main__":
    main()
