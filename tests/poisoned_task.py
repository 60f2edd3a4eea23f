"""A seq2seq task whose loss is NaN on the batch holding one chosen training example."""

import jax.numpy as jnp
import numpy as np

from mlx_research.train.tasks import seq2seq


class PoisonedSource:
    """Adds "index" and "poison" (NaN for example `poison_index`, else 0) to every example."""

    def __init__(self, source, poison_index: int):
        self.source, self.poison_index = source, poison_index

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        poison = np.float32(np.nan if i == self.poison_index else 0.0)
        return dict(self.source[i], index=np.int32(i), poison=poison)


class Task(seq2seq.Task):
    @classmethod
    def default_config(cls):
        config = super().default_config()
        config.poison_index = -1
        return config

    def train_source(self):
        return PoisonedSource(super().train_source(), self.config.poison_index)

    def loss(self, params, model_state, batch, rng):
        (loss_sum, weight), aux = super().loss(params, model_state, batch, rng)
        return (loss_sum + jnp.sum(batch["poison"]), weight), aux
