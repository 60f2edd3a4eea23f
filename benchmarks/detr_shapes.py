"""Convergence of experiments/detection/detr_shapes.py: COCO AP on the shapes validation
split and wall time, trained from scratch.

Run:  ./launch.sh bench detr_shapes [PRESET]   (e.g. quick; writes
      benchmarks/results/detr_shapes[_PRESET].json)
"""

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import jax

from experiments.detection.detr_shapes import get_config
from mlx_research.train.metrics import read_metrics
from mlx_research.train.trainer import Trainer


def main() -> None:
    preset = sys.argv[1] if len(sys.argv) > 1 else ""
    config = get_config(preset)
    load = os.getloadavg()  # other processes on the host inflate the wall time
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        trainer = Trainer(config, workdir)
        trainer.train()
        trainer.close()
        wall = time.perf_counter() - start
        evals = [r for r in read_metrics(workdir) if "eval/coco/AP" in r]
    final = evals[-1]
    result = {
        "experiment": "experiments/detection/detr_shapes.py" + (f":{preset}" if preset else ""),
        "command": "./launch.sh bench detr_shapes" + (f" {preset}" if preset else ""),
        "steps": config.total_steps,
        "batch_size": config.batch_size,
        "eval_images": config.eval.num_examples,
        **{k.split("/")[-1]: round(v, 4) for k, v in final.items() if k.startswith("eval/coco/")},
        "curve": [{"step": r["step"], "AP": round(r["eval/coco/AP"], 4),
                   "AP50": round(r["eval/coco/AP50"], 4)} for r in evals],
        "wall_seconds": round(wall, 1),
        "machine": f"{platform.processor() or platform.machine()}, {jax.device_count()} device(s)",
        "cpu_count": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d"),
    }
    name = "detr_shapes" + (f"_{preset}" if preset else "")
    path = Path(__file__).parent / "results" / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
