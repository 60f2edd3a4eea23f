"""Synthetic sequence-to-sequence tasks (reverse, sort, copy) as a random-access source.

Token ids: ``PAD_ID = 0``, ``BOS_ID = 1`` (for the decoder's shifted input, not stored here),
``EOS_ID = 2``; symbols are ``3 .. vocab_size - 1``. Example ``i`` is a pure function of
``(seed, split, i)``, so any process can read any index and the splits never coincide.
"""

from __future__ import annotations

import numpy as np

from mlx_research.data.pipeline import checked_index

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
_FIRST_SYMBOL = 3

_TASKS = {
    "reverse": lambda symbols: symbols[::-1],
    "sort": np.sort,
    "copy": lambda symbols: symbols,
}
_SPLITS = {"train": 0, "eval": 1}


class SyntheticSeq2Seq:
    """Random symbol strings and their task outputs, indexed like a grain data source.

    Each example draws a length ``L`` uniformly in ``[min_len, max_len]`` and ``L`` symbols
    uniformly in ``[3, vocab_size)`` from ``np.random.default_rng([seed, split_id, i])``.

    Args:
      task: "reverse", "sort" or "copy".
      num_examples: number of examples, ``len(self)``.
      vocab_size: total vocabulary including PAD/BOS/EOS; at least 4.
      min_len: shortest input, at least 1.
      max_len: longest input, at least ``min_len``.
      seed: base seed.
      split: "train" or "eval".

    Example ``i`` is ``{"inputs": [max_len] int32, "targets": [max_len + 1] int32}``: the
    symbols then PAD, and the task output then EOS then PAD.
    """

    def __init__(
        self,
        task: str,
        num_examples: int,
        vocab_size: int = 32,
        min_len: int = 4,
        max_len: int = 16,
        seed: int = 0,
        split: str = "train",
    ) -> None:
        if task not in _TASKS:
            raise ValueError(f"task={task!r} must be one of {sorted(_TASKS)}.")
        if split not in _SPLITS:
            raise ValueError(f"split={split!r} must be one of {sorted(_SPLITS)}.")
        if num_examples < 0:
            raise ValueError(f"num_examples={num_examples} must be >= 0.")
        if vocab_size <= _FIRST_SYMBOL:
            raise ValueError(
                f"vocab_size={vocab_size} must exceed {_FIRST_SYMBOL} (PAD, BOS, EOS + symbols)."
            )
        if min_len < 1:
            raise ValueError(f"min_len={min_len} must be >= 1.")
        if min_len > max_len:
            raise ValueError(f"min_len={min_len} must be <= max_len={max_len}.")
        if seed < 0:
            raise ValueError(f"seed={seed} must be >= 0.")
        self.task = task
        self.num_examples = num_examples
        self.vocab_size = vocab_size
        self.min_len = min_len
        self.max_len = max_len
        self.seed = seed
        self.split = split

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        """Returns example ``index`` (negative indices count from the end)."""
        index = checked_index(index, self.num_examples)
        rng = np.random.default_rng([self.seed, _SPLITS[self.split], index])
        length = int(rng.integers(self.min_len, self.max_len + 1))
        symbols = rng.integers(_FIRST_SYMBOL, self.vocab_size, size=length).astype(np.int32)
        return make_example(self.task, symbols, self.max_len)


def make_example(task: str, symbols: np.ndarray, max_len: int) -> dict[str, np.ndarray]:
    """{"inputs": [max_len], "targets": [max_len + 1]} int32 of `task` on `symbols` [L]."""
    length = len(symbols)
    inputs = np.full(max_len, PAD_ID, np.int32)
    inputs[:length] = symbols
    targets = np.full(max_len + 1, PAD_ID, np.int32)
    targets[:length] = _TASKS[task](symbols)
    targets[length] = EOS_ID
    return {"inputs": inputs, "targets": targets}


def relabel_symbols(
    example: dict[str, np.ndarray], rng: np.random.Generator, task: str, vocab_size: int
) -> dict[str, np.ndarray]:
    """Augmentation: renames the symbols by a random permutation of [3, vocab_size) and
    recomputes the targets (every task is defined for any symbols, so this is a new valid
    example of the same length)."""
    inputs = example["inputs"]
    names = np.arange(vocab_size, dtype=np.int32)
    names[_FIRST_SYMBOL:] = rng.permutation(names[_FIRST_SYMBOL:])
    symbols = names[inputs[inputs != PAD_ID]]
    return make_example(task, symbols, len(inputs))
