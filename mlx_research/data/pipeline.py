"""Grain input pipelines: checkpointable training iterators and padded eval passes.

A *source* is anything with ``__len__`` and ``__getitem__`` returning a dict of numpy arrays
(a grain ``RandomAccessDataSource`` or e.g. :class:`mlx_research.data.seq2seq.SyntheticSeq2Seq`).
Examples pass through a transform stage (augmentation for training, resizing for evaluation)
before batching. Batches are dicts of numpy arrays stacked along a new leading axis of size
``global_batch_size // process_count``; each process reads only its own slice of every global
batch, and :func:`to_global_batch` assembles the slices into one sharded ``jax.Array``.
"""

from __future__ import annotations

import functools
import operator
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


def checked_index(index: int, size: int) -> int:
    """``index`` into a source of ``size`` examples, negative counting from the end (like a
    list); IndexError when out of range."""
    index = operator.index(index)
    if index < 0:
        index += size
    if not 0 <= index < size:
        raise IndexError(f"index {index} out of range for {size} examples.")
    return index


def last_index_cache(method: Callable[[Any, int], Any]) -> Callable[[Any, int], Any]:
    """Decorates a source's ``method(self, index)`` to keep its result for the last index asked:
    an example that reads several parts of one index computes it once. The result is shared
    between the calls, so callers must not modify it (``method.__wrapped__`` is uncached)."""
    attribute = f"_last_{method.__name__}"

    @functools.wraps(method)
    def cached(self, index: int):
        last = getattr(self, attribute, None)
        if last is None or last[0] != index:
            last = (index, method(self, index))
            setattr(self, attribute, last)
        return last[1]

    return cached


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


RandomTransform = Callable[[dict[str, np.ndarray], np.random.Generator], dict[str, np.ndarray]]
Transform = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def _read_options(prefetch: int, num_workers: int) -> grain.ReadOptions:
    """``num_workers`` threads reading and transforming examples, up to ``prefetch`` batches
    ahead; with ``num_workers=0`` one background thread (none when ``prefetch=0`` too)."""
    if prefetch < 0 or num_workers < 0:
        raise ValueError(f"prefetch={prefetch} and num_workers={num_workers} must be >= 0.")
    threads = num_workers or (1 if prefetch else 0)
    return grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(prefetch, threads))


def transformed_train_stream(
    source: RandomAccessSource,
    *,
    seed: int,
    transform: RandomTransform | None = None,
    shuffle: bool = True,
) -> grain.MapDataset:
    """The infinite training stream before batching: ``source`` shuffled with ``seed`` (reshuffled
    every epoch), repeated, then ``transform(example, rng)`` with an ``rng`` seeded by ``seed`` and
    the position in the stream (so a repeated example draws new numbers, a resumed run the same)."""
    if len(source) == 0:
        raise ValueError("source is empty; a training iterator needs at least one example.")
    dataset = grain.MapDataset.source(source)
    if shuffle:
        dataset = dataset.shuffle(seed=seed)
    dataset = dataset.repeat(None)
    if transform is not None:
        dataset = dataset.random_map(transform, seed=seed)
    return dataset


def make_train_iterator(
    source: RandomAccessSource,
    *,
    global_batch_size: int,
    seed: int,
    transform: RandomTransform | None = None,
    shuffle: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
    prefetch: int = 2,
    num_workers: int = 0,
) -> grain.DatasetIterator:
    """Builds an infinite, deterministic, checkpointable training iterator.

    The index stream is ``source`` shuffled with ``seed`` (reshuffled every epoch, deterministically)
    and repeated forever; it is cut into global batches of ``global_batch_size`` consecutive
    examples (a batch may straddle an epoch boundary), and process ``p`` of ``P`` takes rows
    ``[p * b, (p + 1) * b)`` of every global batch, ``b = global_batch_size // P``.

    Args:
      source: random-access source of dict examples; must not be empty.
      global_batch_size: examples per step over all processes; divisible by ``process_count``.
      seed: shuffle and transform seed in ``[0, 2**32)``.
      transform: ``(example, np.random.Generator) -> example`` (see `transformed_train_stream`).
      shuffle: if False, epochs run in source order.
      process_index: this process; defaults to ``jax.process_index()``.
      process_count: number of processes; defaults to ``jax.process_count()``.
      prefetch: batches read ahead in the background.
      num_workers: threads reading and transforming examples in parallel.

    Returns:
      A grain iterator yielding ``dict[str, np.ndarray]`` with leading dim ``b``;
      ``get_state()`` is a JSON-serialisable dict and ``set_state(state)`` on a freshly built
      iterator with the same arguments resumes exactly where the saved one stood.
    """
    local_batch_size, process_index, process_count = _per_process_batch_size(
        global_batch_size, process_index, process_count
    )
    dataset = transformed_train_stream(source, seed=seed, transform=transform, shuffle=shuffle)
    # Local batch j covers stream rows [j*b, (j+1)*b): global batch g is local batches
    # g*P .. g*P+P-1, so process p takes every P-th local batch starting at p.
    dataset = dataset.batch(local_batch_size)
    dataset = dataset.slice(slice(process_index, None, process_count))
    return iter(dataset.to_iter_dataset(_read_options(prefetch, num_workers)))


def _indexed_example(
    source: RandomAccessSource, transform: Transform | None
) -> Callable[[int], Batch]:
    """index -> transformed example with "index" and "valid"; indices >= len(source) give zeros
    shaped like the first transformed example, with valid=False."""
    size, transform = len(source), transform or (lambda example: example)
    padding = {k: np.zeros_like(v) for k, v in transform(dict(source[0])).items()}

    def example(index: int) -> Batch:
        if index < size:
            return {**transform(dict(source[index])), "index": np.int32(index), "valid": np.True_}
        return {**padding, "index": np.int32(index), "valid": np.False_}

    return example


def make_eval_iterator(
    source: RandomAccessSource,
    *,
    global_batch_size: int,
    transform: Transform | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    num_workers: int = 0,
) -> grain.DatasetIterator:
    """Builds one in-order pass over ``source`` with a padded, static-shape last batch.

    Global batch ``g`` holds examples ``[g * B, (g + 1) * B)``; process ``p`` takes its rows
    ``[p * b, (p + 1) * b)`` of each. Rows past the end of ``source`` are zeros shaped like
    the first example. Every process yields the same number of batches, ``ceil(len(source) / B)``.

    Args:
      source: random-access source of dict examples (without "index" / "valid" keys).
      global_batch_size: ``B``, examples per step over all processes.
      transform: deterministic ``example -> example`` applied before batching.
      process_index: this process; defaults to ``jax.process_index()``.
      process_count: number of processes; defaults to ``jax.process_count()``.
      num_workers: threads reading and transforming examples in parallel.

    Returns:
      A grain iterator of ``dict[str, np.ndarray]`` batches with leading dim
      ``b = B // process_count``, each with ``"index": [b] int32`` (position in ``source``) and
      ``"valid": [b] bool`` (True for real examples, False for the padding rows).
    """
    local_batch_size, process_index, process_count = _per_process_batch_size(
        global_batch_size, process_index, process_count
    )
    size = len(source)
    if size == 0:
        raise ValueError("source is empty; an evaluation needs at least one example.")
    num_batches = -(-size // global_batch_size)
    dataset = grain.MapDataset.range(num_batches * global_batch_size)
    dataset = dataset.map(_indexed_example(source, transform)).batch(local_batch_size)
    dataset = dataset.slice(slice(process_index, None, process_count))
    return iter(dataset.to_iter_dataset(_read_options(2, num_workers)))


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
