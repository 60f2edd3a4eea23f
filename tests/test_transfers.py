"""A train step with the on-device matcher makes no host-device transfer: with the state and the
batch on the device, it runs under ``jax.transfer_guard("disallow")`` (which does stop a step
handed a host batch)."""

import jax
import pytest

from mlx_research.data.pipeline import to_global_batch
from mlx_research.train.trainer import Trainer


def _detr():
    from tests.test_detr import tiny_config

    return tiny_config(**{"model.matcher": "device"})


def _nadm():
    from tests.test_nadm import tiny_config

    return tiny_config(**{"model.matcher": "device", "rng_impl": "hash32", "model.dropout": 0.1})


@pytest.mark.parametrize("make_config", [_detr, _nadm], ids=["detr", "nadm"])
@pytest.mark.slow
def test_device_matcher_step_makes_no_transfer(tmp_path, make_config):
    trainer = Trainer(make_config(), str(tmp_path))
    state = trainer.fresh_state()
    local = next(trainer.train_iterator())
    batch = to_global_batch(local, trainer.batch_sharding)
    with trainer.mesh_context():
        state, metrics = trainer.train_step(state, batch)  # compiles
        with jax.transfer_guard("disallow"):
            state, metrics = trainer.train_step(state, batch)
            jax.block_until_ready(metrics)
            with pytest.raises(Exception, match="[Dd]isallowed host-to-device transfer"):
                trainer.train_step(state, local)
    assert int(state.step) == 2 and int(state.bad_step) < 0  # both updates finite and applied
    trainer.close()
