"""A detection run's COCO evaluation with the network replaced by its ground truth.

The ground truth, written in the detector's raw output format and put through the detector's own
decoding (post-processing, NMS, pixel scaling), must score COCO AP 1 on the run's evaluator:
boxes, labels, image ids, the resize scale or the category map wired wrongly anywhere between
the network and pycocotools loses AP.
"""

from collections.abc import Callable

import jax
import numpy as np

from mlx_research.data.pipeline import make_eval_iterator
from mlx_research.evaluation.coco import CocoEvaluator

LOGIT = 10.0  # the ground-truth class's logit (softmax ~1 - K e^-10), the others' 0


def one_hot_logits(column: np.ndarray, num_logits: int) -> np.ndarray:
    """[..., num_logits] float32 logits: LOGIT at each entry's `column`, 0 elsewhere."""
    return LOGIT * np.eye(num_logits, dtype=np.float32)[column]


def oracle_scores(evaluator: CocoEvaluator,
                  detections: Callable[[dict], dict]) -> dict[str, float]:
    """COCO scores of `evaluator`'s images when `detections(batch)` replaces the detector.

    Args:
      evaluator: a run's COCO evaluator (its source, eval transform, ground truth, category map).
      detections: eval batch -> {"boxes" [B, D, 4] xyxy resized pixels, "scores", "labels",
        "valid"}, as the task's `predict`.

    Returns:
      pycocotools' AP, AP50, ..., AR100 over every image of the source.
    """
    oracle = CocoEvaluator(evaluator.source, evaluator.transform,
                           lambda variables, batch: detections(batch), evaluator.coco.dataset,
                           evaluator.image_ids, evaluator.label_to_category_id)
    for batch in make_eval_iterator(oracle.source, global_batch_size=4,
                                    transform=oracle.transform):
        predictions = jax.tree.map(np.asarray, oracle.predict({}, batch))
        keep = batch["valid"]
        oracle.update({k: v[keep] for k, v in predictions.items()}, batch["index"][keep])
    return oracle.result()
