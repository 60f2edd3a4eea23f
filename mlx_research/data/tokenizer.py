"""Word vocabulary of cleaned radiology reports (R2Gen's tokenizer with separate special ids).

R2Gen splits a cleaned report on whitespace, keeps the words seen at least ``threshold`` times in
the training split, sorts them as strings and numbers them from 1, with id 0 standing for the
start, the end and the padding of a report alike. Here the four special tokens have ids of their
own, ``PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3``, and the kept words follow from id 4 in the
same sorted order; "<unk>" (which R2Gen sorts among the words) is ``UNK_ID``.

Sequence length: R2Gen's ``max_seq_length`` counts the leading and the trailing 0 of
``[0, w_1 .. w_n, 0]`` and truncates that list, so its decoder targets (the list without its
first 0) are at most ``max_seq_length - 1`` tokens: the words then the end token, or, for a
report of ``max_seq_length - 1`` words or more, the first ``max_seq_length - 1`` words with no end
token. :meth:`Vocabulary.encode` stores only the targets (the decoder's BOS-shifted input is
made from them) and always ends them with EOS: ``max_len`` positions hold at most
``max_len - 1`` words, then EOS, then padding. ``max_len = max_seq_length - 1`` gives R2Gen's
targets exactly for every report of fewer than ``max_seq_length - 1`` words.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from mlx_research.errors import ConfigError

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
_FIRST_WORD_ID = len(SPECIAL_TOKENS)


class Vocabulary:
    """Words of cleaned reports and their ids (``PAD_ID``..``UNK_ID`` first, words from 4).

    Args:
      words: the kept words in id order (id ``4 + position``); unique, non-empty, without
        whitespace, none of them a special token.

    Attributes:
      words: ``words[i]`` is the word of id ``4 + i``.
    """

    def __init__(self, words: Sequence[str]) -> None:
        self.words = tuple(words)
        seen: set[str] = set()
        for i, word in enumerate(self.words):
            if not isinstance(word, str) or not word or word.split() != [word]:
                raise ValueError(f"word {i} ({word!r}) must be a non-empty string without spaces.")
            if word in seen or word in SPECIAL_TOKENS:
                raise ValueError(f"word {i} ({word!r}) is a duplicate or a special token.")
            seen.add(word)
        self._ids = {word: _FIRST_WORD_ID + i for i, word in enumerate(self.words)}

    @classmethod
    def build(cls, cleaned_reports: Iterable[str], threshold: int) -> Vocabulary:
        """The words occurring at least ``threshold`` times (R2Gen's ``count >= threshold``) in
        the whitespace-split ``cleaned_reports``, in Python string order."""
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
            raise ValueError(f"threshold={threshold!r} must be an integer >= 1.")
        counts = Counter(word for report in cleaned_reports for word in report.split())
        return cls(sorted(word for word, count in counts.items() if count >= threshold))

    def __len__(self) -> int:
        """Number of ids, the four special tokens included."""
        return _FIRST_WORD_ID + len(self.words)

    def save(self, path: str | os.PathLike) -> None:
        """Writes ``{"special_tokens": [...], "words": [...]}`` as JSON to ``path``."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"special_tokens": list(SPECIAL_TOKENS), "words": list(self.words)}, f)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocabulary:
        """Reads a file written by :meth:`save`.

        Raises:
          FileNotFoundError: no file at ``path``.
          ConfigError: not JSON, not a vocabulary, or other special tokens; the message names
            the file.
        """
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: vocabulary file not found.") from None
        except json.JSONDecodeError as e:
            raise ConfigError(
                f"{path}: invalid vocabulary JSON at line {e.lineno} column {e.colno}: {e.msg}."
            ) from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: cannot read the vocabulary file: {e}.") from None
        if not isinstance(data, dict) or not isinstance(data.get("words"), list):
            raise ConfigError(f"{path}: not a vocabulary file (no 'words' list).")
        if data.get("special_tokens") != list(SPECIAL_TOKENS):
            raise ConfigError(
                f"{path}: special tokens {data.get('special_tokens')!r} differ from "
                f"{list(SPECIAL_TOKENS)!r}."
            )
        try:
            return cls(data["words"])
        except ValueError as e:
            raise ConfigError(f"{path}: {e}") from None

    def token_id(self, word: str) -> int:
        """The id of ``word``; ``UNK_ID`` for a word not in the vocabulary."""
        return self._ids.get(word, UNK_ID)

    def encode(self, cleaned_report: str, max_len: int) -> np.ndarray:
        """Token ids of a cleaned report: its first ``max_len - 1`` words, EOS, then PAD.

        Args:
          cleaned_report: a report as ``clean_report`` returns it; split on whitespace.
          max_len: number of positions, the EOS included; at least 1.

        Returns:
          [max_len] int32.
        """
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
            raise ValueError(f"max_len={max_len!r} must be an integer >= 1.")
        ids = [self.token_id(word) for word in cleaned_report.split()[: max_len - 1]]
        out = np.full(max_len, PAD_ID, np.int32)
        out[: len(ids)] = ids
        out[len(ids)] = EOS_ID
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """The words of ``ids`` joined by single spaces, up to the first EOS or PAD.

        BOS ids are skipped; ``UNK_ID`` and ids outside the vocabulary give "<unk>".

        Args:
          ids: [T] integers (a list or a 1-D array).
        """
        words = []
        for token in np.asarray(ids).reshape(-1).tolist():
            if token in (EOS_ID, PAD_ID):
                break
            if token == BOS_ID:
                continue
            index = token - _FIRST_WORD_ID
            words.append(self.words[index] if 0 <= index < len(self.words) else "<unk>")
        return " ".join(words)
