"""IU X-Ray and MIMIC-CXR in R2Gen's layout: ``annotation.json`` beside an image folder.

``annotation.json`` is ``{"train": [...], "val": [...], "test": [...]}``; each entry holds an
``"id"``, a free-text ``"report"`` and ``"image_path"``, a list of image files relative to the
image folder. R2Gen reads two views per IU X-Ray study (``image_path[0]`` and ``[1]``) and one
per MIMIC-CXR study (``image_path[0]``); MIMIC-CXR entries also carry ``"study_id"`` and
``"subject_id"``. :func:`clean_report` is R2Gen's report normalisation, written anew from its
behaviour (``Tokenizer.clean_report_iu_xray`` / ``clean_report_mimic_cxr``).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from PIL import Image

from mlx_research.data.pipeline import checked_index
from mlx_research.errors import ConfigError

DATASETS = ("iu_xray", "mimic_cxr")
DEFAULTS = {
    "iu_xray": dict(threshold=3, max_len=60, views=2),
    "mimic_cxr": dict(threshold=10, max_len=100, views=1),
}

# Whole-report rewrites, in order: (old, new, passes). Each pass is one left-to-right
# non-overlapping replacement, so a fixed number of "..": "." passes shortens longer runs of
# dots only partly, as in R2Gen. The numbering rules drop "1. " everywhere (also inside "11. ")
# and turn " 2. " .. " 5. " into sentence ends.
_NUMBERING = (
    ("1. ", "", 1), (". 2. ", ". ", 1), (". 3. ", ". ", 1), (". 4. ", ". ", 1),
    (". 5. ", ". ", 1), (" 2. ", ". ", 1), (" 3. ", ". ", 1), (" 4. ", ". ", 1), (" 5. ", ". ", 1),
)
_REPORT_REWRITES = {
    "iu_xray": (("..", ".", 3),) + _NUMBERING,
    "mimic_cxr": (
        ("\n", " ", 1), ("__", "_", 7), ("  ", " ", 6), ("..", ".", 8),
    ) + _NUMBERING,
}
# Removed from each sentence before it is stripped of surrounding whitespace.
_QUOTES_AND_SLASHES = str.maketrans("", "", "\"/\\'")
# Removed from each stripped sentence. R2Gen's character class ``.,?;*!%^&_+()`` ``:-[`` ``]{}``
# holds the range from ":" to "[", that is also ``<=>@`` and the capital letters; the hyphen
# and the digits stay.
_PUNCTUATION = str.maketrans(
    "", "", ".,?;*!%^&_+()]{}" + "".join(chr(c) for c in range(ord(":"), ord("[") + 1))
)


def clean_report(text: str, dataset: str) -> str:
    """R2Gen's cleaned report: lower case, list numbering and punctuation removed, sentences
    joined by " . " and ended by " .".

    The text (for MIMIC-CXR first with line breaks turned into spaces and runs of "_" and of
    spaces shortened) gets runs of dots shortened and "1. "/" 2. "..." 5. " numbering removed,
    is stripped, lower-cased and split at every ". ". Each piece loses quotes, slashes and
    apostrophes, surrounding whitespace, then the punctuation of ``_PUNCTUATION``; empty pieces
    are kept (as in R2Gen, whose filter compares a string with ``[]``). The pieces are joined by
    " . " and " ." is appended; an empty text gives " .".

    Args:
      text: the report as written in ``annotation.json``.
      dataset: "iu_xray" or "mimic_cxr".
    """
    if dataset not in _REPORT_REWRITES:
        raise ConfigError(f"dataset {dataset!r} must be one of {', '.join(DATASETS)}.")
    for old, new, passes in _REPORT_REWRITES[dataset]:
        for _ in range(passes):
            text = text.replace(old, new)
    sentences = text.strip().lower().split(". ")
    cleaned = [s.translate(_QUOTES_AND_SLASHES).strip().translate(_PUNCTUATION) for s in sentences]
    return " . ".join(cleaned) + " ."


def _is_empty(cleaned: str) -> bool:
    """True when a cleaned report holds no word besides the sentence ends "."."""
    return all(word == "." for word in cleaned.split())


class R2GenAnnotations:
    """One split of an R2Gen folder, checked entry by entry and file by file at construction.

    Args:
      root: the dataset folder (e.g. "data/iu_xray").
      split: "train", "val" or "test" (any key of the annotation file).
      dataset: "iu_xray" (two views per study) or "mimic_cxr" (one view).
      image_dir: the image folder, relative to ``root`` (or absolute).
      annotation_file: the annotation JSON, relative to ``root`` (or absolute).

    Every entry must be an object with a string "id", a string "report" that keeps at least one
    word after :func:`clean_report`, and an "image_path" list of at least ``views`` file names,
    each existing under the image folder; views beyond the first ``views`` are ignored, as
    R2Gen does.

    Attributes:
      views: images per study (2 for "iu_xray", 1 for "mimic_cxr").
      ids: ``ids[index]`` is the "id" of entry ``index``.
      reports: ``reports[index]`` is the cleaned report of entry ``index``.
      annotation_path, image_root: the resolved paths.

    Raises:
      FileNotFoundError: the annotation file, the image folder or an image file is missing.
      ConfigError: unknown dataset, unreadable or malformed annotation file, missing split,
        malformed entry or empty report; one line naming the file and the entry.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        dataset: str,
        image_dir: str | os.PathLike = "images",
        annotation_file: str | os.PathLike = "annotation.json",
    ) -> None:
        if dataset not in DATASETS:
            raise ConfigError(f"dataset {dataset!r} must be one of {', '.join(DATASETS)}.")
        self.dataset, self.split = dataset, split
        self.views = DEFAULTS[dataset]["views"]
        self.annotation_path = os.path.join(root, annotation_file)
        self.image_root = os.path.join(root, image_dir)
        annotation = _load_annotation(self.annotation_path)
        entries = annotation.get(split)
        if not isinstance(entries, list):
            found = ", ".join(repr(k) for k in annotation) or "none"
            raise ConfigError(
                f"{self.annotation_path}: no list for split {split!r} (splits found: {found})."
            )
        if not os.path.isdir(self.image_root):
            raise FileNotFoundError(
                f"{self.image_root}: image folder of {self.annotation_path} does not exist."
            )
        self._entries = entries
        self.reports = tuple(self._check_entry(i, entry) for i, entry in enumerate(entries))
        self.ids = tuple(entry["id"] for entry in entries)
        self._check_images_exist()

    def _where(self, index: int) -> str:
        entry = self._entries[index]
        name = entry.get("id") if isinstance(entry, dict) else None
        named = f" (id {name!r})" if isinstance(name, str) else ""
        return f"{self.annotation_path}: {self.split} entry {index}{named}"

    def _check_entry(self, index: int, entry: Any) -> str:
        """The cleaned report of a well-formed entry; ConfigError otherwise."""
        where = self._where(index)
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: not a JSON object.")
        if not isinstance(entry.get("id"), str):
            raise ConfigError(f"{where}: 'id' is missing or not a string.")
        if "report" not in entry:
            raise ConfigError(f"{where}: no 'report'.")
        if not isinstance(entry["report"], str):
            raise ConfigError(f"{where}: 'report' is not a string.")
        cleaned = clean_report(entry["report"], self.dataset)
        if _is_empty(cleaned):
            raise ConfigError(f"{where}: empty report.")
        paths = entry.get("image_path")
        if not (
            isinstance(paths, list) and len(paths) >= self.views
            and all(isinstance(p, str) and p for p in paths[: self.views])
        ):
            raise ConfigError(
                f"{where}: 'image_path' must list at least {self.views} image file name(s) "
                f"({self.dataset} reads {self.views} view(s)), got {paths!r}."
            )
        return cleaned

    def _image_file(self, index: int, view: int) -> str:
        return os.path.join(self.image_root, self._entries[index]["image_path"][view])

    def _check_images_exist(self) -> None:
        missing = [
            (i, v) for i in range(len(self)) for v in range(self.views)
            if not os.path.exists(self._image_file(i, v))
        ]
        if missing:
            i, v = missing[0]
            total = len(self) * self.views
            more = f"; {len(missing)} of {total} are missing" if len(missing) > 1 else ""
            raise FileNotFoundError(
                f"{self._image_file(i, v)}: missing image file ({self.split} entry {i}, "
                f"id {self.ids[i]!r}){more}."
            )

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, index: int) -> dict[str, Any]:
        """A copy of entry ``index`` as in the file (keys "id", "report", "image_path", and for
        MIMIC-CXR "study_id", "subject_id", ...) plus "cleaned", its cleaned report."""
        index = checked_index(index, len(self))
        return {**self._entries[index], "cleaned": self.reports[index]}

    def load_images(self, index: int, mode: str = "RGB") -> list[np.ndarray]:
        """The ``views`` images of entry ``index``, decoded by PIL and converted to ``mode``.

        R2Gen converts every image to RGB; "L" (8-bit grayscale) keeps one channel, e.g. for
        grayscale radiographs fed to a one-channel model. Views may differ in size; the
        transform (:class:`~mlx_research.data.report_transforms.ReportImageTransform`) resizes.

        Args:
          index: entry index (negative counts from the end).
          mode: "RGB" or "L".

        Returns:
          ``views`` arrays, uint8 [H_v, W_v, 3] for "RGB" or [H_v, W_v] for "L".

        Raises:
          ConfigError: an image cannot be decoded; names the file and the entry.
        """
        if mode not in ("RGB", "L"):
            raise ValueError(f"mode={mode!r} must be 'RGB' or 'L'.")
        index = checked_index(index, len(self))
        images = []
        for view in range(self.views):
            path = self._image_file(index, view)
            try:
                with Image.open(path) as image:
                    images.append(np.asarray(image.convert(mode)))
            except FileNotFoundError:
                raise FileNotFoundError(
                    f"{path}: missing image file ({self.split} entry {index}, "
                    f"id {self.ids[index]!r})."
                ) from None
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                message = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise ConfigError(
                    f"{path}: cannot read image ({self.split} entry {index}, "
                    f"id {self.ids[index]!r}): {message}"
                ) from None
        return images


def _load_annotation(path: str) -> dict[str, Any]:
    """The annotation JSON object at ``path``; FileNotFoundError or one-line ConfigError."""
    try:
        with open(path, encoding="utf-8") as f:
            annotation = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: annotation file not found.") from None
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}."
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the annotation file: {e}.") from None
    if not isinstance(annotation, dict):
        raise ConfigError(f"{path}: the top level is not a JSON object of splits.")
    return annotation
