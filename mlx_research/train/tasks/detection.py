"""What the detection tasks (faster_rcnn, yolo, detr) share: the synthetic shapes or a COCO-format
folder as data, its config fields and checks, the box transform, the COCO mAP evaluator, and the
loss and prediction of a detector (`models/detection/interface.py`).

A subclass sets ``self.model``, ``self.criterion`` and ``self.postprocess`` in ``__init__``.
``loss`` runs the model in training mode and its criterion; ``predict(variables, batch)`` runs
it in evaluation mode and its postprocess, giving ``{"boxes" [B, D, 4] xyxy resized pixels,
"scores" [B, D], "labels" [B, D] in 1..K, "valid" [B, D]}``; evaluators of kind "coco" score
those detections (pycocotools AP, AP50, ... and a picture of predicted boxes).
"""

from __future__ import annotations

import functools
import os

import ml_collections

from mlx_research.config_checks import check_choices, check_ranges
from mlx_research.data import coco as coco_data
from mlx_research.data import shapes
from mlx_research.data.detection_transforms import DetectionTransform
from mlx_research.errors import ConfigError
from mlx_research.evaluation.coco import CocoEvaluator
from mlx_research.models.detection.interface import Criterion, DetectionTargets, Postprocess
from mlx_research.train.tasks import base

_DATA_RANGES = {
    "data.image_size": (16, None),
    "data.max_boxes": (1, None),
    "data.num_train": (1, None),
    "data.shapes_image_size": (0, None),
    "data.shapes_max_objects": (0, None),
    "data.hflip_prob": (0, 1),
    "data.scale_min": (0.1, 10),
    "data.scale_max": (0.1, 10),
}


def data_config(image_size: int) -> ml_collections.ConfigDict:
    """The ``data`` fields of every detection task; ``image_size`` is the task's default side."""
    return ml_collections.ConfigDict(dict(
        dataset="shapes",  # "shapes" (synthetic, built in) | "coco" (a COCO-format folder)
        image_size=image_size,  # images are resized to fit S x S and padded
        max_boxes=8,  # ground-truth boxes per image after the transform (extra ones dropped)
        num_train=10**9,  # shapes: training stream length (generated on the fly)
        shapes_image_size=0,  # shapes: side the images are drawn at (0 = image_size)
        shapes_max_objects=6,  # shapes: objects per image, 0..this
        root="",  # coco: dataset folder
        train_annotations="annotations/instances_train.json",  # coco: relative to root
        val_annotations="annotations/instances_val.json",
        train_images="train",  # coco: image folders relative to root
        val_images="val",
        hflip_prob=0.5,  # training augmentation
        scale_min=1.0, scale_max=1.0,  # training scale jitter range
    ))


def evals_config() -> ml_collections.ConfigDict:
    """The default evaluators of every detection task: "coco" on the validation split."""
    return ml_collections.ConfigDict({"coco": {"type": "coco"}})


def validate_data(config: ml_collections.ConfigDict) -> None:
    """Checks the shared ``data`` fields; COCO paths must exist (ConfigError)."""
    check_choices(config, {"data.dataset": ("shapes", "coco")})
    check_ranges(config, _DATA_RANGES)
    d = config.data
    if d.scale_min > d.scale_max:
        raise ConfigError("config: 'data.scale_min' exceeds 'data.scale_max'")
    if d.dataset == "coco":
        if not d.root:
            raise ConfigError("config: 'data.root' must name a COCO-format folder")
        for key in ("train_annotations", "val_annotations", "train_images", "val_images"):
            path = os.path.join(d.root, d[key])
            if not os.path.exists(path):
                raise ConfigError(f"config: 'data.{key}': {path} does not exist")


class DetectionTask(base.Task):
    """Data, transform, evaluator, loss and prediction of a detection task (see the module
    docstring)."""

    criterion: Criterion
    postprocess: Postprocess

    @functools.cached_property
    def num_classes(self) -> int:
        """K: object classes (labels 1..K)."""
        if self.config.data.dataset == "shapes":
            return len(shapes.CLASS_NAMES)
        return len(self._coco("val").label_to_category_id)

    @functools.cache
    def _coco(self, split: str) -> coco_data.CocoDetection:
        d = self.config.data
        return coco_data.CocoDetection(d.root, d[f"{split}_annotations"], d[f"{split}_images"])

    def _shapes(self, split: str, size: int) -> shapes.SyntheticShapes:
        d = self.config.data
        return shapes.SyntheticShapes(size, image_size=d.shapes_image_size or d.image_size,
                                      max_objects=d.shapes_max_objects, seed=self.config.seed,
                                      split=split)

    def _transform(self, train: bool) -> DetectionTransform:
        d = self.config.data
        return DetectionTransform(image_size=d.image_size, max_boxes=d.max_boxes, train=train,
                                  hflip_prob=d.hflip_prob, scale_range=(d.scale_min, d.scale_max))

    def train_source(self):
        if self.config.data.dataset == "coco":
            return self._coco("train")
        return self._shapes("train", self.config.data.num_train)

    def train_transform(self, example, rng):
        return self._transform(train=True)(example, rng)

    def model_inputs(self, batch):
        return {"images": batch["image"], "image_hw": batch["image_hw"]}

    def training_inputs(self, batch, rng) -> dict:
        """Further keyword arguments of the model in training (default: none; the model's
        randomness is its "dropout" rng stream)."""
        del batch, rng
        return {}

    def loss(self, params, model_state, batch, rng):
        outputs, new_state = self.model.apply(
            {"params": params, **model_state}, **self.model_inputs(batch),
            **self.training_inputs(batch, rng), train=True, rngs={"dropout": rng},
            mutable=list(model_state))
        (loss_sum, weight), metrics = self.criterion(outputs, detection_targets(batch))
        return (loss_sum, weight), (metrics, {**model_state, **new_state})

    def predict(self, variables, batch):
        """Detections [B, D]: boxes (xyxy, resized pixels), scores, labels (1..K), valid."""
        outputs = self.model.apply(variables, **self.model_inputs(batch), train=False)
        return self.postprocess(outputs, batch["image_hw"])

    @classmethod
    def evaluator_kinds(cls):
        return {"coco": base.EvaluatorKind(
            defaults=dict(
                num_examples=256,  # shapes: validation images (COCO: the whole val split)
                num_pictures=8,  # validation images drawn with their boxes
                picture_score_threshold=0.3,  # predicted boxes drawn from this score (not scored)
            ),
            ranges={"num_examples": (1, None), "num_pictures": (1, 64),
                    "picture_score_threshold": (0, 1)},
            build=cls.coco_evaluator)}

    def coco_evaluator(self, settings: ml_collections.ConfigDict) -> CocoEvaluator:
        """COCO mAP of `predict` on the validation split (an `evals` entry of kind "coco")."""
        if self.config.data.dataset == "coco":
            source = self._coco("val")
            ground_truth, image_ids = source.coco, source.image_ids
            label_to_category = source.label_to_category_id
        else:
            source = self._shapes("val", settings.num_examples)
            ground_truth = shapes.coco_ground_truth(source)
            image_ids = [image["id"] for image in ground_truth["images"]]
            label_to_category = {i: i for i in range(1, len(shapes.CLASS_NAMES) + 1)}
        names = dict(enumerate(source.class_names, start=1))
        return CocoEvaluator(
            source=source, transform=self._transform(train=False), predict_fn=self.predict,
            coco_gt=ground_truth, image_ids=image_ids, label_to_category_id=label_to_category,
            label_names=names, score_threshold=settings.picture_score_threshold,
            max_images=settings.num_pictures)



def detection_targets(batch) -> DetectionTargets:
    """The padded ground truth of a batch of `DetectionTransform` examples."""
    return DetectionTargets(batch["boxes"], batch["labels"], batch["box_valid"], batch["image_hw"])
