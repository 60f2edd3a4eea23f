"""The evaluation loop of one evaluator: predictions on the devices, scores on the host.

`EvaluationLoop` jits the evaluator's `predict` once (so every evaluation of a run reuses one
compiled program) and, at each `run`:

    evaluator.reset()
    for batch in eval pipeline(source, transform):      # each example has "index" and "valid"
        predictions = jitted predict(variables, batch)   # dict of [B, ...] arrays
        # gathered from every process; process 0 keeps the rows with valid=True
        evaluator.update(predictions, indices)           # process 0 only
    scores = evaluator.result()                          # process 0 only; {metric: float}
    evaluator.write_outputs(directory, step)             # process 0 only

The caller decides when to run it and what to do with the scores and pictures (the trainer logs
them); model code traced by `predict` may need the caller's mesh context around `run`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Sharding

from mlx_research.data.pipeline import make_eval_iterator, to_global_batch
from mlx_research.evaluation.base import Evaluator


@dataclasses.dataclass
class Evaluation:
    """What one `EvaluationLoop.run` gives process 0 (empty on the other processes).

    Attributes:
      scores: {metric: value} of `Evaluator.result`.
      images: {name: [H, W, 3] uint8} pictures of the first batch (when asked for).
    """

    scores: dict[str, float]
    images: dict[str, np.ndarray]


class EvaluationLoop:
    """Runs `evaluator` over its split in global batches of `batch_size`.

    Args:
      evaluator: source, eval transform, `predict`, host-side scoring.
      variable_shardings: shardings of the model variables `predict` receives.
      batch_sharding: sharding of a global batch (rows over the data-parallel devices).
      batch_size: global evaluation batch (all processes); the last batch is padded with rows
        that carry `valid=False` and never reach `update`.
      num_workers: threads reading and transforming examples (0 = one prefetch thread).
    """

    def __init__(self, evaluator: Evaluator, *, variable_shardings: Any, batch_sharding: Sharding,
                 batch_size: int, num_workers: int):
        self.evaluator = evaluator
        self.predict = jax.jit(evaluator.predict, in_shardings=(variable_shardings, batch_sharding))
        self.batch_sharding, self.batch_size, self.num_workers = (
            batch_sharding, batch_size, num_workers)

    def run(self, variables: dict[str, Any], step: int, *, outputs_dir: str,
            pictures: bool = False) -> Evaluation:
        """Evaluates `variables` over the whole split.

        Every process predicts its rows of each batch; the predictions are gathered and process 0
        feeds the valid rows to the evaluator, scores them and writes the evaluator's files
        (`write_outputs(outputs_dir, step)`). With `pictures`, process 0 also draws the first
        batch (`Evaluator.images` of its own rows).
        """
        evaluator, primary = self.evaluator, jax.process_index() == 0
        evaluator.reset()
        images: dict[str, np.ndarray] = {}
        batches = make_eval_iterator(evaluator.source, global_batch_size=self.batch_size,
                                     transform=evaluator.transform, num_workers=self.num_workers)
        for i, local in enumerate(batches):
            batch = to_global_batch(local, self.batch_sharding)
            predictions = self.predict(variables, batch)
            predictions, index, valid = multihost_utils.process_allgather(
                (predictions, batch["index"], batch["valid"]), tiled=True
            )
            if not primary:
                continue
            evaluator.update({k: v[valid] for k, v in predictions.items()}, index[valid])
            if i == 0 and pictures:
                first = {k: v[: len(local["valid"])] for k, v in predictions.items()}
                images = evaluator.images(first, local)
        if not primary:
            return Evaluation(scores={}, images={})
        scores = evaluator.result()
        evaluator.write_outputs(outputs_dir, step)
        return Evaluation(scores=scores, images=images)
