"""Convergence of experiments/seq2seq/reverse.py: held-out accuracy with greedy decoding and with
beam search (beam 4) of the same trained model, and wall time.

Run:  ./launch.sh bench seq2seq_reverse      (writes benchmarks/results/seq2seq_reverse.json)
"""

import json
import platform
import tempfile
import time
from pathlib import Path

import jax

from experiments.seq2seq.reverse import get_config
from mlx_research.train.trainer import Trainer

RESULTS = Path(__file__).parent / "results" / "seq2seq_reverse.json"


def main() -> None:
    config = get_config()
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        trainer = Trainer(config, workdir)
        trainer.train()
        wall = time.perf_counter() - start
        greedy = trainer.evaluate_checkpoint()
        trainer.close()
        config.evals.decode.beam_size = 4
        beam_trainer = Trainer(config, workdir)
        start = time.perf_counter()
        beam = beam_trainer.evaluate_checkpoint()
        beam_wall = time.perf_counter() - start
        beam_trainer.close()
    result = {
        "experiment": "experiments/seq2seq/reverse.py",
        "command": "./launch.sh bench seq2seq_reverse",
        "steps": config.total_steps,
        "greedy_token_accuracy": greedy["decode/token_accuracy"],
        "greedy_sequence_accuracy": greedy["decode/sequence_accuracy"],
        "beam4_token_accuracy": beam["decode/token_accuracy"],
        "beam4_sequence_accuracy": beam["decode/sequence_accuracy"],
        "wall_seconds": round(wall, 1),
        "beam4_eval_seconds": round(beam_wall, 1),
        "devices": [str(d) for d in jax.devices()],
        "machine": f"{platform.processor() or platform.machine()}, {jax.device_count()} device(s)",
        "date": time.strftime("%Y-%m-%d"),
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
