"""Convergence of experiments/seq2seq/reverse.py: final eval accuracy and wall time.

Run:  ./launch.sh bench seq2seq_reverse      (writes benchmarks/results/seq2seq_reverse.json)
"""

import json
import platform
import tempfile
import time
from pathlib import Path

import jax

from experiments.seq2seq.reverse import get_config
from mlx_research.train.metrics import read_metrics
from mlx_research.train.trainer import Trainer

RESULTS = Path(__file__).parent / "results" / "seq2seq_reverse.json"


def main() -> None:
    config = get_config()
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        trainer = Trainer(config, workdir)
        trainer.train()
        trainer.close()
        wall = time.perf_counter() - start
        final = [r for r in read_metrics(workdir) if "eval/token_accuracy" in r][-1]
    result = {
        "experiment": "experiments/seq2seq/reverse.py",
        "command": "./launch.sh bench seq2seq_reverse",
        "steps": config.total_steps,
        "eval_token_accuracy": final["eval/token_accuracy"],
        "eval_sequence_accuracy": final["eval/sequence_accuracy"],
        "wall_seconds": round(wall, 1),
        "devices": [str(d) for d in jax.devices()],
        "machine": f"{platform.processor() or platform.machine()}, {jax.device_count()} device(s)",
        "date": time.strftime("%Y-%m-%d"),
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
