"""Run safety through the real entry point: one-line errors, the workdir lock, corrupt
checkpoints, config changes on resume, failures during evaluation, preemption exit status."""

import json
import signal
import subprocess
import sys

import ml_collections
import pytest

from mlx_research.config_checks import check_batch_divisible
from mlx_research.errors import ConfigError
from mlx_research.testing import REPO_ROOT
from mlx_research.train import config as config_lib
from mlx_research.train.trainer import Trainer
from tests.test_trainer import EXPERIMENT, _env, main_cmd, restore_params, tiny_config


def _run(cmd):
    return subprocess.run(cmd, env=_env(), cwd=REPO_ROOT, capture_output=True, text=True)


def _steps(workdir):
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _assert_one_error_line(out, message):
    assert out.returncode == 1, (out.returncode, out.stderr[-3000:])
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), out.stderr[-3000:]
    assert message in lines[0], lines[0]


@pytest.mark.parametrize("config, message", [
    ("bad_syntax.py", "SyntaxError: invalid syntax"),
    ("notes.txt", "NameError: name 'hello' is not defined"),
    (f"{EXPERIMENT}:nosuch", "unknown preset 'nosuch'"),
    ("missing.py", "No such file or directory"),
])
@pytest.mark.slow
def test_bad_config_files_fail_with_one_line(tmp_path, config, message):
    (tmp_path / "bad_syntax.py").write_text("def get_config(:\n")
    (tmp_path / "notes.txt").write_text("hello\n")
    path = config if config.startswith(EXPERIMENT) else str(tmp_path / config)
    out = _run([sys.executable, "-m", "mlx_research.main", f"--config={path}",
                f"--workdir={tmp_path / 'run'}"])
    _assert_one_error_line(out, message)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags, message", [
    (["--workdir="], "--workdir is empty"),
    (["--step=3"], "--step applies to --mode=eval"),
    (["--mode=eval"], "no checkpoint to evaluate in"),
])
@pytest.mark.slow
def test_entry_point_misuse_fails_with_one_line(tmp_path, flags, message):
    workdir = [] if "--workdir=" in flags else [f"--workdir={tmp_path / 'run'}"]
    cmd = [sys.executable, "-m", "mlx_research.main", f"--config={EXPERIMENT}", *workdir, *flags]
    _assert_one_error_line(_run(cmd), message)
    assert not (tmp_path / "run").exists()  # nothing created


def test_launch_help_and_empty_workdir():
    out = _run(["./launch.sh", EXPERIMENT, "--help"])
    assert out.returncode == 0 and "exit status" in out.stdout
    out = _run(["./launch.sh", EXPERIMENT, "--workdir="])
    assert out.returncode == 2 and out.stderr.strip() == "launch.sh: --workdir is empty"


@pytest.mark.parametrize("workdir, message", [
    ("a_file", "Not a directory"),  # a file where the workdir should be: makedirs fails
    ("/sys/mlx_research_run", "Operation not permitted"),  # an unwritable file system
])
@pytest.mark.slow
def test_unusable_workdir_fails_with_one_line(tmp_path, workdir, message):
    (tmp_path / "a_file").write_text("x")
    path = workdir if workdir.startswith("/") else str(tmp_path / workdir / "run")
    out = _run(main_cmd(path, total_steps=2, every=2))
    _assert_one_error_line(out, f"workdir {path}")
    assert message in out.stderr


@pytest.mark.parametrize("key, value, message", [
    ("checkpoint.every_steps", 0, "'checkpoint.every_steps' must be >= 1, got 0"),
    ("checkpoint.keep", 0, "'checkpoint.keep' must be >= 1, got 0"),
    ("data.min_len", 9, "'data.min_len' = 9 exceeds 'data.max_len' = 6"),
    ("data.vocab_size", 2, "'data.vocab_size' must be in [4, 2147483647], got 2"),
    ("data.task", "nosuch", "'data.task' must be one of reverse, sort, copy; got 'nosuch'"),
    ("seed", -1, "'seed' must be in [0, 4294967295], got -1"),
    ("optim.lr", -0.1, "'optim.lr' must be >= 0, got -0.1"),
    ("optim.lr", float("nan"), "'optim.lr' must be >= 0, got nan"),
    ("optim.warmup_steps", -1, "'optim.warmup_steps' must be >= 0, got -1"),
    ("evals.decode.every_steps", -5, "'evals.decode.every_steps' must be >= 0, got -5"),
    ("evals.decode.num_examples", 0, "'evals.decode.num_examples' must be >= 1, got 0"),
    ("evals.decode.beam_size", 0, "'evals.decode.beam_size' must be >= 1, got 0"),
    ("model.dropout", 1.0, "'model.dropout' must be in [0, 0.99], got 1.0"),
])
def test_config_ranges(key, value, message):
    with pytest.raises(ConfigError) as e:
        config_lib.validate(tiny_config(**{key: value}))
    assert str(e.value) == f"config: {message}"


@pytest.mark.parametrize("entry, message", [
    (dict(type="decode", beam=2), "unknown key 'evals.extra.beam'"),
    (dict(type="decode", beam_size=1.5), "'evals.extra.beam_size' must be int, got 1.5"),
    (dict(type="decode", length_penalty=-1.0),
     "'evals.extra.length_penalty' must be >= 0, got -1.0"),
    (dict(type="decode", every_steps=-1), "'evals.extra.every_steps' must be >= 0, got -1"),
    (dict(type="report"), "'evals.extra.type' must be one of decode (the evaluator kinds of task "
                          "'seq2seq'); got 'report'"),
    (dict(beam_size=2), "'evals.extra.type' must be one of decode (the evaluator kinds of task "
                        "'seq2seq'); got None"),
])
def test_added_evaluator_errors_name_the_key(entry, message):
    config = tiny_config()
    config.evals.extra = ml_collections.ConfigDict(entry)
    with pytest.raises(ConfigError) as e:
        config_lib.validate(config)
    assert str(e.value) == f"config: {message}"


def test_evaluator_fields_left_out_take_the_kind_defaults():
    config = tiny_config()
    config.evals.extra = ml_collections.ConfigDict(dict(type="decode", beam_size=2,
                                                        length_penalty=2))
    config_lib.validate(config)  # fills the entry in
    # every_steps from the trainer, batch_size as the kind changes it, the rest the kind's
    assert config.evals.extra.to_dict() == dict(type="decode", every_steps=500, batch_size=256,
                                                num_examples=512, beam_size=2, length_penalty=2.0)
    assert isinstance(config.evals.extra.length_penalty, float)  # the field's type
    config.evals.extra.batch_size = 6
    with pytest.raises(ConfigError) as e:
        check_batch_divisible(config, 4, "the 4 data devices")
    assert str(e.value) == (
        "config: evals.extra.batch_size = 6 is not divisible by the 4 data devices")


@pytest.mark.slow
def test_config_range_error_through_the_entry_point_before_any_work(tmp_path):
    out = _run(main_cmd(tmp_path, "--config.checkpoint.every_steps=0"))
    _assert_one_error_line(out, "'checkpoint.every_steps' must be >= 1, got 0")
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_second_run_on_a_workdir_is_refused_and_a_stale_lock_taken_over(tmp_path):
    first = subprocess.Popen(main_cmd(tmp_path, total_steps=100000, every=100000), env=_env(),
                             cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    for line in first.stdout:
        if line.startswith("step"):
            break
    second = _run(main_cmd(tmp_path, "--config.optim.lr=0.1", total_steps=4, every=2))
    _assert_one_error_line(second, f"is in use by pid {first.pid}")
    first.send_signal(signal.SIGKILL)
    first.wait()
    third = _run(main_cmd(tmp_path, total_steps=2, every=2))
    assert third.returncode == 0, third.stderr[-2000:]
    assert f"took over the stale lock {tmp_path}/lock of pid {first.pid}" in third.stdout
    assert not (tmp_path / "lock").exists()  # released at the end
    assert json.loads((tmp_path / "config.json").read_text())["optim"]["lr"] != 0.1


@pytest.mark.slow
def test_sigterm_and_ctrl_c_save_and_exit_75(tmp_path):
    for signum in (signal.SIGTERM, signal.SIGINT):
        workdir = tmp_path / signum.name
        proc = subprocess.Popen(main_cmd(workdir, total_steps=100000, every=100000), env=_env(),
                                cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        for line in proc.stdout:
            if line.startswith("step") and int(line.split()[1].split("/")[0]) >= 3:
                proc.send_signal(signum)
                break
        out, err = proc.communicate()
        assert proc.returncode == 75, err[-2000:]
        assert "preemption signal: saved checkpoint step" in out and "Traceback" not in err
        assert len(_steps(workdir)) == 1 and not (workdir / "lock").exists()


@pytest.mark.slow
def test_corrupt_latest_checkpoint_is_moved_aside_and_retrained(tmp_path):
    assert _run(main_cmd(tmp_path, total_steps=4, every=2)).returncode == 0
    data = max((p for p in (tmp_path / "checkpoints" / "4").rglob("*") if p.is_file()),
               key=lambda p: p.stat().st_size)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same length, one byte changed
    data.write_bytes(bytes(raw))
    out = _run(main_cmd(tmp_path, total_steps=4, every=2))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from checkpoint step 2" in out.stdout
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) <= 2
    assert "checkpoint step 4" in out.stderr
    assert _steps(tmp_path) == [2, 4]  # step 4 written again
    assert (tmp_path / "checkpoints" / "corrupt" / "4").is_dir()  # kept, not deleted
    out = _run(main_cmd(tmp_path, "--mode=eval", total_steps=4, every=2))
    assert out.returncode == 0 and "eval at step 4" in out.stdout, out.stderr[-2000:]


@pytest.mark.slow
def test_all_checkpoints_corrupt_is_one_error_line(tmp_path):
    assert _run(main_cmd(tmp_path, total_steps=4, every=2)).returncode == 0
    for f in (tmp_path / "checkpoints").rglob("*"):
        if f.is_file() and f.stat().st_size > 100:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # truncated
    out = _run(main_cmd(tmp_path, total_steps=4, every=2))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith("error: none of the checkpoints [2, 4]") and len(lines) <= 5, lines


@pytest.mark.slow
def test_resume_with_changed_model_or_batch_size_is_refused(tmp_path):
    trainer = Trainer(tiny_config(total_steps=2), str(tmp_path))
    trainer.train()
    trainer.close()
    saved = (tmp_path / "config.json").read_text()
    for changed, message in [
        (dict(**{"model.d_model": 32}), "model.d_model: 16 -> 32"),
        (dict(batch_size=16), "'batch_size' changed from 8 to 16"),
    ]:
        config = tiny_config(total_steps=4, **changed)
        trainer = Trainer(config, str(tmp_path))
        with pytest.raises(ConfigError, match="cannot resume") as e:
            trainer.train()
        trainer.close()
        assert message in str(e.value) and "\n" not in str(e.value)
        assert (tmp_path / "config.json").read_text() == saved  # the rejected config not written
    assert (tmp_path / "checkpoints" / "2").is_dir() and not (tmp_path / "checkpoints" / "corrupt").exists()
    # Fields that may change on resume do not stop it.
    trainer = Trainer(tiny_config(total_steps=4, log_every=1), str(tmp_path))
    assert int(trainer.train().step) == 4
    trainer.close()


@pytest.mark.slow
def test_exception_during_evaluation_keeps_the_checkpoint_being_written(tmp_path):
    config = tiny_config(total_steps=2, **{"evals.decode.every_steps": 2})
    config = _failing_eval(config)
    config.checkpoint.every_steps = 2
    trainer = Trainer(config, str(tmp_path))
    with pytest.raises(RuntimeError, match="evaluator failed"):
        trainer.train()
    trainer.close()
    assert _steps(tmp_path) == [2]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if "tmp" in p.name]
    assert restore_params(tmp_path)[0] == 2


def _failing_eval(config):
    from tests.test_trainer import _as_task

    return _as_task(config, "tests.failing_eval_task")
