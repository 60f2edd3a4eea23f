"""A COCO-format detection folder as a random-access source of raw detection examples.

The instances JSON is read once with plain ``json`` and kept unchanged as ``coco`` (the
evaluator hands it to pycocotools as ground truth). Examples follow the detection data
contract: ``{"image": [H, W, 3] uint8, "boxes": [n, 4] float32 xyxy pixels, "labels": [n] int32
in 1..K, "crowd": [n] bool}``. Problems with the folder or the file end in a one-line
:class:`~mlx_research.errors.ConfigError` naming the file and the entry.
"""

from __future__ import annotations

import json
import logging
import operator
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mlx_research.errors import ConfigError

log = logging.getLogger(__name__)

_IMAGE_KEYS = ("id", "file_name", "height", "width")
_ANNOTATION_KEYS = ("id", "image_id", "category_id", "bbox")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _entries(coco: dict[str, Any], key: str, required: tuple[str, ...], path: Path) -> list:
    """``coco[key]`` checked to be a list of dicts holding ``required`` keys."""
    entries = coco.get(key)
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: top-level key {key!r} is missing or not a list.")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: {key}[{i}] is not an object.")
        for name in required:
            if name not in entry:
                raise ConfigError(f"{path}: {key}[{i}] (id {entry.get('id')}) has no {name!r}.")
    return entries


def _load_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            coco = json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}."
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the annotation file: {e}.") from None
    if not isinstance(coco, dict):
        raise ConfigError(f"{path}: the top level is not a JSON object.")
    return coco


class CocoDetection:
    """Random access to the images and boxes of a COCO instances file.

    Category ids are remapped to contiguous labels ``1..K`` in increasing category id order
    (``category_id_to_label``, ``label_to_category_id``). Every image listed is kept, also those
    without annotations; crowd annotations (``iscrowd`` 1) come with ``crowd=True``. ``bbox``
    (xywh) becomes xyxy. A box reaching more than ``box_tolerance`` pixels outside its image is
    an error; one within the tolerance is clipped to the image. Boxes of zero (or negative)
    width or height after clipping are dropped from the examples (``num_dropped_degenerate``,
    reported once as a warning); ``coco`` keeps them, as the COCO evaluation protocol does.
    Images are decoded with PIL at ``__getitem__``; grayscale, RGBA (alpha dropped), palette and
    other modes are converted to RGB.

    Args:
      root: the dataset folder.
      annotation_file: the instances JSON, relative to ``root`` (or absolute), e.g.
        "annotations/instances_val2017.json".
      image_dir: the folder holding the images' ``file_name``s, relative to ``root`` (or
        absolute), e.g. "val2017".
      box_tolerance: how far (pixels) a box may reach outside its image before it is an error.
      check_files: check at construction that every image file exists (one directory listing).

    Attributes:
      coco: the instances dict as read from the file.
      image_ids: ``image_ids[index]`` is the COCO image id of example ``index`` (file order).
      class_names: ``class_names[label - 1]`` is the category name of ``label``.
      num_classes: ``K``.
      num_dropped_degenerate: boxes left out for zero width or height.
      annotation_path, image_root: the resolved paths.

    Raises:
      ConfigError: missing folder or file, malformed JSON, missing keys, unknown image or
        category ids, duplicate ids, a box outside its image, missing image files.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        annotation_file: str | os.PathLike = "instances.json",
        image_dir: str | os.PathLike = "images",
        *,
        box_tolerance: float = 1.0,
        check_files: bool = True,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ConfigError(f"{self.root}: COCO dataset folder does not exist.")
        self.annotation_path = path = self.root / annotation_file
        if not path.is_file():
            raise ConfigError(f"{path}: COCO annotation file does not exist.")
        self.image_root = self.root / image_dir
        if not self.image_root.is_dir():
            raise ConfigError(f"{self.image_root}: image folder of {path} does not exist.")
        self.coco = coco = _load_json(path)
        images = _entries(coco, "images", _IMAGE_KEYS, path)
        categories = _entries(coco, "categories", ("id",), path)
        annotations = _entries(coco, "annotations", _ANNOTATION_KEYS, path)

        category_ids = self._unique_ids(categories, "categories")
        self.label_to_category_id = {i + 1: c for i, c in enumerate(sorted(category_ids))}
        self.category_id_to_label = {c: label for label, c in self.label_to_category_id.items()}
        names = {c["id"]: str(c.get("name", c["id"])) for c in categories}
        self.class_names = tuple(names[c] for c in self.label_to_category_id.values())
        self.num_classes = len(self.class_names)

        self.image_ids = self._unique_ids(images, "images")
        self._file_names = [str(image["file_name"]) for image in images]
        sizes = np.zeros((len(images), 2), np.int64)  # (height, width)
        for i, image in enumerate(images):
            height, width = image["height"], image["width"]
            if not (_is_int(height) and _is_int(width) and height > 0 and width > 0):
                raise ConfigError(
                    f"{path}: images[{i}] (id {image['id']}) has height={height!r}, "
                    f"width={width!r}; both must be positive integers."
                )
            sizes[i] = height, width
        self._sizes = sizes
        self._read_annotations(annotations, box_tolerance)
        if check_files:
            self._check_files_exist()

    def _unique_ids(self, entries: list[dict[str, Any]], key: str) -> list[int]:
        ids, seen = [], set()
        for i, entry in enumerate(entries):
            if not _is_int(entry["id"]) or entry["id"] in seen:
                raise ConfigError(
                    f"{self.annotation_path}: {key}[{i}] has a non-integer or duplicate "
                    f"id {entry['id']!r}."
                )
            seen.add(entry["id"])
            ids.append(entry["id"])
        return ids

    def _read_annotations(self, annotations: list[dict[str, Any]], tolerance: float) -> None:
        """Per-image boxes [n, 4] xyxy, labels [n] and crowd [n] (annotation file order)."""
        path = self.annotation_path
        index_of_image = {image_id: i for i, image_id in enumerate(self.image_ids)}
        count = len(annotations)
        image_index = np.zeros(count, np.int64)
        labels = np.zeros(count, np.int32)
        boxes = np.zeros((count, 4), np.float64)
        crowd = np.zeros(count, bool)
        ann_ids = set()
        for i, ann in enumerate(annotations):
            where = f"{path}: annotations[{i}] (id {ann['id']})"
            if not _is_int(ann["id"]) or ann["id"] <= 0 or ann["id"] in ann_ids:
                raise ConfigError(
                    f"{where}: annotation ids must be unique positive integers "
                    "(pycocotools counts a match with id 0 as a miss)."
                )
            ann_ids.add(ann["id"])
            if ann["image_id"] not in index_of_image:
                raise ConfigError(f"{where}: image_id {ann['image_id']!r} is not in 'images'.")
            if ann["category_id"] not in self.category_id_to_label:
                raise ConfigError(
                    f"{where}: category_id {ann['category_id']!r} is not in 'categories'."
                )
            bbox = ann["bbox"]
            if not (
                isinstance(bbox, list) and len(bbox) == 4
                and all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox)
                and np.all(np.isfinite(bbox))
            ):
                raise ConfigError(f"{where}: bbox {bbox!r} is not 4 finite numbers [x, y, w, h].")
            image_index[i] = index_of_image[ann["image_id"]]
            labels[i] = self.category_id_to_label[ann["category_id"]]
            x, y, w, h = bbox
            boxes[i] = x, y, x + w, y + h
            crowd[i] = bool(ann.get("iscrowd", 0))

        height, width = self._sizes[image_index, 0], self._sizes[image_index, 1]
        limits = np.stack([width, height, width, height], axis=1).astype(np.float64)
        outside = np.any((boxes < -tolerance) | (boxes > limits + tolerance), axis=1)
        if outside.any():
            i = int(np.argmax(outside))
            ann = annotations[i]
            raise ConfigError(
                f"{path}: annotations[{i}] (id {ann['id']}) bbox {ann['bbox']} reaches outside "
                f"image id {ann['image_id']} of width {width[i]}, height {height[i]} "
                f"(tolerance {tolerance} pixels)."
            )
        boxes = np.clip(boxes, 0, limits)
        degenerate = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
        self.num_dropped_degenerate = int(degenerate.sum())
        if self.num_dropped_degenerate:
            i = int(np.argmax(degenerate))
            log.warning(
                "%s: dropped %d degenerate boxes (zero width or height), the first "
                "annotations[%d] (id %s).",
                path, self.num_dropped_degenerate, i, annotations[i]["id"],
            )
        keep = ~degenerate
        image_index, boxes, labels, crowd = (
            image_index[keep], boxes[keep].astype(np.float32), labels[keep], crowd[keep]
        )
        order = np.argsort(image_index, kind="stable")
        starts = np.searchsorted(image_index[order], np.arange(len(self.image_ids) + 1))
        self._boxes = boxes[order]
        self._labels = labels[order]
        self._crowd = crowd[order]
        self._starts = starts

    def _check_files_exist(self) -> None:
        listed = {entry.name for entry in os.scandir(self.image_root)}
        for i, name in enumerate(self._file_names):
            found = name in listed if "/" not in name else (self.image_root / name).is_file()
            if not found:
                missing = sum(
                    (n not in listed) if "/" not in n else not (self.image_root / n).is_file()
                    for n in self._file_names
                )
                raise ConfigError(
                    f"{self.image_root / name}: image file of image id {self.image_ids[i]} "
                    f"(images[{i}] in {self.annotation_path}) not found; {missing} of "
                    f"{len(self._file_names)} listed image files are missing."
                )

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_path(self, index: int) -> Path:
        """The file of example ``index``."""
        return self.image_root / self._file_names[index]

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        """Returns raw example ``index`` (negative indices count from the end).

        Raises:
          ConfigError: the image file is missing, unreadable, or not of the listed size.
        """
        index = operator.index(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images.")
        image = self._read_image(index)
        start, stop = self._starts[index], self._starts[index + 1]
        return {
            "image": image,
            "boxes": self._boxes[start:stop].copy(),
            "labels": self._labels[start:stop].copy(),
            "crowd": self._crowd[start:stop].copy(),
        }

    def _read_image(self, index: int) -> np.ndarray:
        path, image_id = self.image_path(index), self.image_ids[index]
        try:
            with Image.open(path) as image:
                array = np.array(image if image.mode == "RGB" else image.convert("RGB"))
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            message = str(e).splitlines()[0] if str(e) else ""
            raise ConfigError(
                f"{path}: cannot read image id {image_id}: {type(e).__name__}: {message}"
            ) from None
        height, width = self._sizes[index]
        if array.shape[:2] != (height, width):
            raise ConfigError(
                f"{path}: image id {image_id} is {array.shape[1]}x{array.shape[0]} pixels but "
                f"{self.annotation_path} says {width}x{height}."
            )
        return array
