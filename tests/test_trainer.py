"""End-to-end tests of the generic trainer on a tiny seq2seq config."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from mlx_research.data.pipeline import make_eval_iterator, make_train_iterator, to_global_batch
from mlx_research.errors import ConfigError
from mlx_research.prng import step_key
from mlx_research.testing import REPO_ROOT, run_with_devices
from mlx_research.train import config as config_lib
from mlx_research.train.init_from import save_variables
from mlx_research.train.metrics import read_metrics
from mlx_research.train.step import loss_and_grads
from mlx_research.train.trainer import NonFiniteLossError, Trainer
from mlx_research.tree import flatten
from tests.numeric import reordered_sum_rtol

EXPERIMENT = "experiments/seq2seq/reverse.py"
PROBE_CONFIG = "tests/probe_task.py"  # EXPERIMENT on tests.probe_task (a second evaluator)
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
    "--config.evals.decode.num_examples=16",
    "--config.evals.decode.batch_size=8",
    "--config.evals.decode.every_steps=0",
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


def main_cmd(workdir, *flags, total_steps=12, every=4, config=EXPERIMENT):
    return [
        sys.executable, "-m", "mlx_research.main", f"--config={config}",
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


@pytest.mark.slow
def test_trainer_learns_evaluates_checkpoints_and_compiles_once(tmp_path):
    config = tiny_config(total_steps=300, batch_size=32, log_every=100, write_images=True)
    config.model.update(d_model=32, dim_feedforward=64, dropout=0.0)
    config.data.update(task="copy", vocab_size=8, min_len=2, max_len=4)
    config.optim.update(lr=3e-3, warmup_steps=10)
    config.evals.decode.update(every_steps=150, num_examples=64, batch_size=32)
    config.checkpoint.every_steps = 150
    trainer = Trainer(config, str(tmp_path))
    state = trainer.train()
    trainer.close()
    assert int(state.step) == 300
    assert trainer.train_step._cache_size() == 1  # compiled once, no retrace after step 1
    assert trainer.evals["decode"].predict._cache_size() == 1  # compiled once for both evals
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [150, 300]
    rows = read_metrics(tmp_path)
    train_rows = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in train_rows] == [100, 200, 300]
    assert all(r["train/lr"] > 0 for r in train_rows)
    evals = [r for r in rows if "eval/decode/token_accuracy" in r]
    assert [r["step"] for r in evals] == [150, 300]
    # Learned: chance is 1/5 per symbol; greedy decoding copies the held-out strings.
    assert evals[-1]["eval/decode/token_accuracy"] >= 0.95, evals
    assert evals[-1]["eval/decode/sequence_accuracy"] >= 0.9, evals
    assert sorted(p.name for p in (tmp_path / "images").glob("decode_predictions_*.png")) == [
        "decode_predictions_00000150.png", "decode_predictions_00000300.png"]
    assert json.loads((tmp_path / "config.json").read_text())["task"] == "seq2seq"
    # A second run in the same workdir resumes at the end and does nothing more.
    again = Trainer(config, str(tmp_path))
    assert int(again.initial_state()[0].step) == 300
    again.close()


def test_evaluators_run_at_their_own_steps_with_their_own_settings(tmp_path):
    """The default "decode" entry (greedy, 16 examples, every 2 steps) and an added entry of the
    same kind, "beam" (beam search 2, 8 examples, every 3 steps): each built from its own
    settings, run at its own steps and at the end, scored under its own name."""
    from mlx_research.data import seq2seq as data
    from mlx_research.models.decoding import search
    from mlx_research.models.seq2seq import make_step

    config = tiny_config(total_steps=7, **{"evals.decode.every_steps": 2})
    config.evals.beam = ml_collections.ConfigDict(
        dict(type="decode", every_steps=3, beam_size=2, num_examples=8, batch_size=8))
    trainer = Trainer(config, str(tmp_path))
    trainer.train()
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows if "eval/decode/token_accuracy" in r] == [2, 4, 6, 7]
    assert [r["step"] for r in rows if "eval/beam/token_accuracy" in r] == [3, 6, 7]
    assert all(loop.predict._cache_size() == 1 for loop in trainer.evals.values())
    assert [len(trainer.evals[name].evaluator.source) for name in ("decode", "beam")] == [16, 8]
    # "beam" predicts from beam search 2 (which differs from greedy decoding on this batch).
    loop = trainer.evals["beam"]
    batch = next(make_eval_iterator(loop.evaluator.source, global_batch_size=8))
    variables = {"params": trainer.fresh_state(0).params}
    with trainer.mesh_context():
        predicted = loop.predict(variables, to_global_batch(batch, trainer.batch_sharding))
        correct = {}
        max_len = batch["inputs"].shape[1] + 1
        for beam_size in (1, 2):
            step, cache = make_step(trainer.task.model, variables, jnp.asarray(batch["inputs"]),
                                    max_len)
            tokens = search(step, cache, beam_size, batch_size=len(batch["inputs"]),
                            max_len=max_len, bos_id=data.BOS_ID, eos_id=data.EOS_ID,
                            pad_id=data.PAD_ID, length_penalty=1.0)
            real = batch["targets"] != data.PAD_ID
            correct[beam_size] = (np.asarray(tokens) == batch["targets"]) & real
    trainer.close()
    assert np.any(correct[1] != correct[2])
    np.testing.assert_array_equal(np.asarray(predicted["correct"]), correct[2])


def _variable_length_batch(trainer, size=8):
    batch = next(make_train_iterator(trainer.train_source, global_batch_size=size, seed=3))
    lengths = (batch["targets"] != 0).sum(1)
    assert len(set(lengths.tolist())) > 2  # really variable-length
    return jax.tree.map(jnp.asarray, batch)


def _full_batch_token_mean_grad(trainer, params, batch):
    """Reference: d/dparams of (sum of token cross-entropies) / (number of tokens), whole batch."""
    from mlx_research.data.seq2seq import BOS_ID
    from mlx_research.models.decoding import shift_right

    def loss(params):
        logits = trainer.task.model.apply(
            {"params": params}, batch["inputs"], shift_right(batch["targets"], BOS_ID), train=False)
        real = batch["targets"] != 0
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
        return jnp.sum(jnp.where(real, nll, 0.0)) / jnp.sum(real)

    return jax.value_and_grad(loss)(params)


@pytest.mark.parametrize("accum", [2, 4])
@pytest.mark.slow
def test_gradient_accumulation_equals_full_batch_gradient(tmp_path, accum):
    config = tiny_config(total_steps=1, grad_accum_steps=accum, batch_size=8)
    config.data.update(task="copy", min_len=1, max_len=6)
    config.optim.update(name="sgd", lr=1.0, momentum=0.0, schedule="constant", grad_clip_norm=0.0,
                        weight_decay=0.0)
    trainer = Trainer(config, str(tmp_path))
    batch = _variable_length_batch(trainer)
    state = trainer.fresh_state(0)
    params = jax.tree.map(np.array, state.params)  # copies: the train step donates `state`
    want_loss, want = _full_batch_token_mean_grad(trainer, params, batch)
    loss, grads, _, _ = jax.jit(loss_and_grads, static_argnums=(0, 5))(
        trainer.task, params, {}, batch, jax.random.PRNGKey(0), accum)
    np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-6)
    scale = max(np.abs(g).max() for g in jax.tree.leaves(want))
    err = max(np.abs(np.asarray(a) - b).max() for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want)))
    assert err / scale < 1e-6, err / scale
    # Through the jitted train step: SGD(lr=1) moves the parameters by exactly that gradient.
    with trainer.mesh_context():
        new_state, metrics = trainer.train_step(state, batch)
    np.testing.assert_allclose(float(metrics["loss"]), float(want_loss), rtol=1e-6)
    moved = jax.tree.map(lambda a, b: a - np.asarray(b), params, new_state.params)
    err = max(np.abs(m - g).max() for m, g in zip(jax.tree.leaves(moved), jax.tree.leaves(want)))
    assert err / scale < 1e-4, err / scale  # float32 rounding of p - (p - g)
    trainer.close()


@pytest.mark.parametrize("rng_impl", ["threefry2x32", "hash32"])
@pytest.mark.slow
def test_dropout_rng_differs_per_step_and_replays_on_resume(tmp_path, rng_impl):
    def codes(workdir, total_steps):
        config = tiny_config(total_steps=total_steps, log_every=1, rng_impl=rng_impl)
        config = _as_task(config, "tests.probe_task")
        config.checkpoint.every_steps = 3
        trainer = Trainer(config, str(workdir))
        trainer.train()
        trainer.close()
        return {r["step"]: r["train/dropout_code"] for r in read_metrics(workdir)
                if "train/dropout_code" in r}

    straight = codes(tmp_path / "straight", 6)
    assert len(set(straight.values())) == 6  # a new mask at every step
    codes(tmp_path / "resumed", 3)
    resumed = codes(tmp_path / "resumed", 6)  # resumes from the step-3 checkpoint
    assert {s: resumed[s] for s in (4, 5, 6)} == {s: straight[s] for s in (4, 5, 6)}
    # the bits are the configured generator's (the probe draws them in the loss)
    key = step_key(jax.random.fold_in(jax.random.split(jax.random.PRNGKey(0))[1], 0), rng_impl)
    bits = np.asarray(jax.random.bernoulli(key, 0.5, (20,)), np.float64)
    assert straight[1] == float(np.sum(bits * 2.0 ** np.arange(20)))


def _as_task(config, task):
    from mlx_research.train.config import default_config

    full = default_config(task)
    full.update(config)
    full.task = task
    return full


def _index_scores(scores, n):
    return {k.split("/", 1)[1]: v for k, v in scores.items() if k.startswith("indices/")} == {
        "seen": n, "distinct": n, "min": 0, "max": n - 1, "mismatched": 0}


@pytest.mark.slow
def test_evaluator_sees_every_example_once(tmp_path):
    config = _as_task(tiny_config(), "tests.probe_task")
    config.evals.indices.update(batch_size=4, num_examples=13)  # 4 batches, the last 3 rows padded
    trainer = Trainer(config, str(tmp_path))
    scores = trainer.evaluate(trainer.fresh_state(), ["indices"])
    trainer.close()
    assert _index_scores(scores, 13), scores
    out = run_with_devices("""
        from tests.test_trainer import tiny_config, _as_task, _index_scores
        from mlx_research.train.trainer import Trainer
        import tempfile
        config = _as_task(tiny_config(), "tests.probe_task")
        config.evals.indices.update(batch_size=8, num_examples=21)  # 3 batches over 8 devices
        trainer = Trainer(config, tempfile.mkdtemp())
        scores = trainer.evaluate(trainer.fresh_state(), ["indices"])
        assert _index_scores(scores, 21), scores
        print("ok")
    """)
    assert out.strip().endswith("ok")


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_parameters(tmp_path):
    config = tiny_config(total_steps=2, compute_dtype="bfloat16")
    trainer = Trainer(config, str(tmp_path))
    state = trainer.train()
    trainer.close()
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype("float32")}
    assert trainer.task.model.dtype == jnp.bfloat16
    assert [r for r in read_metrics(tmp_path) if "train/loss" in r]


@pytest.mark.slow
def test_train_step_keeps_the_transformer_gradient_barriers_on_cpu(tmp_path):
    """`nn.barrier`: two barriers per residual (branch and sum), two residuals per encoder layer
    and three per decoder layer; XLA CPU drops them before fusion without the trainer's
    compiler options. Kept or dropped, the steps agree bit for bit."""
    config = tiny_config(total_steps=2)
    trainer = Trainer(config, str(tmp_path))
    batch = to_global_batch(next(trainer.train_iterator()), trainer.batch_sharding)
    with trainer.mesh_context():
        lowered = trainer.train_step.lower(trainer.fresh_state(), batch)
        kept, dropped = lowered.compile(), lowered.compile({"xla_disable_hlo_passes": ""})
        states = [step(trainer.fresh_state(), batch)[0] for step in (kept, dropped)]
    trainer.close()
    m = config.model
    residuals = 2 * m.num_encoder_layers + 3 * m.num_decoder_layers
    assert kept.as_text().count(" opt-barrier(") >= 2 * residuals
    assert " opt-barrier(" not in dropped.as_text()
    assert_trees_equal(states[0].params, states[1].params)


@pytest.mark.slow
def test_eval_mode_restores_a_chosen_step(tmp_path):
    cache = tmp_path / "xla_cache"  # main.py turns on the persistent compilation cache
    workdir = tmp_path / "run"
    subprocess.run(main_cmd(workdir, total_steps=4, every=2),
                   env=dict(_env(), MLX_COMPILATION_CACHE=str(cache),
                            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0"),
                   check=True, capture_output=True, cwd=REPO_ROOT)
    assert cache.is_dir() and any(cache.iterdir())
    out = subprocess.run(
        main_cmd(workdir, "--mode=eval", "--step=2", "--eval=decode", total_steps=4, every=2),
        env=_env(), capture_output=True, text=True, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr
    assert "eval at step 2: decode/token_accuracy" in out.stdout
    assert any(r["step"] == 2 and "eval/decode/token_accuracy" in r for r in read_metrics(workdir))
    out = subprocess.run(main_cmd(workdir, "--mode=eval", "--eval=nosuch", total_steps=4, every=2),
                         env=_env(), capture_output=True, text=True, cwd=REPO_ROOT)
    assert out.returncode == 1
    assert out.stderr.strip() == (
        "error: --eval=nosuch: the config's evaluators (config.evals) are decode")


@pytest.mark.slow
def test_sigkill_and_resume_with_random_transform_is_bitwise_identical(tmp_path):
    total, augment = 40, "--config.data.relabel_symbols=True"
    ref = tmp_path / "uninterrupted"
    subprocess.run(main_cmd(ref, augment, total_steps=total, every=5), env=_env(), check=True,
                   capture_output=True, cwd=REPO_ROOT)

    run = tmp_path / "killed"
    proc = subprocess.Popen(main_cmd(run, augment, total_steps=total, every=5), env=_env(),
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    for line in proc.stdout:
        if line.startswith("step") and int(line.split()[1].split("/")[0]) >= 12:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    saved = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and max(saved) < total  # really interrupted mid-run

    resumed = subprocess.run(main_cmd(run, augment, total_steps=total, every=5), env=_env(),
                             capture_output=True, text=True, cwd=REPO_ROOT)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from checkpoint step {max(saved)}" in resumed.stdout
    step_a, params_a = restore_params(ref)
    step_b, params_b = restore_params(run)
    assert step_a == step_b == total
    assert_trees_equal(params_a, params_b)
    plain = tmp_path / "no_transform"  # the transform really changed the training
    subprocess.run(main_cmd(plain, total_steps=total, every=total), env=_env(), check=True,
                   capture_output=True, cwd=REPO_ROOT)
    assert any(np.any(a != b) for a, b in zip(jax.tree.leaves(params_a),
                                               jax.tree.leaves(restore_params(plain)[1])))


@pytest.mark.slow
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


STAND_IN_SRUN = """#!/usr/bin/env bash
# Stand-in for srun: two local tasks of one job, with the variables SLURM sets for them.
set -u
pids=()
for i in 0 1; do
  SLURM_JOB_ID={job_id} SLURM_NTASKS=2 SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_NODEID=0 \\
  SLURM_STEP_NODELIST=localhost SLURM_STEP_NUM_NODES=1 "$@" > "{logs}/task$i.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${{pids[@]}}"; do wait "$pid" || status=1; done
exit $status
"""


def _slurm_job_id():
    """A job id whose derived coordinator port (jax: 61440 + id % 4096) is free now."""
    for job_id in np.random.default_rng().permutation(4096):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", 61440 + int(job_id)))
            except OSError:
                continue
            return int(job_id)
    raise RuntimeError("no free port in jax's SLURM coordinator range")


@pytest.mark.slow
def test_slurm_launch_two_processes_train_evaluate_and_match_one_process(tmp_path):
    # SGD, not Adam: Adam rescales gradients that are pure rounding noise (e.g. the key bias,
    # which softmax ignores) to full-size steps, so its parameters cannot agree to a tolerance.
    flags = ("--config.optim.name=sgd", "--config.optim.lr=0.5",
             "--config.evals.indices.num_examples=13", "--config.evals.indices.batch_size=4",
             "--config.write_images=True", "--config.evals.decode.every_steps=2",
             "--config.evals.indices.every_steps=2")
    single = tmp_path / "single"
    subprocess.run(main_cmd(single, *flags, total_steps=4, every=4, config=PROBE_CONFIG),
                   env=_env(), check=True, capture_output=True, cwd=REPO_ROOT)

    bin_dir, logs, multi = tmp_path / "bin", tmp_path / "logs", tmp_path / "multi"
    bin_dir.mkdir(), logs.mkdir()
    srun = bin_dir / "srun"
    srun.write_text(STAND_IN_SRUN.format(job_id=_slurm_job_id(), logs=logs))
    srun.chmod(0o755)
    env = dict(_env(), PATH=f"{bin_dir}:{os.environ['PATH']}", MLX_PYTHON=sys.executable)
    cmd = ["./launch.sh", PROBE_CONFIG, f"--workdir={multi}", "--slurm", *TINY, *flags,
           "--config.total_steps=4", "--config.checkpoint.every_steps=4", "--config.log_every=1"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO_ROOT)
    task_logs = [(logs / f"task{i}.log").read_text() for i in range(2)]
    assert out.returncode == 0, out.stderr[-2000:] + "\n".join(t[-3000:] for t in task_logs)
    assert "workdir" in task_logs[0] and "workdir" not in task_logs[1]  # only process 0 reports
    assert "eval at step 4: decode/token_accuracy" in task_logs[0]
    # Evaluation over two processes: every example exactly once, with its own prediction.
    evals = [r for r in read_metrics(multi) if "eval/indices/seen" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert all(_index_scores({k[5:]: v for k, v in r.items() if k.startswith("eval/")}, 13)
               for r in evals), evals
    assert sorted(p.name for p in (multi / "images").glob("*_00000004.png")) == [
        "decode_predictions_00000004.png", "indices_echo_00000004.png"]
    _, params_single = restore_params(single)
    step, params_multi = restore_params(multi)
    assert step == 4
    # Two processes sum the batch's 8 x 7 target tokens in another order than one: float32
    # rounding allows about eps * sqrt(56) (tests/numeric.py).
    assert_trees_equal(params_single, params_multi, rtol=reordered_sum_rtol(8 * 7))
    start = Trainer(tiny_config(), str(tmp_path / "fresh")).fresh_state(0).params
    moved = [np.abs(a - np.asarray(b)).max() for a, b in
             zip(jax.tree.leaves(params_single), jax.tree.leaves(start))]
    assert max(moved) > 1e-3  # the runs really trained


@pytest.mark.slow
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


@pytest.mark.slow
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
        ("--config.optim.frozen=('^nosuch/',)", "optim.frozen"),
        ("--config.init_from.path=/no/such.npz", "'init_from.path': /no/such.npz does not exist"),
        ("--config.evals.decode.type=nosuch",
         "'evals.decode.type' must be one of decode (the evaluator kinds of task 'seq2seq'); "
         "got 'nosuch'"),
        ("--config.evals.decode.beam_size=0", "'evals.decode.beam_size' must be >= 1, got 0"),
    ],
)
@pytest.mark.slow
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
    with pytest.raises(ConfigError, match="'task': unknown task 'no_such_task'"):
        config_lib.validate(config)


def test_validate_unknown_key_and_type():
    config = tiny_config()
    config.unlock()
    config.optim.learning_rate = 0.1
    with pytest.raises(ConfigError, match="unknown key 'optim.learning_rate'"):
        config_lib.validate(config)
    config = tiny_config()
    config.unlock()
    del config["total_steps"]
    config.total_steps = "100"
    with pytest.raises(ConfigError, match="'total_steps' must be int"):
        config_lib.validate(config)


@pytest.mark.slow
def test_init_from_round_trips_and_names_a_mis_shaped_key(tmp_path):
    source = tmp_path / "source"
    trainer = Trainer(tiny_config(total_steps=2), str(source))
    trainer.train()
    trainer.close()
    _, trained = restore_params(source)

    def fresh_params(path="", prefix="", workdir="run"):
        config = tiny_config()
        config.init_from.update(path=str(path), prefix=prefix)
        trainer = Trainer(config, str(tmp_path / workdir))
        try:
            return jax.tree.map(np.asarray, trainer.fresh_state().params)
        finally:
            trainer.close()

    assert_trees_equal(fresh_params(source), trained)  # another run's workdir (Orbax)
    save_variables(str(tmp_path / "encoder.npz"), {"params": trained["encoder"]})
    seeded = fresh_params()
    loaded = fresh_params(tmp_path / "encoder.npz", prefix="encoder")
    assert_trees_equal(loaded["encoder"], trained["encoder"])  # placed under the prefix
    assert_trees_equal(loaded["decoder"], seeded["decoder"])  # the rest from the seed
    assert any(np.any(a != b) for a, b in zip(jax.tree.leaves(trained["encoder"]),
                                               jax.tree.leaves(seeded["encoder"])))
    flat = flatten({"params": trained["encoder"]})
    key = sorted(flat)[0]
    flat[key] = flat[key][..., :-1]
    np.savez(tmp_path / "bad.npz", **flat)
    with pytest.raises(ConfigError, match=re.escape(key)):
        fresh_params(tmp_path / "bad.npz", prefix="encoder")


@pytest.mark.slow
def test_frozen_group_is_bitwise_unchanged_and_group_lrs_are_logged(tmp_path):
    config = tiny_config(total_steps=3, log_every=1)
    config.optim.frozen = ("^encoder/",)
    config.optim.lr_multipliers = (("^decoder/", 0.5),)
    trainer = Trainer(config, str(tmp_path))
    start = jax.tree.map(np.asarray, trainer.fresh_state().params)
    state = trainer.train()
    trainer.close()
    end = jax.tree.map(np.asarray, state.params)
    assert_trees_equal(end["encoder"], start["encoder"])
    assert all(np.any(a != b) for a, b in zip(jax.tree.leaves(end["decoder"]),
                                               jax.tree.leaves(start["decoder"])))
    rows = [r for r in read_metrics(tmp_path) if "train/lr" in r]
    group = [k for k in rows[0] if k.startswith("train/lr/")]
    assert len(group) == 1 and len(rows) == 3
    for r in rows:
        np.testing.assert_allclose(r[group[0]], 0.5 * r["train/lr"], rtol=1e-6)
