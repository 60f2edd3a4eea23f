"""mlx_research.train.presets: the shared runlocal preset and the one preset parser of every
experiment file."""

import ml_collections
import pytest

from mlx_research.train.presets import apply_presets, runlocal


def _config():
    return ml_collections.ConfigDict(dict(
        total_steps=1000, log_every=50, checkpoint=dict(every_steps=500),
        data=dict(task="reverse", max_len=16, relabel_symbols=False),
        evals=dict(val=dict(every_steps=500, num_examples=500, batch_size=64),
                   test=dict(every_steps=1000, num_examples=200, batch_size=32))))


def test_runlocal_shortens_the_run_and_every_evaluator():
    config = _config()
    runlocal(6, num_examples=16, batch_size=8)(config)
    assert (config.total_steps, config.log_every, config.checkpoint.every_steps) == (6, 2, 6)
    for entry in config.evals.values():
        assert (entry.every_steps, entry.num_examples, entry.batch_size) == (6, 16, 8)


def test_runlocal_cadences():
    config = _config()
    runlocal(20, log_every=5, checkpoint_every=10, eval_every=4)(config)
    assert (config.total_steps, config.log_every, config.checkpoint.every_steps) == (20, 5, 10)
    assert [e.every_steps for e in config.evals.values()] == [4, 4]
    assert config.evals.val.num_examples == 500  # untouched without eval settings


def test_presets_apply_in_the_order_given():
    config = _config()
    presets = {"a": lambda c: c.update(total_steps=1), "b": lambda c: c.update(total_steps=2)}
    assert apply_presets(config, "b,a", presets, "x.py").total_steps == 1
    assert apply_presets(_config(), "a,b,", presets, "x.py").total_steps == 2
    assert apply_presets(_config(), None, presets, "x.py").total_steps == 1000


def test_unknown_presets_name_the_file_and_the_choices():
    with pytest.raises(ValueError, match=r"^x.py: unknown preset 'c' \(known: a\)"):
        apply_presets(_config(), "a,c", {"a": lambda c: None}, "/some/dir/x.py")
    with pytest.raises(ValueError, match=r"^coco.py: unknown preset 'quick' \(it has no presets\)"):
        apply_presets(_config(), "quick", {}, "coco.py")


def test_overrides_set_typed_fields_of_their_section():
    config = apply_presets(_config(), "task=sort,max_len=8", {}, "r.py", overrides="data")
    assert (config.data.task, config.data.max_len) == ("sort", 8)
    assert isinstance(config.data.max_len, int)
    with pytest.raises(ValueError, match=r"^r.py: unknown preset key 'size' \(data fields: "):
        apply_presets(_config(), "size=3", {}, "r.py", overrides="data")
    with pytest.raises(ValueError, match=r"unknown preset 'task=sort' \(it has no presets\)"):
        apply_presets(_config(), "task=sort", {}, "r.py")  # no override section given
