"""What the convergence benchmarks share: train a config from scratch in a temporary workdir,
time the whole run (compilation and periodic evaluations included), and write the result JSON
with the machine and its load (other processes inflate the wall time)."""

import importlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import jax

from mlx_research.train.metrics import read_metrics
from mlx_research.train.trainer import Trainer

RESULTS = Path(__file__).parent / "results"


def train(config, eval_key: str) -> tuple[float, list[dict], dict]:
    """Trains ``config`` from scratch. Returns (wall seconds, the metric records holding
    ``eval_key`` in step order, machine fields for the result)."""
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        trainer = Trainer(config, workdir)
        trainer.train()
        trainer.close()
        wall = time.perf_counter() - start
        evals = [r for r in read_metrics(workdir) if eval_key in r]
    machine = {
        "machine": f"{platform.processor() or platform.machine()}, {jax.device_count()} device(s)",
        "cpu_count": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d"),
    }
    return wall, evals, machine


def write(name: str, result: dict) -> None:
    """Writes benchmarks/results/<name>.json and prints it."""
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def detection_shapes(experiment: str) -> None:
    """COCO AP of ``experiments/detection/<experiment>.py[:PRESET]`` (PRESET = argv[1]) on the
    shapes validation split; writes results/<experiment>[_PRESET].json."""
    preset = sys.argv[1] if len(sys.argv) > 1 else ""
    config = importlib.import_module(f"experiments.detection.{experiment}").get_config(preset)
    wall, evals, machine = train(config, "eval/coco/AP")
    suffix = f"_{preset}" if preset else ""
    write(experiment + suffix, {
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
    })
