"""Checkpointer: integrity (checksums), corrupt checkpoints moved aside, `keep`, one-line errors."""

import json
import logging
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mlx_research.testing import REPO_ROOT
from mlx_research.train.checkpoint import (
    CheckpointCorrupt,
    CheckpointError,
    CheckpointMismatch,
    Checkpointer,
)
from mlx_research.train.state import TrainState

DEVICE = jax.sharding.SingleDeviceSharding(jax.devices()[0])


def make_state(value=1.0, kernel=(64, 32), extra=False):
    value = float(value)
    noise = jax.random.normal(jax.random.PRNGKey(0), kernel)  # incompressible: the largest file
    params = {"dense": {"kernel": noise * value,
                        "bias": jnp.arange(kernel[1], dtype=jnp.float32) * value}}
    if extra:
        params["head"] = jnp.zeros((2,))
    return TrainState(step=jnp.int32(value), params=params, model_state={},
                      opt_state=optax.adam(1e-3).init(params), rng=jax.random.PRNGKey(0),
                      bad_step=jnp.int32(-1))


def abstract(state):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=DEVICE), state)


def on_disk(ckpt):
    return sorted(int(p) for p in os.listdir(ckpt) if p.isdigit())


def moved(ckpt):
    corrupt = os.path.join(ckpt, "corrupt")
    return sorted(os.listdir(corrupt)) if os.path.isdir(corrupt) else []


def save_steps(ckpt, steps, keep=3, async_save=True):
    c = Checkpointer(ckpt, keep=keep, async_save=async_save)
    for s in steps:
        c.save(s, make_state(s), {"position": s})
    c.close()


def state_files(ckpt, step):
    """The files of a step's state item, largest (the array data) first."""
    root = os.path.join(ckpt, str(step), "state")
    files = [os.path.join(r, f) for r, _, fs in os.walk(root) for f in fs]
    return sorted(files, key=os.path.getsize, reverse=True)


def params_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def warnings_of(caplog):
    """Our warning lines, after checking that no record carries a traceback or spans several
    lines and that no other logger (orbax's through absl) warned."""
    for r in caplog.records:
        text = r.getMessage()
        assert r.exc_info is None and "Traceback" not in text and "\n" not in text, text[:500]
    ours = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert all(r.name == "mlx_research.train.checkpoint" for r in ours), [
        f"{r.name}: {r.getMessage()[:200]}" for r in ours]
    return [r.getMessage() for r in ours]


@pytest.mark.parametrize("async_save", [True, False])
@pytest.mark.slow
def test_keep_leaves_exactly_the_newest_steps_with_checksums(tmp_path, async_save):
    ckpt = str(tmp_path)
    save_steps(ckpt, range(1, 8), keep=3, async_save=async_save)
    assert on_disk(ckpt) == [5, 6, 7]
    for s in (5, 6, 7):
        sums = json.load(open(os.path.join(ckpt, str(s), "checksums.json")))
        assert any(k.startswith("state/") for k in sums) and "data/metadata" in sums
    c = Checkpointer(ckpt, keep=3)
    step, state, data = c.restore_latest(abstract(make_state()))
    c.close()
    assert step == 7 and data == {"position": 7} and params_equal(state, make_state(7))


def test_async_checksums_are_written_before_the_commit(tmp_path):
    """The post-finalization callback writes them, so a finished orbax save already has them."""
    c = Checkpointer(str(tmp_path), keep=3, async_save=True)
    c.save(1, make_state(), None)
    c.manager.wait_until_finished()
    assert os.path.exists(tmp_path / "1" / "checksums.json")
    c.close()


def test_stray_folders_are_moved_aside_and_never_count_toward_keep(tmp_path, caplog):
    ckpt = str(tmp_path)
    save_steps(ckpt, [1])
    os.makedirs(tmp_path / "2")  # empty
    os.makedirs(tmp_path / "9" / "data")  # no state item
    os.makedirs(tmp_path / "4" / "state")  # no commit marker
    caplog.set_level(logging.WARNING)
    c = Checkpointer(ckpt, keep=3)
    warnings = warnings_of(caplog)
    assert len(warnings) == 3 and all("corrupt or partial" in w for w in warnings)
    assert moved(ckpt) == ["2", "4", "9"] and c.steps() == [1]
    for s in range(2, 8):
        c.save(s, make_state(s), {"position": s})
    c.close()
    assert on_disk(ckpt) == [5, 6, 7]
    os.makedirs(tmp_path / "2")  # the same name again: suffixed, nothing overwritten
    Checkpointer(ckpt, keep=3).close()
    assert moved(ckpt) == ["2", "2.1", "4", "9"] and on_disk(ckpt) == [5, 6, 7]


@pytest.mark.parametrize("keep", [0, -1])
def test_keep_must_be_at_least_one(tmp_path, keep):
    save_steps(str(tmp_path), [1, 2])
    with pytest.raises(CheckpointError, match=f"keep={keep}: at least 1") as e:
        Checkpointer(str(tmp_path), keep=keep)
    assert "\n" not in str(e.value) and on_disk(str(tmp_path)) == [1, 2]


def test_corrupt_latest_is_moved_aside_and_its_step_written_again(tmp_path, caplog):
    ckpt = str(tmp_path)
    save_steps(ckpt, [2, 4])
    for f in state_files(ckpt, 4):
        with open(f, "wb") as out:
            out.write(b"garbage")
    caplog.set_level(logging.WARNING)
    c = Checkpointer(ckpt, keep=3)
    step, state, data = c.restore_latest(abstract(make_state()))
    assert step == 2 and data == {"position": 2} and params_equal(state, make_state(2))
    [warning] = warnings_of(caplog)
    assert "checkpoint step 4" in warning and "corrupt or partial" in warning
    assert f"moved to {ckpt}/corrupt/4" in warning
    assert c.steps() == [2] and moved(ckpt) == ["4"]
    with pytest.raises(CheckpointError, match=r"no checkpoint for step 4 .*available: \[2\]"):
        c.restore(4, abstract(make_state()))  # --mode=eval --step=4: one line, no KeyError
    c.save(4, make_state(40), {"position": 4})  # the retrained step is written again
    c.wait()
    assert c.steps() == [2, 4]
    state, data = c.restore(4, abstract(make_state()))
    assert params_equal(state, make_state(40)) and data == {"position": 4}
    for s in (6, 8):
        c.save(s, make_state(s), {"position": s})
    c.close()
    assert on_disk(ckpt) == [4, 6, 8] and moved(ckpt) == ["4"]  # the moved one is not counted


def test_same_length_overwrite_is_caught_by_the_checksums(tmp_path, caplog):
    ckpt = str(tmp_path)
    save_steps(ckpt, [2, 4])
    data_file = state_files(ckpt, 4)[0]
    with open(data_file, "r+b") as f:  # same length, different bytes in the middle
        f.seek(os.path.getsize(data_file) // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x55]))
    os.rename(os.path.join(ckpt, "4", "checksums.json"), tmp_path / "saved_checksums.json")
    c = Checkpointer(ckpt, keep=3)  # without checksums it restores, a different model:
    state, _ = c.restore(4, abstract(make_state()))
    assert not params_equal(state, make_state(4))
    os.rename(tmp_path / "saved_checksums.json", os.path.join(ckpt, "4", "checksums.json"))
    caplog.set_level(logging.WARNING)
    caplog.clear()
    step, state, _ = c.restore_latest(abstract(make_state()))
    c.close()
    assert step == 2 and params_equal(state, make_state(2))
    [warning] = warnings_of(caplog)
    rel = os.path.relpath(data_file, os.path.join(ckpt, "4"))
    assert f"checkpoint step 4 in {ckpt} is corrupt or partial (checksum mismatch in {rel})" in warning
    assert moved(ckpt) == ["4"]


def test_truncated_file_is_one_warning_line(tmp_path, caplog, capfd):
    ckpt = str(tmp_path)
    save_steps(ckpt, [2, 4])
    data_file = state_files(ckpt, 4)[0]
    os.truncate(data_file, os.path.getsize(data_file) // 2)
    caplog.set_level(logging.DEBUG)
    c = Checkpointer(ckpt, keep=3)
    step, _, _ = c.restore_latest(abstract(make_state()))
    c.close()
    assert step == 2
    [warning] = warnings_of(caplog)
    assert "checkpoint step 4" in warning and "checksum mismatch in state/" in warning
    assert "Traceback" not in capfd.readouterr().err


def test_explicit_restore_of_a_corrupt_step_raises_one_line(tmp_path):
    ckpt = str(tmp_path)
    save_steps(ckpt, [2, 4])
    os.remove(state_files(ckpt, 4)[0])
    c = Checkpointer(ckpt, keep=3)
    with pytest.raises(CheckpointCorrupt, match=r"checkpoint step 4 .*\(file state/.* missing\); "
                                                r"moved to .*/corrupt/4$") as e:
        c.restore(4, abstract(make_state()))
    c.close()
    assert "\n" not in str(e.value) and on_disk(ckpt) == [2] and moved(ckpt) == ["4"]


def test_all_corrupt_raises_one_line_and_keeps_them_aside(tmp_path, caplog, capfd):
    ckpt = str(tmp_path)
    save_steps(ckpt, [2, 4])
    for step in (2, 4):
        os.truncate(state_files(ckpt, step)[0], 3)
        os.truncate(os.path.join(ckpt, str(step), "_CHECKPOINT_METADATA"), 30)  # orbax's own file
    caplog.set_level(logging.WARNING)
    c = Checkpointer(ckpt, keep=3)
    with pytest.raises(CheckpointError) as e:
        c.restore_latest(abstract(make_state()))
    c.close()
    assert str(e.value) == (f"none of the checkpoints [2, 4] in {ckpt} could be restored; "
                            f"moved to {ckpt}/corrupt")
    assert len(warnings_of(caplog)) == 2 and moved(ckpt) == ["2", "4"] and on_disk(ckpt) == []
    assert "Traceback" not in capfd.readouterr().err


def test_unverified_checkpoint_restores_with_one_warning(tmp_path, caplog):
    """No checksums.json: killed between the commit and the checksums, or an older version."""
    ckpt = str(tmp_path)
    save_steps(ckpt, [2, 4])
    os.remove(os.path.join(ckpt, "4", "checksums.json"))
    caplog.set_level(logging.WARNING)
    c = Checkpointer(ckpt, keep=3)
    step, state, data = c.restore_latest(abstract(make_state()))
    c.close()
    assert step == 4 and data == {"position": 4} and params_equal(state, make_state(4))
    [warning] = warnings_of(caplog)
    assert "checkpoint step 4" in warning and "unverified" in warning
    assert on_disk(ckpt) == [2, 4] and moved(ckpt) == []


def test_unverified_corrupt_checkpoint_is_moved_aside_quietly(tmp_path, caplog, capfd):
    ckpt = str(tmp_path)
    save_steps(ckpt, [2, 4])
    os.remove(os.path.join(ckpt, "4", "checksums.json"))
    for f in state_files(ckpt, 4):
        with open(f, "wb") as out:
            out.write(b"garbage")
    caplog.set_level(logging.WARNING)
    c = Checkpointer(ckpt, keep=3)
    step, _, _ = c.restore_latest(abstract(make_state()))
    c.close()
    assert step == 2 and moved(ckpt) == ["4"]
    unverified, corrupt = warnings_of(caplog)
    assert "unverified" in unverified and "checkpoint step 4" in corrupt
    assert "corrupt or partial" in corrupt and "Traceback" not in capfd.readouterr().err


def test_structure_mismatch_names_the_path_and_leaves_checkpoints_alone(tmp_path):
    ckpt = str(tmp_path)
    save_steps(ckpt, [2, 4])
    c = Checkpointer(ckpt, keep=3)
    wider = abstract(make_state(kernel=(64, 33)))
    assert c.mismatch(4, abstract(make_state())) is None
    assert c.mismatch(4, wider) == (
        "params/dense/bias: checkpoint (32,) float32, model (33,) float32")
    with pytest.raises(CheckpointMismatch, match=r"checkpoint step 4 in .* does not fit the model "
                                                 r"\(params/dense/bias: checkpoint \(32,\)"):
        c.restore_latest(wider)
    assert c.mismatch(4, abstract(make_state(extra=True))).startswith(
        "params/head is in the model but not in the checkpoint")
    bf16 = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.bfloat16, sharding=DEVICE)
                        if x.dtype == jnp.float32 else x, abstract(make_state()))
    with pytest.raises(CheckpointMismatch, match="float32, model .* bfloat16"):
        c.restore(2, bf16)
    c.close()
    assert on_disk(ckpt) == [2, 4] and moved(ckpt) == []


def test_verified_checkpoint_that_fails_to_restore_is_not_moved(tmp_path, monkeypatch):
    """Files as written (checksums match) but the restore fails (memory, devices): not corrupt."""
    ckpt = str(tmp_path)
    save_steps(ckpt, [2, 4])
    c = Checkpointer(ckpt, keep=3)

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory\nallocating 4 bytes")

    monkeypatch.setattr(c.manager, "restore", out_of_memory)
    with pytest.raises(CheckpointError, match=r"checkpoint step 4 .* matches its checksums but "
                                              r"could not be restored \(RuntimeError: "
                                              r"RESOURCE_EXHAUSTED: Out of memory allocating 4 "
                                              r"bytes\); left in place$"):
        c.restore_latest(abstract(make_state()))
    monkeypatch.undo()
    c.close()
    assert on_disk(ckpt) == [2, 4] and moved(ckpt) == []


_WRITE_FAILURE = textwrap.dedent("""
    import resource, sys
    import jax.numpy as jnp
    from mlx_research.train.checkpoint import Checkpointer, CheckpointError
    directory, async_save = sys.argv[1], sys.argv[2] == "1"
    c = Checkpointer(directory, keep=3, async_save=async_save)
    c.save(4, {"w": jnp.zeros(10)}, {"position": 4})
    c.wait()
    big = {"w": jnp.arange(1_000_000, dtype=jnp.float32)}
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, hard))
    try:
        c.save(8, big, {"position": 8})
        c.wait()
        print("no error")
    except CheckpointError as e:
        print("error:", e)
    print("steps", c.steps())
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    c.save(8, big, {"position": 8})  # space again: the step is written
    c.close()
    print("steps", c.steps())
""")


@pytest.mark.parametrize("async_save", [True, False])
@pytest.mark.slow
def test_write_failure_is_one_checkpoint_error_line(tmp_path, async_save):
    ckpt = str(tmp_path / "checkpoints")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # no cache writes under the file-size limit
    out = subprocess.run([sys.executable, "-c", _WRITE_FAILURE, ckpt, str(int(async_save))],
                         env=env, capture_output=True, text=True, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines() == [
        f"error: writing checkpoint step 8 in {ckpt} failed: [Errno 27] File too large",
        "steps [4]",
        "steps [4, 8]",
    ], out.stdout + out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
