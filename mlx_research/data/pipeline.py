"""Grain input pipelines: checkpointable training iterators and padded eval passes.

A *source* is anything with ``__len__`` and ``__getitem__`` returning a dict of numpy arrays
(a grain ``RandomAccessDataSource`` or e.g. :class:`mlx_research.data.seq2seq.SyntheticSeq2Seq`).
Batches are dicts of numpy arrays stacked along a new leading axis of size
``global_batch_size // process_count``; each process reads only its own slice of every global
batch, and :func:`to_global_batch` assembles the slices into one sharded ``jax.Array``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import grain
import jax
import numpy as np

Batch = dict[str, np.ndarray]


class RandomAccessSource(Protocol):
    """What the pipelines read: random access to dict-of-array examples."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Mapping[str, Any]: ...


def _per_process_batch_size(
    global_batch_size: int, process_index: int | None, process_count: int | None
) -> tuple[int, int, int]:
    """Returns (local batch size, process index, process count), checked."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index={process_index} must lie in "
            f"[0, process_count={process_count})."
        )
    if global_batch_size < 1 or global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size={global_batch_size} must be a positive multiple of "
            f"process_count={process_count}."
        )
    return global_batch_size // process_count, process_index, process_count


def _read_options(prefetch: int) -> grain.ReadOptions:
    """One background thread reading up to ``prefetch`` batches ahead (0: synchronous)."""
    if prefetch < 0:
        raise ValueError(f"prefetch={prefetch} must be >= 0.")
    return grain.ReadOptions(num_threads=1 if prefetch else 0, prefetch_buffer_size=prefetch)


def make_train_iterator(
    source: RandomAccessSource,
    *,
    global_batch_size: int,
    seed: int,
    shuffle: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
    prefetch: int = 2,
) -> grain.DatasetIterator:
    """Builds an infinite, deterministic, checkpointable training iterator.

    The index stream is ``source`` shuffled with ``seed`` (reshuffled every epoch, deterministically)
    and repeated forever; it is cut into global batches of ``global_batch_size`` consecutive
    examples (a batch may straddle an epoch boundary), and process ``p`` of ``P`` takes rows
    ``[p * b, (p + 1) * b)`` of every global batch, ``b = global_batch_size // P``.

    Args:
      source: random-access source of dict examples; must not be empty.
      global_batch_size: examples per step over all processes; divisible by ``process_count``.
      seed: shuffle seed in ``[0, 2**32)``.
      shuffle: if False, epochs run in source order.
      process_index: this process; defaults to ``jax.process_index()``.
      process_count: number of processes; defaults to ``jax.process_count()``.
      prefetch: batches read ahead by a background thread (0 disables it).

    Returns:
      A grain iterator yielding ``dict[str, np.ndarray]`` with leading dim ``b``;
      ``get_state()`` is a JSON-serialisable dict and ``set_state(state)`` on a freshly built
      iterator with the same arguments resumes exactly where the saved one stood.
    """
    local_batch_size, process_index, process_count = _per_process_batch_size(
        global_batch_size, process_index, process_count
    )
    if len(source) == 0:
        raise ValueError("source is empty; a training iterator needs at least one example.")
    dataset = grain.MapDataset.source(source)
    if shuffle:
        dataset = dataset.shuffle(seed=seed)
    # Local batch j covers stream rows [j*b, (j+1)*b): global batch g is local batches
    # g*P .. g*P+P-1, so process p takes every P-th local batch starting at p.
    dataset = dataset.repeat(None).batch(local_batch_size)
    dataset = dataset.slice(slice(process_index, None, process_count))
    return iter(dataset.to_iter_dataset(_read_options(prefetch)))


def _with_valid(source: RandomAccessSource, size: int) -> Callable[[int], Batch]:
    """Returns index -> example with a "valid" flag; indices >= len(source) give zero padding."""
    padding = {k: np.zeros_like(v) for k, v in source[0].items()} if size else {}

    def example(index: int) -> Batch:
        if index < size:
            return {**source[index], "valid": np.array(True)}
        return {**padding, "valid": np.array(False)}

    return example


def make_eval_iterator(
    source: RandomAccessSource,
    *,
    global_batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.DatasetIterator:
    """Builds one in-order pass over ``source`` with a padded, static-shape last batch.

    Global batch ``g`` holds examples ``[g * B, (g + 1) * B)``; process ``p`` takes its rows
    ``[p * b, (p + 1) * b)`` of each. Rows past the end of ``source`` are zeros shaped like
    ``source[0]``. Every process yields the same number of batches, ``ceil(len(source) / B)``.

    Args:
      source: random-access source of dict examples (without a "valid" key).
      global_batch_size: ``B``, examples per step over all processes.
      process_index: this process; defaults to ``jax.process_index()``.
      process_count: number of processes; defaults to ``jax.process_count()``.

    Returns:
      A grain iterator of ``dict[str, np.ndarray]`` batches with leading dim
      ``b = B // process_count``, each with ``"valid": [b] bool`` (True for real examples).
    """
    local_batch_size, process_index, process_count = _per_process_batch_size(
        global_batch_size, process_index, process_count
    )
    size = len(source)
    num_batches = -(-size // global_batch_size)
    dataset = grain.MapDataset.range(num_batches * global_batch_size)
    dataset = dataset.map(_with_valid(source, size)).batch(local_batch_size)
    dataset = dataset.slice(slice(process_index, None, process_count))
    return iter(dataset.to_iter_dataset(_read_options(2)))


def to_global_batch(local_batch: Any, sharding: jax.sharding.Sharding) -> Any:
    """Assembles each process's local batch into globally sharded ``jax.Array`` leaves.

    Args:
      local_batch: pytree of ``[b, ...]`` numpy arrays, this process's rows.
      sharding: target sharding of the global batch, e.g. ``NamedSharding(mesh, P("data"))``.

    Returns:
      The same pytree with ``[b * process_count, ...]`` ``jax.Array`` leaves laid out by
      ``sharding``.
    """
    return jax.tree.map(
        lambda leaf: jax.make_array_from_process_local_data(sharding, leaf), local_batch
    )
