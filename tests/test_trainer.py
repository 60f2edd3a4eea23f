"""End-to-end tests of the generic trainer on a tiny seq2seq config."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mlx_research.data.pipeline import make_train_iterator
from mlx_research.train import config as config_lib
from mlx_research.train.metrics import read_metrics
from mlx_research.train.trainer import NonFiniteLossError, Trainer
from mlx_research.testing import REPO_ROOT, run_with_devices

EXPERIMENT = "experiments/seq2seq/reverse.py"
# Tiny model and data: a step costs milliseconds, a compile a second or two.
TINY = [
    "--config.model.d_model=16",
    "--config.model.nhead=2",
    "--config.model.dim_feedforward=32",
    "--config.model.num_encoder_layers=1",
    "--config.model.num_decoder_layers=1",
    "--config.data.max_len=6",
    "--config.data.min_len=2",
    "--config.batch_size=8",
    "--config.eval.num_examples=16",
    "--config.eval.batch_size=8",
    "--config.eval_every=0",
    "--config.write_images=False",
    "--config.optim.warmup_steps=0",
]


def tiny_config(**overrides):
    """The experiment config with TINY applied in-process, then `overrides` (dotted keys)."""
    from experiments.seq2seq.reverse import get_config

    config = get_config()
    for flag in TINY:
        key, value = flag[len("--config.") :].split("=")
        current = _get(config, key)
        _set(config, key, value == "True" if isinstance(current, bool) else type(current)(value))
    for key, value in overrides.items():
        _set(config, key, value)
    return config


def _get(config, dotted):
    for part in dotted.split("."):
        config = config[part]
    return config


def _set(config, dotted, value):
    *parents, last = dotted.split(".")
    for part in parents:
        config = config[part]
    config[last] = value


def main_cmd(workdir, *flags, total_steps=12, every=4):
    return [
        sys.executable, "-m", "mlx_research.main", f"--config={EXPERIMENT}",
        f"--workdir={workdir}", *TINY, f"--config.total_steps={total_steps}",
        f"--config.checkpoint.every_steps={every}", "--config.log_every=1", *flags,
    ]


def _env():
    return dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")


def restore_params(workdir, step=None):
    """Final (or given) checkpoint's params as numpy, read with orbax directly."""
    ckpt = Path(workdir) / "checkpoints"
    step = step or max(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
    path = ckpt / str(step) / "state"
    checkpointer = ocp.StandardCheckpointer()
    one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one_device),
                          checkpointer.metadata(path).item_metadata)
    return step, jax.tree.map(np.asarray, checkpointer.restore(path, target)["params"])


def assert_trees_equal(a, b, rtol=0.0):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b) and la
    for x, y in zip(la, lb):
        if rtol:
            np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-6)
        else:
            np.testing.assert_array_equal(x, y)


def test_train_evaluate_checkpoint_and_single_compile(tmp_path):
    config = tiny_config(total_steps=6, log_every=2, eval_every=3, write_images=True)
    config.checkpoint.every_steps = 3
    trainer = Trainer(config, str(tmp_path))
    state = trainer.train()
    trainer.close()
    assert int(state.step) == 6
    assert trainer.train_step._cache_size() == 1  # compiled once, no retrace after step 1
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [3, 6]
    rows = read_metrics(tmp_path)
    train_rows = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in train_rows] == [2, 4, 6]
    assert all(np.isfinite(r["train/loss"]) and r["train/lr"] > 0 for r in train_rows)
    evals = [r for r in rows if "eval/token_accuracy" in r]
    assert [r["step"] for r in evals] == [3, 6] and 0 <= evals[-1]["eval/token_accuracy"] <= 1
    assert list((tmp_path / "images").glob("eval_predictions_*.png"))
    assert json.loads((tmp_path / "config.json").read_text())["task"] == "seq2seq"
    # A second run in the same workdir resumes at the end and does nothing more.
    again = Trainer(config, str(tmp_path))
    assert int(again.initial_state()[0].step) == 6
    again.close()


def test_gradient_accumulation_equals_full_batch(tmp_path):
    # Equal-length sequences, so the per-token mean of the batch is the mean of micro-batch means.
    def run(accum):
        config = tiny_config(total_steps=1, grad_accum_steps=accum)
        config.data.update(task="copy", min_len=5, max_len=5)
        config.optim.name, config.optim.lr = "sgd", 0.5
        trainer = Trainer(config, str(tmp_path / f"accum{accum}"))
        batches = make_train_iterator(trainer.task.train_source(), global_batch_size=8, seed=0)
        with trainer.mesh_context():
            state = trainer._init(jax.random.PRNGKey(0))
            state, metrics = trainer.train_step(state, jax.tree.map(jnp.asarray, next(batches)))
        return jax.tree.map(np.asarray, state.params), float(metrics["loss"])

    params_1, loss_1 = run(1)
    params_4, loss_4 = run(4)
    np.testing.assert_allclose(loss_4, loss_1, rtol=1e-5)
    assert_trees_equal(params_1, params_4, rtol=1e-5)


def test_bfloat16_compute_keeps_float32_parameters(tmp_path):
    config = tiny_config(total_steps=2, compute_dtype="bfloat16")
    trainer = Trainer(config, str(tmp_path))
    state = trainer.train()
    trainer.close()
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype("float32")}
    assert trainer.task.model.dtype == jnp.bfloat16
    rows = [r for r in read_metrics(tmp_path) if "train/loss" in r]
    assert rows and all(np.isfinite(r["train/loss"]) for r in rows)


def test_eval_mode_restores_a_chosen_step(tmp_path):
    subprocess.run(main_cmd(tmp_path, total_steps=4, every=2), env=_env(), check=True,
                   capture_output=True, cwd=REPO_ROOT)
    out = subprocess.run(main_cmd(tmp_path, "--mode=eval", "--step=2", total_steps=4, every=2),
                         env=_env(), capture_output=True, text=True, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr
    assert "eval at step 2: token_accuracy" in out.stdout
    assert any(r["step"] == 2 and "eval/token_accuracy" in r for r in read_metrics(tmp_path))


def test_sigkill_and_resume_is_bitwise_identical(tmp_path):
    total = 40
    ref = tmp_path / "uninterrupted"
    subprocess.run(main_cmd(ref, total_steps=total, every=5), env=_env(), check=True,
                   capture_output=True, cwd=REPO_ROOT)

    run = tmp_path / "killed"
    proc = subprocess.Popen(main_cmd(run, total_steps=total, every=5), env=_env(), cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if line.startswith("step") and int(line.split()[1].split("/")[0]) >= 12:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    saved = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and max(saved) < total  # really interrupted mid-run

    resumed = subprocess.run(main_cmd(run, total_steps=total, every=5), env=_env(),
                             capture_output=True, text=True, cwd=REPO_ROOT)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from checkpoint step {max(saved)}" in resumed.stdout
    step_a, params_a = restore_params(ref)
    step_b, params_b = restore_params(run)
    assert step_a == step_b == total
    assert_trees_equal(params_a, params_b)


def test_sigterm_saves_and_exits_cleanly(tmp_path):
    proc = subprocess.Popen(main_cmd(tmp_path, total_steps=400, every=1000), env=_env(),
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("step") and int(line.split()[1].split("/")[0]) >= 5:
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "preemption signal: saved checkpoint step" in out
    saved = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(saved) == 1 and 5 <= saved[0] < 400  # saved where it stopped, not at a schedule


def test_restore_across_device_counts(tmp_path):
    """1 device -> 8-device data-parallel mesh, and back, with equal values."""
    one = tmp_path / "one_device"
    config = tiny_config(total_steps=2)
    trainer = Trainer(config, str(one))
    trainer.train()
    trainer.close()
    _, saved_one = restore_params(one)
    np.savez(tmp_path / "one.npz", *jax.tree.leaves(saved_one))

    eight = tmp_path / "eight_devices"
    run_with_devices(f"""
        import jax, numpy as np
        from tests.test_trainer import tiny_config
        from mlx_research.train.trainer import Trainer
        assert jax.device_count() == 8
        t = Trainer(tiny_config(total_steps=2), {str(one)!r})
        state, _ = t.initial_state()
        assert int(state.step) == 2
        assert len(jax.tree.leaves(state.params)[0].sharding.device_set) == 8
        want = np.load({str(tmp_path / 'one.npz')!r})
        for i, leaf in enumerate(jax.tree.leaves(state.params)):
            np.testing.assert_array_equal(np.asarray(leaf), want[f"arr_{{i}}"])
        t.close()
        t = Trainer(tiny_config(total_steps=2), {str(eight)!r})
        t.train()
        t.close()
        print("ok")
    """)
    _, saved_eight = restore_params(eight)
    back = Trainer(tiny_config(total_steps=2), str(eight))
    state, _ = back.initial_state()
    back.close()
    assert_trees_equal(jax.tree.map(np.asarray, state.params), saved_eight)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_data_parallel_match_single_process(tmp_path):
    # SGD, not Adam: Adam rescales gradients that are pure rounding noise (e.g. the key bias,
    # which softmax ignores) to full-size steps, so its parameters cannot agree to a tolerance.
    sgd = ("--config.optim.name=sgd", "--config.optim.lr=0.5")
    single = tmp_path / "single"
    subprocess.run(main_cmd(single, *sgd, total_steps=4, every=4), env=_env(), check=True,
                   capture_output=True, cwd=REPO_ROOT)
    multi = tmp_path / "multi"
    port = _free_port()
    procs = [
        subprocess.Popen(
            main_cmd(multi, *sgd, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                     f"--process_id={i}", total_steps=4, every=4),
            env=_env(), cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert "workdir" in outs[0][0] and "workdir" not in outs[1][0]  # only process 0 reports
    _, params_single = restore_params(single)
    _, params_multi = restore_params(multi)
    assert_trees_equal(params_single, params_multi, rtol=1e-5)
    start = Trainer(tiny_config(), str(tmp_path / "fresh"))._init(jax.random.PRNGKey(0)).params
    moved = [np.abs(a - np.asarray(b)).max() for a, b in
             zip(jax.tree.leaves(params_single), jax.tree.leaves(start))]
    assert max(moved) > 1e-3  # the runs really trained


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    from mlx_research.train.config import default_config

    config = default_config("tests.poisoned_task")
    config.update(tiny_config(total_steps=10, log_every=1))
    config.task = "tests.poisoned_task"
    config.checkpoint.every_steps = 2
    # Find, independently of the trainer, an example that the seeded order puts in batch 5.
    from tests.poisoned_task import Task

    batches = make_train_iterator(Task(config, jnp.float32).train_source(),
                                  global_batch_size=config.batch_size, seed=config.seed)
    config.poison_index = int([next(batches) for _ in range(5)][-1]["index"][0])
    trainer = Trainer(config, str(tmp_path))
    with pytest.raises(NonFiniteLossError, match="at step 5;.*last good checkpoint: step 4"):
        trainer.train()
    trainer.close()
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [2, 4]
    _, params = restore_params(tmp_path, 4)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path, caplog):
    config = tiny_config(total_steps=4)
    config.checkpoint.every_steps = 2
    trainer = Trainer(config, str(tmp_path))
    trainer.train()
    trainer.close()
    for f in (tmp_path / "checkpoints" / "4" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    again = Trainer(config, str(tmp_path))
    state, data_state = again.initial_state()
    again.close()
    assert int(state.step) == 2 and data_state is not None
    assert "checkpoint step 4" in caplog.text and "corrupt or partial" in caplog.text


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--config.optim.lrr=1", "lrr"),
        ("--config.optim.lr=abc", "--config.optim.lr=abc"),
        ("--config.total_steps=1.5", "--config.total_steps=1.5"),
        ("--config.optim.schedule=poly", "'optim.schedule' must be one of cosine, step, constant"),
    ],
)
def test_bad_config_fails_with_one_line(tmp_path, flag, message):
    out = subprocess.run(main_cmd(tmp_path, flag), env=_env(), capture_output=True, text=True,
                         cwd=REPO_ROOT)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], out.stderr
    assert not (tmp_path / "checkpoints").exists()  # failed before any work


def test_validate_unknown_task():
    config = tiny_config()
    config.task = "no_such_task"
    with pytest.raises(config_lib.ConfigError, match="'task': unknown task 'no_such_task'"):
        config_lib.validate(config)


def test_validate_unknown_key_and_type():
    config = tiny_config()
    config.unlock()
    config.optim.learning_rate = 0.1
    with pytest.raises(config_lib.ConfigError, match="unknown key 'optim.learning_rate'"):
        config_lib.validate(config)
    config = tiny_config()
    config.unlock()
    del config["total_steps"]
    config.total_steps = "100"
    with pytest.raises(config_lib.ConfigError, match="'total_steps' must be int"):
        config_lib.validate(config)
