"""Tests for mlx_research.data.pipeline: determinism, resume, per-process slices, eval padding."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mlx_research.data.pipeline import make_eval_iterator, make_train_iterator, to_global_batch


def _source(n: int) -> list[dict[str, np.ndarray]]:
    return [{"id": np.int32(i), "x": np.full((2,), i, np.float32)} for i in range(n)]


def _take(iterator, k: int) -> list[np.ndarray]:
    return [next(iterator)["id"] for _ in range(k)]


def _ids(source_len: int, num_batches: int, **kwargs) -> list[np.ndarray]:
    iterator = make_train_iterator(_source(source_len), **kwargs)
    try:
        return _take(iterator, num_batches)
    finally:
        iterator.close()


def test_train_batches_are_stacked_dicts():
    iterator = make_train_iterator(_source(10), global_batch_size=4, seed=0, process_count=1,
                                   process_index=0)
    batch = next(iterator)
    iterator.close()
    assert set(batch) == {"id", "x"}
    assert batch["id"].shape == (4,) and batch["id"].dtype == np.int32
    assert batch["x"].shape == (4, 2)
    np.testing.assert_array_equal(batch["x"][:, 0], batch["id"].astype(np.float32))


def test_train_resume_from_state_matches_uninterrupted_run():
    kwargs = {"global_batch_size": 4, "seed": 3, "process_index": 0, "process_count": 1}
    iterator = make_train_iterator(_source(10), **kwargs)
    _take(iterator, 7)
    state = json.loads(json.dumps(iterator.get_state()))
    expected = _take(iterator, 5)
    iterator.close()

    resumed = make_train_iterator(_source(10), **kwargs)
    resumed.set_state(state)
    got = _take(resumed, 5)
    resumed.close()
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(e, g)


def test_train_epochs_are_permutations_reshuffled_per_epoch():
    batches = _ids(8, 6, global_batch_size=4, seed=0, process_index=0, process_count=1)
    epochs = [np.concatenate(batches[i : i + 2]) for i in (0, 2, 4)]
    for epoch in epochs:
        np.testing.assert_array_equal(np.sort(epoch), np.arange(8))
    assert not np.array_equal(epochs[0], epochs[1])
    assert not np.array_equal(epochs[1], epochs[2])
    assert not np.array_equal(epochs[0], np.arange(8))


def test_train_order_depends_only_on_seed():
    kwargs = {"global_batch_size": 4, "process_index": 0, "process_count": 1}
    a = np.concatenate(_ids(8, 4, seed=5, **kwargs))
    b = np.concatenate(_ids(8, 4, seed=5, **kwargs))
    c = np.concatenate(_ids(8, 4, seed=6, **kwargs))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_train_without_shuffle_repeats_source_order():
    batches = _ids(5, 3, global_batch_size=4, seed=0, shuffle=False, process_index=0,
                   process_count=1)
    np.testing.assert_array_equal(np.concatenate(batches), np.arange(12) % 5)


def test_process_slices_are_disjoint_and_form_the_global_batch():
    common = {"global_batch_size": 6, "seed": 1}
    full = _ids(12, 4, process_index=0, process_count=1, **common)
    part0 = _ids(12, 4, process_index=0, process_count=2, **common)
    part1 = _ids(12, 4, process_index=1, process_count=2, **common)
    for f, p0, p1 in zip(full, part0, part1):
        assert p0.shape == p1.shape == (3,)
        assert not set(p0.tolist()) & set(p1.tolist())
        np.testing.assert_array_equal(np.concatenate([p0, p1]), f)


def test_indivisible_global_batch_is_an_error():
    with pytest.raises(ValueError, match="global_batch_size"):
        make_train_iterator(_source(10), global_batch_size=5, seed=0, process_index=0,
                            process_count=2)
    with pytest.raises(ValueError, match="global_batch_size"):
        make_eval_iterator(_source(10), global_batch_size=3, process_index=1, process_count=2)


def test_eval_single_process_pads_last_batch():
    batches = list(make_eval_iterator(_source(10), global_batch_size=4, process_index=0,
                                      process_count=1))
    assert len(batches) == 3
    for batch in batches:
        assert batch["id"].shape == (4,) and batch["x"].shape == (4, 2)
        assert batch["valid"].dtype == np.bool_ and batch["valid"].shape == (4,)
    ids = np.concatenate([b["id"] for b in batches])
    valid = np.concatenate([b["valid"] for b in batches])
    np.testing.assert_array_equal(valid, np.arange(12) < 10)
    np.testing.assert_array_equal(ids[:10], np.arange(10))
    np.testing.assert_array_equal(ids[10:], 0)
    np.testing.assert_array_equal(batches[-1]["x"][2:], 0.0)
    index = np.concatenate([b["index"] for b in batches])
    np.testing.assert_array_equal(index, np.arange(12))  # padding rows carry index >= len


def test_eval_transform_is_applied_and_padding_has_its_shape():
    def widen(example):
        return {"id": example["id"], "x": np.concatenate([example["x"], example["x"] + 1])}

    batches = list(make_eval_iterator(_source(5), global_batch_size=4, transform=widen,
                                      process_index=0, process_count=1, num_workers=2))
    x = np.concatenate([b["x"] for b in batches])
    assert x.shape == (8, 4)
    np.testing.assert_array_equal(x[:5, 2], np.arange(5) + 1)
    np.testing.assert_array_equal(x[5:], 0.0)


def _noisy(example, rng):
    return {"id": example["id"], "x": example["x"] + rng.uniform(size=2).astype(np.float32)}


def test_random_transform_is_seeded_per_stream_position_and_resumes():
    kwargs = {"global_batch_size": 4, "seed": 5, "process_index": 0, "process_count": 1,
              "transform": _noisy}
    first = make_train_iterator(_source(6), **kwargs)
    batches = [next(first) for _ in range(6)]  # 24 examples: every id drawn 4 times
    first.close()
    noise = np.concatenate([b["x"] - b["id"][:, None] for b in batches])
    ids = np.concatenate([b["id"] for b in batches])
    assert np.all((noise >= 0) & (noise < 1))
    for i in range(6):  # a repeated example draws new numbers in every epoch
        assert len({tuple(row) for row in noise[ids == i]}) == 4
    resumed = make_train_iterator(_source(6), **kwargs)
    next(resumed), next(resumed)
    state = json.loads(json.dumps(resumed.get_state()))
    again = make_train_iterator(_source(6), **dict(kwargs, num_workers=2))
    again.set_state(state)
    for want in batches[2:]:
        got = next(again)
        np.testing.assert_array_equal(got["x"], want["x"])
    resumed.close(), again.close()


def test_eval_process_slices_cover_source_in_order():
    parts = [
        list(make_eval_iterator(_source(10), global_batch_size=4, process_index=p,
                                process_count=2))
        for p in (0, 1)
    ]
    assert len(parts[0]) == len(parts[1]) == 3
    expected_ids = [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [0, 0]]
    expected_valid = [True] * 5 + [False]
    rows = [(b["id"].tolist(), b["valid"].tolist()) for pair in zip(*parts) for b in pair]
    assert [r[0] for r in rows] == expected_ids
    assert [all(r[1]) for r in rows] == expected_valid
    assert not any(rows[-1][1])


def test_to_global_batch_single_device():
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    sharding = NamedSharding(mesh, P("data"))
    local = {"x": np.arange(8, dtype=np.float32).reshape(4, 2), "valid": np.ones(4, bool)}
    out = to_global_batch(local, sharding)
    assert out["x"].shape == (4, 2) and out["x"].sharding == sharding
    np.testing.assert_array_equal(np.asarray(out["x"]), local["x"])
    assert out["valid"].dtype == np.bool_


_MULTI_DEVICE_SCRIPT = textwrap.dedent(
    """
    import jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from mlx_research.data.pipeline import to_global_batch
    assert jax.device_count() == 4
    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P("data"))
    local = {"x": np.arange(16, dtype=np.int32).reshape(8, 2)}
    out = to_global_batch(local, sharding)["x"]
    assert out.shape == (8, 2) and out.sharding == sharding
    for shard in out.addressable_shards:
        rows = shard.index[0]
        assert shard.data.shape == (2, 2)
        np.testing.assert_array_equal(np.asarray(shard.data), local["x"][rows])
    print("ok")
    """
)


@pytest.mark.slow
def test_to_global_batch_shards_rows_over_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", _MULTI_DEVICE_SCRIPT], cwd=root, env=env,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
