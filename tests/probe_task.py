"""A seq2seq task instrumented for trainer tests.

- Its training metrics carry `dropout_code`: 20 Bernoulli(0.5) bits drawn from the rng the trainer
  hands to the loss (the dropout rng), packed into an integer (exact in float32).
- Its evaluator kind "indices" (a second default evaluator, `evals.indices`) over `num_examples`
  examples records which evaluation examples reach `update` and checks that every prediction
  arrives with its own example's index.

`get_config` makes this file a config file too: `--config=tests/probe_task.py[:presets]` is
experiments/seq2seq/reverse.py on this task.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mlx_research.evaluation.base import Evaluator
from mlx_research.train.config import default_config
from mlx_research.train.tasks import base, seq2seq


class ValueSource:
    """Example i is {"value": 10 * i}; `num_examples` of them."""

    def __init__(self, num_examples: int):
        self.num_examples = num_examples

    def __len__(self):
        return self.num_examples

    def __getitem__(self, i):
        return {"value": np.float32(10 * i)}


class IndexRecorder(Evaluator):
    """predict: 2 * value + 1 on the device; update checks it against the example's index."""

    def __init__(self, num_examples: int):
        self.source = ValueSource(num_examples)
        self.seen: list[int] = []
        self.mismatched = 0

    def predict(self, variables, batch):
        del variables
        return {"echo": 2 * batch["value"] + 1}

    def reset(self):
        self.seen, self.mismatched = [], 0

    def update(self, predictions, indices):
        self.seen.extend(int(i) for i in indices)
        self.mismatched += int(np.sum(predictions["echo"] != 20 * indices + 1))

    def result(self):
        seen = np.array(self.seen)
        return {"seen": len(seen), "distinct": len(set(self.seen)), "min": seen.min(),
                "max": seen.max(), "mismatched": self.mismatched}

    def images(self, predictions, batch):
        row = np.zeros((8, 8 * len(batch["value"]), 3), np.uint8)
        row[..., 1] = np.repeat((predictions["echo"] % 256).astype(np.uint8), 8)[None]
        return {"echo": row}


class Task(seq2seq.Task):
    """The seq2seq task (same config fields, one more evaluator), instrumented."""

    @staticmethod
    def default_config():
        config = seq2seq.Task.default_config()
        config.evals.indices = ml_collections.ConfigDict({"type": "indices"})
        return config

    @classmethod
    def evaluator_kinds(cls):
        indices = base.EvaluatorKind(
            defaults=dict(num_examples=512), ranges={"num_examples": (1, None)},
            build=lambda task, settings: IndexRecorder(settings.num_examples))
        return dict(super().evaluator_kinds(), indices=indices)

    def loss(self, params, model_state, batch, rng):
        (loss_sum, weight), (metrics, model_state) = super().loss(params, model_state, batch, rng)
        bits = jax.random.bernoulli(rng, 0.5, (20,)).astype(jnp.float32)
        code = jnp.sum(bits * 2.0 ** jnp.arange(20, dtype=jnp.float32))
        return (loss_sum, weight), (dict(metrics, dropout_code=code), model_state)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """experiments/seq2seq/reverse.py (`arg`: its presets) on this task."""
    from experiments.seq2seq.reverse import get_config as reverse_config

    config = default_config("tests.probe_task")
    config.update(reverse_config(arg))
    config.task = "tests.probe_task"
    return config
