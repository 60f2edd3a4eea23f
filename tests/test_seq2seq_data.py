"""Tests for mlx_research.data.seq2seq.SyntheticSeq2Seq."""

import numpy as np
import pytest

from mlx_research.data.seq2seq import BOS_ID, EOS_ID, PAD_ID, SyntheticSeq2Seq, relabel_symbols

_EXPECTED_OUTPUT = {
    "reverse": lambda s: s[::-1],
    "sort": lambda s: sorted(s),
    "copy": lambda s: list(s),
}


def test_special_token_ids():
    assert (PAD_ID, BOS_ID, EOS_ID) == (0, 1, 2)


@pytest.mark.parametrize("task", ["reverse", "sort", "copy"])
def test_examples_follow_task_and_layout(task):
    ds = SyntheticSeq2Seq(task, 40, vocab_size=9, min_len=2, max_len=6, seed=4)
    assert len(ds) == 40
    for i in range(len(ds)):
        ex = ds[i]
        inputs, targets = ex["inputs"], ex["targets"]
        assert inputs.dtype == np.int32 and inputs.shape == (6,)
        assert targets.dtype == np.int32 and targets.shape == (7,)
        symbols = inputs[inputs != PAD_ID].tolist()
        length = len(symbols)
        assert 2 <= length <= 6
        assert np.all(inputs[length:] == PAD_ID)
        assert all(3 <= s < 9 for s in symbols)
        expected = _EXPECTED_OUTPUT[task](symbols) + [EOS_ID] + [PAD_ID] * (6 - length)
        assert targets.tolist() == expected


def test_example_is_the_documented_draw():
    ds = SyntheticSeq2Seq("copy", 5, vocab_size=12, min_len=3, max_len=7, seed=9, split="eval")
    for i in range(5):
        rng = np.random.default_rng([9, 1, i])
        length = rng.integers(3, 8)
        symbols = rng.integers(3, 12, size=length)
        assert ds[i]["inputs"][:length].tolist() == symbols.tolist()


def test_lengths_cover_the_range():
    ds = SyntheticSeq2Seq("copy", 200, vocab_size=6, min_len=1, max_len=4)
    lengths = {int(np.sum(ds[i]["inputs"] != PAD_ID)) for i in range(len(ds))}
    assert lengths == {1, 2, 3, 4}


def test_example_depends_only_on_seed_split_index():
    a = SyntheticSeq2Seq("reverse", 10, seed=1)
    a_again = SyntheticSeq2Seq("reverse", 10, seed=1)
    b = SyntheticSeq2Seq("sort", 50, seed=1)
    for i in range(10):
        np.testing.assert_array_equal(a[i]["inputs"], b[i]["inputs"])
        np.testing.assert_array_equal(a[i]["targets"], a_again[i]["targets"])
    assert a[-1]["inputs"].tolist() == a[9]["inputs"].tolist()


def test_splits_and_seeds_differ():
    train = SyntheticSeq2Seq("copy", 20, seed=0, split="train")
    evals = SyntheticSeq2Seq("copy", 20, seed=0, split="eval")
    other = SyntheticSeq2Seq("copy", 20, seed=1, split="train")
    same_split = sum(np.array_equal(train[i]["inputs"], evals[i]["inputs"]) for i in range(20))
    same_seed = sum(np.array_equal(train[i]["inputs"], other[i]["inputs"]) for i in range(20))
    assert same_split == 0 and same_seed == 0


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"task": "shuffle"}, "task"),
        ({"split": "test"}, "split"),
        ({"vocab_size": 3}, "vocab_size"),
        ({"min_len": 5, "max_len": 4}, "min_len"),
        ({"min_len": 0}, "min_len"),
        ({"num_examples": -1}, "num_examples"),
    ],
)
def test_invalid_arguments_name_the_argument(kwargs, name):
    args = {"task": "copy", "num_examples": 4} | kwargs
    with pytest.raises(ValueError, match=name):
        SyntheticSeq2Seq(**args)


def test_out_of_range_index():
    ds = SyntheticSeq2Seq("copy", 3)
    with pytest.raises(IndexError):
        ds[3]
    with pytest.raises(IndexError):
        ds[-4]


@pytest.mark.parametrize("task", ["reverse", "sort", "copy"])
def test_relabel_symbols_gives_a_valid_example_of_the_same_length(task):
    ds = SyntheticSeq2Seq(task, 20, vocab_size=12, min_len=3, max_len=7, seed=1)
    changed = 0
    for i in range(len(ds)):
        ex = ds[i]
        new = relabel_symbols(ex, np.random.default_rng(i), task, 12)
        symbols = new["inputs"][new["inputs"] != PAD_ID].tolist()
        assert len(symbols) == int((ex["inputs"] != PAD_ID).sum())
        assert all(3 <= s < 12 for s in symbols)
        want = _EXPECTED_OUTPUT[task](symbols) + [EOS_ID]
        assert new["targets"][: len(want)].tolist() == want
        assert np.all(new["targets"][len(want):] == PAD_ID)
        # a renaming: equal symbols stay equal, different ones stay different
        old = ex["inputs"][ex["inputs"] != PAD_ID].tolist()
        assert [a == b for a in old for b in old] == [a == b for a in symbols for b in symbols]
        changed += symbols != old
    assert changed >= 18
