"""The convergence benchmark of a detector on the synthetic shapes: COCO AP on the validation
split and the wall time, trained from scratch (``faster_rcnn_shapes``, ``yolo_shapes`` and
``detr_shapes`` run it)."""

from __future__ import annotations

import argparse
import importlib

from benchmarks.common import write_result
from benchmarks.convergence.training import train


def main(experiment: str, argv: list[str] | None = None) -> None:
    """Trains ``experiments/detection/<experiment>.py[:PRESET]`` (PRESET from the command line)
    and writes ``benchmarks/results/<experiment>[_PRESET].json``."""
    parser = argparse.ArgumentParser(
        description=f"COCO AP of experiments/detection/{experiment}.py trained from scratch; "
                    f"writes benchmarks/results/{experiment}[_PRESET].json")
    parser.add_argument("preset", nargs="?", default="", help="the config's preset, e.g. quick")
    preset = parser.parse_args(argv).preset
    config = importlib.import_module(f"experiments.detection.{experiment}").get_config(preset)
    wall, evals, machine = train(config, "eval/coco/AP")
    suffix = f"_{preset}" if preset else ""
    result = {
        "experiment": f"experiments/detection/{experiment}.py" + (f":{preset}" if preset else ""),
        "command": f"./launch.sh bench {experiment}" + (f" {preset}" if preset else ""),
        "steps": config.total_steps,
        "batch_size": config.batch_size,
        "eval_images": config.evals.coco.num_examples,
        **{k.split("/")[-1]: round(v, 4) for k, v in evals[-1].items()
           if k.startswith("eval/coco/")},
        "curve": [{"step": r["step"], "AP": round(r["eval/coco/AP"], 4),
                   "AP50": round(r["eval/coco/AP50"], 4)} for r in evals],
        "wall_seconds": round(wall, 1),
        **machine,
    }
    write_result(experiment + suffix, result, echo=True)
