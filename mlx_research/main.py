"""Entry point: python -m mlx_research.main --config=experiments/x.py --workdir=DIR
[--mode=eval [--step=N] [--eval=NAME]].

Any config field can be overridden: --config.optim.lr=3e-4. Config, data, workdir and checkpoint
problems end the run with one line naming the problem (exit status 1; --debug shows the
traceback). A run stopped by SIGTERM or Ctrl-C saves a checkpoint and exits with status 75.
"""

from __future__ import annotations

import os
import re
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
flags.DEFINE_bool("debug", False, "Show the traceback of user errors (config, data, checkpoints).")
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


def _compilation_cache() -> None:
    """Persistent XLA compilation cache for every run: $MLX_COMPILATION_CACHE, by default
    ~/.cache/mlx_research/xla (an empty value turns it off). A rerun or resume of the same
    experiment then skips the compilation of its train and eval steps."""
    import jax  # pylint: disable=import-outside-toplevel

    path = os.environ.get("MLX_COMPILATION_CACHE",
                          os.path.join(os.path.expanduser("~"), ".cache", "mlx_research", "xla"))
    if path:
        jax.config.update("jax_compilation_cache_dir", path)


PREEMPTED = 75  # exit status of a run stopped by SIGTERM / Ctrl-C after saving (EX_TEMPFAIL)


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    try:
        config = FLAGS.config
        config.get("task")  # ml_collections defers some config-file errors to the first access
    except Exception as e:  # pylint: disable=broad-except
        if FLAGS.debug:
            raise
        _fail(f"config file {FLAGS['config'].config_filename}: {_one_line(str(e))}")
    if not FLAGS.workdir:
        _fail("--workdir is empty")
    if FLAGS.mode == "train" and FLAGS.step is not None:
        _fail("--step applies to --mode=eval (training resumes from the latest checkpoint)")
    if FLAGS.mode == "train" and FLAGS.eval is not None:
        _fail("--eval applies to --mode=eval (training runs every evaluator)")
    if FLAGS.mode == "eval" and not os.path.isdir(os.path.join(FLAGS.workdir, "checkpoints")):
        _fail(f"no checkpoint to evaluate in {os.path.join(FLAGS.workdir, 'checkpoints')}")
    _init_distributed()
    _compilation_cache()
    import jax  # pylint: disable=import-outside-toplevel
    from mlx_research import errors  # pylint: disable=import-outside-toplevel
    from mlx_research.train import checkpoint, trainer, workdir_lock  # pylint: disable=import-outside-toplevel

    if jax.process_index() == 0:
        print(f"workdir: {FLAGS.workdir}\nconfig:\n{config}", flush=True)
    user_errors = (
        errors.ConfigError,
        checkpoint.CheckpointError,
        trainer.NonFiniteLossError,
        workdir_lock.WorkdirLockedError,
        FileNotFoundError,
    )
    t = None
    try:
        t = trainer.Trainer(config, FLAGS.workdir)
        if FLAGS.mode == "train":
            t.train()
        else:
            t.evaluate_checkpoint(FLAGS.step, FLAGS.eval)
        t.close()
    except user_errors as e:
        if FLAGS.debug:
            raise
        if t is not None and t.lock:
            t.lock.release()
        _fail(str(e))
    if t.preempted:
        sys.exit(PREEMPTED)


def _one_line(message: str) -> str:
    """The gist of a multi-line error (absl wraps config-file errors with their traceback): the
    first line, and the final exception line with the config file's line number."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if len(lines) <= 1:
        return " ".join(lines)
    exception = next((l for l in reversed(lines) if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", l)),
                     lines[-1])
    where = [m.groups() for m in re.finditer(r'File "([^"]+)", line (\d+)', message)
             if "site-packages" not in m.group(1)]
    location = f" ({where[-1][0]}:{where[-1][1]})" if where else ""
    return f"{lines[0].rstrip(':')}: {exception}{location}"


def _parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing, with config-file and override errors reduced to one line
    (--debug: the full traceback)."""
    try:
        return FLAGS(argv)
    except Exception as e:  # pylint: disable=broad-except
        if "--debug" in argv:
            raise
        if isinstance(e, flags.Error):
            message = _one_line(str(e))
        else:
            detail = " ".join(str(e).replace("\\n", " ").replace("\\'", "'").strip("'\"").split())
            overrides = [a for a in argv if a.startswith("--config")]
            message = f"bad config ({' '.join(overrides)}): {type(e).__name__}: {detail}"
    _fail(message)


def run() -> None:
    """Console-script entry point."""
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
