"""The training state: everything a step reads and writes, and everything a checkpoint holds."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
    """step: [] int32 optimizer steps taken; params; model_state: non-parameter collections
    (e.g. {"batch_stats": ...}); opt_state: optax state; rng: key for dropout etc., folded with the
    step; bad_step: [] int32, -1 while every loss so far was finite, else the first step whose loss or
    gradients were not (updates are skipped from then on, so the state stays the last good one)."""

    step: jax.Array
    params: Any
    model_state: Any
    opt_state: Any
    rng: jax.Array
    bad_step: jax.Array
