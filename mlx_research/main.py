"""Entry point: python -m mlx_research.main --config=experiments/x.py --workdir=DIR
[--mode=eval [--step=N] [--eval=NAME]].

Any config field can be overridden: --config.optim.lr=3e-4. Config, data and checkpoint problems
end the run with one line naming the problem (exit status 1).
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (path[:arg]).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and images.")
flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (resumes from the workdir) or eval.")
flags.DEFINE_integer(
    "step", None, "With --mode=eval: checkpoint step to evaluate (default latest)."
)
flags.DEFINE_string("eval", None, "With --mode=eval: run only this evaluator (default all).")
flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() (TPU pod, SLURM).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (explicit multi-process).")
flags.DEFINE_integer("num_processes", None, "Number of processes (explicit multi-process).")
flags.DEFINE_integer("process_id", None, "This process's index (explicit multi-process).")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def _init_distributed() -> None:
    import jax  # pylint: disable=import-outside-toplevel

    if FLAGS.coordinator_address:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            FLAGS.coordinator_address,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
        )
    elif FLAGS.multihost:
        jax.distributed.initialize()


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    _init_distributed()
    import jax  # pylint: disable=import-outside-toplevel
    from mlx_research.train import checkpoint, config as config_lib, trainer  # pylint: disable=import-outside-toplevel

    config = FLAGS.config
    if jax.process_index() == 0:
        print(f"workdir: {FLAGS.workdir}\nconfig:\n{config}", flush=True)
    known = (
        config_lib.ConfigError,
        checkpoint.CheckpointError,
        trainer.NonFiniteLossError,
        FileNotFoundError,
    )
    try:
        t = trainer.Trainer(config, FLAGS.workdir)
        if FLAGS.mode == "train":
            t.train()
        else:
            t.evaluate_checkpoint(FLAGS.step, FLAGS.eval)
        t.close()
    except known as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing, with config-file and override errors reduced to one line."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        message = str(e)
    except (AttributeError, KeyError, TypeError, ValueError, FileNotFoundError) as e:
        detail = " ".join(str(e).replace("\\n", " ").replace("\\'", "'").strip("'\"").split())
        overrides = [a for a in argv if a.startswith("--config")]
        message = f"bad config ({' '.join(overrides)}): {type(e).__name__}: {detail}"
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def run() -> None:
    """Console-script entry point."""
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
