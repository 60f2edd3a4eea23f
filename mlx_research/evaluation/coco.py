"""COCO box mAP of a detector as a trainer evaluator (pycocotools does the scoring).

`CocoEvaluator` runs the detector's jittable inference on the evaluation split, turns each valid
detection back into a COCO result (`{"image_id", "category_id", "bbox": xywh in original image
pixels, "score"}`) on the host, and scores everything seen with pycocotools' `COCOeval(..., "bbox")`
restricted to the evaluated images. Only the glue (coordinate conversion, bookkeeping, the
picture of the first batch) is written here; matching and AP/AR are pycocotools'.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mlx_research.data.pipeline import RandomAccessSource, Transform
from mlx_research.evaluation.base import Batch, Evaluator, Predictions

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")
"""Names of `COCOeval.stats[0..8]`, in order: AP@[.5:.95], AP@.5, AP@.75, AP small/medium/large,
AR with at most 1/10/100 detections per image (all at area "all" unless the name says)."""

GT_COLOR = (0, 255, 0)
PRED_COLOR = (255, 0, 0)


def build_coco(coco_gt: Mapping[str, Any]) -> COCO:
    """A pycocotools `COCO` index over a COCO-format dict held in memory (no file, no prints).

    The dict is deep-copied (COCOeval writes an "ignore" key into ground-truth annotations);
    annotations without "iscrowd" get 0 and without "area" get the box area w * h.
    """
    dataset = copy.deepcopy(dict(coco_gt))
    for key in ("images", "annotations", "categories"):
        if key not in dataset:
            raise ValueError(f"coco_gt has no {key!r} list (keys: {sorted(dataset)})")
    for ann in dataset["annotations"]:
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", float(ann["bbox"][2]) * float(ann["bbox"][3]))
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class CocoEvaluator(Evaluator):
    """COCO box AP/AR of a detector on a detection source.

    `predict` runs `predict_fn` and passes `batch["scale"]` (resized / original, from the eval
    transform) through as `predictions["scale"]`, so `update` needs nothing but the predictions
    and the example indices. Examples that reach `update` count as evaluated even when they have
    no detection (their ground truth then counts as missed); `result` evaluates exactly those
    images (`COCOeval.params.imgIds`), so a partial pass scores the part it saw.

    Boxes are not clipped to the image: that is the detector's post-processing.

    Args:
      source: random-access detection source of the evaluation split (raw examples).
      transform: its deterministic eval transform (`example -> example`, the static-shape
        contract with "scale"); None keeps examples unchanged.
      predict_fn: the detector's jittable inference, `(variables, batch) -> {"boxes": [B, D, 4]
        float32 xyxy in resized pixels, "scores": [B, D] float32, "labels": [B, D] int32 in
        1..K, "valid": [B, D] bool}`.
      coco_gt: COCO-format ground truth (dict with "images", "annotations" (bbox xywh in original
        pixels, "iscrowd" 1 boxes are ignored by pycocotools), "categories").
      image_ids: `image_ids[index]` is the COCO image id of `source[index]`.
      label_to_category_id: contiguous label (1..K) -> COCO category id.
      label_names: optional label -> name, written next to predicted boxes in `images`.
      score_threshold: predicted boxes with a score below it are left out of the picture (not of
        the scores).
      max_images: validation images in the picture of the first batch.
    """

    def __init__(
        self,
        source: RandomAccessSource,
        transform: Transform | None,
        predict_fn: Callable[[dict[str, Any], Batch], Mapping[str, jax.Array]],
        coco_gt: Mapping[str, Any],
        image_ids: Sequence[int],
        label_to_category_id: Mapping[int, int],
        *,
        label_names: Mapping[int, str] | None = None,
        score_threshold: float = 0.3,
        max_images: int = 8,
    ):
        self.source = source
        self._transform = transform
        self._predict_fn = predict_fn
        self.coco = build_coco(coco_gt)
        self.image_ids = np.asarray(image_ids, dtype=np.int64).reshape(-1)
        if len(self.image_ids) != len(source):
            raise ValueError(
                f"image_ids has {len(self.image_ids)} entries, the source {len(source)} examples"
            )
        unknown = sorted(set(self.image_ids.tolist()) - set(self.coco.getImgIds()))
        if unknown:
            raise ValueError(f"image_ids not among coco_gt's images: {unknown[:5]}")
        self.label_to_category_id = {int(k): int(v) for k, v in label_to_category_id.items()}
        bad = sorted(set(self.label_to_category_id.values()) - set(self.coco.getCatIds()))
        if bad:
            raise ValueError(f"label_to_category_id maps to unknown category ids {bad}")
        self.label_names = dict(label_names or {})
        self.score_threshold = score_threshold
        self.max_images = max_images
        self.summary = ""  # pycocotools' printed summary of the last `result()`
        self.reset()

    # ------------------------------------------------------------------ device side
    def transform(self, example: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return example if self._transform is None else self._transform(example)

    def predict(self, variables: dict[str, Any], batch: Batch) -> dict[str, jax.Array]:
        """The detector's boxes/scores/labels/valid ([B, D, ...]) and `scale: [B] float32`."""
        out = self._predict_fn(variables, batch)
        return {
            "boxes": out["boxes"],
            "scores": out["scores"],
            "labels": out["labels"],
            "valid": out["valid"],
            "scale": jnp.asarray(batch["scale"], jnp.float32).reshape(-1),
        }

    # ------------------------------------------------------------------ host side
    def reset(self) -> None:
        self.detections: list[dict[str, Any]] = []
        self.seen_image_ids: set[int] = set()

    def update(self, predictions: Predictions, indices: np.ndarray) -> None:
        """Adds the valid detections of examples `indices` as COCO results.

        Args:
          predictions: `predict`'s outputs for these examples, numpy: boxes [n, D, 4] xyxy in
            resized pixels, scores [n, D], labels [n, D], valid [n, D], scale [n].
          indices: [n] int, source positions of the rows.
        """
        indices = np.asarray(indices).reshape(-1)
        image_ids = self.image_ids[indices]
        self.seen_image_ids.update(image_ids.tolist())
        valid = np.asarray(predictions["valid"], dtype=bool)
        rows, cols = np.nonzero(valid)
        if rows.size == 0:
            return
        scale = np.asarray(predictions["scale"], np.float64).reshape(-1)[rows]
        boxes = np.asarray(predictions["boxes"], np.float64)[rows, cols] / scale[:, None]
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        scores = np.asarray(predictions["scores"], np.float64)[rows, cols]
        labels = np.asarray(predictions["labels"])[rows, cols]
        for image_id, box, score, label in zip(
            image_ids[rows].tolist(), xywh.tolist(), scores.tolist(), labels.tolist()
        ):
            if label not in self.label_to_category_id:
                raise ValueError(
                    f"predicted label {label} has no category id (labels: "
                    f"{sorted(self.label_to_category_id)})"
                )
            self.detections.append(
                {
                    "image_id": image_id,
                    "category_id": self.label_to_category_id[label],
                    "bbox": box,
                    "score": score,
                }
            )

    def result(self) -> dict[str, float]:
        """pycocotools' bbox stats over the images seen since `reset` (all 0.0 when there is no
        detection at all; -1.0 where pycocotools has no ground truth to score, e.g. no small
        objects for "APs")."""
        if not self.detections or not self.seen_image_ids:
            self.summary = ""
            return {name: 0.0 for name in METRICS}
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            results = self.coco.loadRes(copy.deepcopy(self.detections))  # loadRes edits them
            coco_eval = COCOeval(self.coco, results, "bbox")
            coco_eval.params.imgIds = sorted(self.seen_image_ids)
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        self.summary = printed.getvalue()
        return {name: float(v) for name, v in zip(METRICS, coco_eval.stats)}

    def images(self, predictions: Predictions, batch: Batch) -> dict[str, np.ndarray]:
        """`{"detections": [H, W, 3] uint8}`: up to `max_images` valid images of the batch in a
        grid (4 per row), ground-truth boxes in green, predictions with score >=
        `score_threshold` in red with "label score" text."""
        valid = np.asarray(batch["valid"], bool).reshape(-1)
        rows = np.flatnonzero(valid)[: self.max_images]
        if rows.size == 0:
            return {}
        tiles = [self._draw(predictions, batch, int(i)) for i in rows]
        return {"detections": _grid(tiles, columns=4)}

    def _draw(self, predictions: Predictions, batch: Batch, i: int) -> np.ndarray:
        """One image ([S, S, 3] float in [0, 1] -> uint8) with its boxes drawn."""
        image = np.clip(np.asarray(batch["image"][i], np.float32), 0.0, 1.0)
        picture = Image.fromarray(np.round(image * 255.0).astype(np.uint8))
        draw = ImageDraw.Draw(picture)
        gt_boxes = np.asarray(batch["boxes"][i], np.float64)
        gt_valid = np.asarray(batch["box_valid"][i], bool)
        for box in gt_boxes[gt_valid]:
            _rectangle(draw, box, GT_COLOR)
        shown = np.asarray(predictions["valid"][i], bool) & (
            np.asarray(predictions["scores"][i]) >= self.score_threshold
        )
        boxes = np.asarray(predictions["boxes"][i], np.float64)
        for j in np.flatnonzero(shown):
            _rectangle(draw, boxes[j], PRED_COLOR)
            label = int(predictions["labels"][i][j])
            text = f"{self.label_names.get(label, label)} {float(predictions['scores'][i][j]):.2f}"
            if all(map(math.isfinite, boxes[j])):
                draw.text((float(boxes[j][0]) + 2, float(boxes[j][1]) + 1), text, fill=PRED_COLOR)
        return np.asarray(picture)


def _rectangle(draw: ImageDraw.ImageDraw, box: np.ndarray, color: tuple[int, int, int]) -> None:
    """Outline of an xyxy box (non-finite boxes skipped; reversed corners sorted)."""
    if not np.all(np.isfinite(box)):
        return
    x1, x2 = sorted((float(box[0]), float(box[2])))
    y1, y2 = sorted((float(box[1]), float(box[3])))
    draw.rectangle((x1, y1, x2, y2), outline=color, width=1)


def _grid(tiles: list[np.ndarray], columns: int, gap: int = 2) -> np.ndarray:
    """Tiles of one shape [S, S, 3] in rows of `columns`, separated by `gap` white pixels."""
    height, width = tiles[0].shape[:2]
    columns = min(columns, len(tiles))
    rows = -(-len(tiles) // columns)
    grid = np.full(
        (rows * height + (rows - 1) * gap, columns * width + (columns - 1) * gap, 3),
        255,
        np.uint8,
    )
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        grid[r * (height + gap) : r * (height + gap) + height,
             c * (width + gap) : c * (width + gap) + width] = tile
    return grid
