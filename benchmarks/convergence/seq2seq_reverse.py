"""Convergence of experiments/seq2seq/reverse.py: held-out accuracy with greedy decoding (the
training's final evaluation) and with beam search (beam 4) of the same trained model, and wall
time.

Run:  ./launch.sh bench seq2seq_reverse [PRESET]
      (writes benchmarks/results/seq2seq_reverse[_PRESET].json)
"""

import argparse
import tempfile
import time

import jax

from benchmarks.common import write_result
from benchmarks.convergence.training import train
from experiments.seq2seq.reverse import get_config
from mlx_research.train.trainer import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("preset", nargs="?", default="", help="the config's preset, e.g. runlocal")
    preset = parser.parse_args().preset
    config = get_config(preset)
    with tempfile.TemporaryDirectory() as workdir:
        wall, evals, machine = train(config, "eval/decode/token_accuracy", workdir)
        config.evals.decode.beam_size = 4
        beam_trainer = Trainer(config, workdir)
        start = time.perf_counter()
        beam = beam_trainer.evaluate_checkpoint()
        beam_wall = time.perf_counter() - start
        beam_trainer.close()
    greedy = evals[-1]
    write_result("seq2seq_reverse" + (f"_{preset}" if preset else ""), {
        "experiment": "experiments/seq2seq/reverse.py" + (f":{preset}" if preset else ""),
        "command": "./launch.sh bench seq2seq_reverse" + (f" {preset}" if preset else ""),
        "steps": config.total_steps,
        "greedy_token_accuracy": greedy["eval/decode/token_accuracy"],
        "greedy_sequence_accuracy": greedy["eval/decode/sequence_accuracy"],
        "beam4_token_accuracy": beam["decode/token_accuracy"],
        "beam4_sequence_accuracy": beam["decode/sequence_accuracy"],
        "wall_seconds": round(wall, 1),
        "beam4_eval_seconds": round(beam_wall, 1),
        "devices": [str(d) for d in jax.devices()],
        **machine,
    }, echo=True)


if __name__ == "__main__":
    main()
