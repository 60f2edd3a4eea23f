"""Convergence of a report-generation experiment on the synthetic chest X-rays: every report score
on the synthetic test split and the wall time, trained from scratch.

Run:  ./launch.sh bench report_cxr MODEL [PRESET]   MODEL: r2gen | nadm | mkmia (the config
      experiments/report/MODEL_cxr.py), PRESET e.g. an ablation; writes
      benchmarks/results/report_MODEL[_PRESET].json
"""

import importlib
import sys

from benchmarks.convergence import train, write

_CURVE = ("bleu_4", "cider", "clinical_f1_macro", "clinical_f1_macro_abnormal")


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: ./launch.sh bench report_cxr MODEL [PRESET]")
    model, preset = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "")
    config = importlib.import_module(f"experiments.report.{model}_cxr").get_config(preset)
    wall, evals, machine = train(config, "eval/report/bleu_4")
    write(f"report_{model}" + (f"_{preset}" if preset else ""), {
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
    })


if __name__ == "__main__":
    main()
