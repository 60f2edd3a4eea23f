"""Radiology report generation with R2Gen on the synthetic chest X-rays (default) or an R2Gen
folder (IU X-Ray, MIMIC-CXR).

Loss: token cross-entropy summed over the non-padding report tokens (EOS included), normalised by
their number. Evaluator kind "report": beam-search (or greedy) decoding of a split, scored
by BLEU-1..4 / METEOR / ROUGE-L / CIDEr and clinical precision/recall/F1 (micro and macro over the
14 CheXpert observations, or the 8 the synthetic data can produce; `clinical_f1_macro_abnormal`
over those other than "No Finding"),
the generated reports saved beside their references in <workdir>/eval/<name>/reports_<step>.json.
The vocabulary (train split, count threshold) is saved as <workdir>/vocab.json.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from mlx_research.config_checks import check_choices, check_ranges, from_config
from mlx_research.data import cxr, r2gen
from mlx_research.data.chexpert import CHEXPERT_LABELS
from mlx_research.data.knowledge import default_knowledge, load_knowledge
from mlx_research.data.report_transforms import ReportImageTransform
from mlx_research.data.reports import R2GenStudies, ReportExamples, SyntheticStudies
from mlx_research.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, Vocabulary
from mlx_research.errors import ConfigError
from mlx_research.evaluation.report import ReportEvaluator
from mlx_research.losses.classification import cross_entropy
from mlx_research.models.decoding import Cache, Step, search, shift_right
from mlx_research.models.report.r2gen import R2Gen, make_step
from mlx_research.train.tasks import base
from mlx_research.train.tasks.backbone import check_backbone_config

_RANGES = {
    "data.threshold": (-1, None),
    "data.max_len": (-1, None),
    "data.resize": (8, None),
    "data.crop": (8, None),
    "data.image_size": (16, None),
    "data.views": (1, 2),
    "data.num_train": (1, None),
    "data.vocab_studies": (1, None),
    "data.normal_fraction": (0, 1),
    "data.prior_fraction": (0, 1),
}
_DEFAULTS = {"synthetic": dict(threshold=3, max_len=60), **{
    name: dict(threshold=d["threshold"], max_len=d["max_len"]) for name, d in r2gen.DEFAULTS.items()}}
_SYNTHETIC_MEAN, _SYNTHETIC_STD = (0.5,), (0.25,)  # grayscale renderings in [0, 1]


class Task(base.Task):
    """R2Gen: image patches -> Transformer encoder -> memory-driven decoder -> report.

    Subclasses (NADM, MKMIA) set `model_parts`, replace `_build_model`, `loss` and
    `decoding_step`, and set `uses_extras` to get token tags, prior reports and labels in every
    example.
    """

    model_parts = (R2Gen,)
    uses_extras = False

    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        c = super().default_config()
        c.data = ml_collections.ConfigDict(dict(
            dataset="synthetic",  # "synthetic" (built in) | "iu_xray" | "mimic_cxr" (R2Gen folders)
            root="",  # R2Gen folder: annotation.json + image_dir
            image_dir="images",  # relative to root
            annotation_file="annotation.json",  # relative to root
            chexpert_csv="",  # MIMIC-CXR: mimic-cxr-2.0.0-chexpert.csv for the reference labels
            threshold=-1,  # vocabulary: minimum train count (-1: 3 synthetic / IU X-Ray, 10 MIMIC)
            max_len=-1,  # report tokens incl. EOS (-1: 60 synthetic / IU X-Ray, 100 MIMIC)
            resize=256, crop=224,  # train: resize shorter side + random crop; eval: resize to crop
            hflip=True,  # train: random horizontal flip (R2Gen's; it swaps left and right findings)
            image_size=128,  # synthetic: rendered view size
            views=2,  # synthetic: views per study (R2Gen folders: 2 IU X-Ray, 1 MIMIC-CXR)
            num_train=10**6,  # synthetic: training studies (rendered on the fly)
            vocab_studies=5000,  # synthetic: train studies the vocabulary is counted on
            normal_fraction=0.5,  # synthetic: studies without findings
            prior_fraction=0.3,  # synthetic: studies with a prior study of the patient
            knowledge_file="",  # knowledge dictionary JSON ("": <root>/knowledge.json if present,
            # else the built-in one; synthetic: the generator's)
        ))
        c.evals = ml_collections.ConfigDict({"report": {"type": "report"}})
        return c

    @classmethod
    def evaluator_kinds(cls):
        return {"report": base.EvaluatorKind(
            defaults=dict(
                split="test",  # "val" | "test"
                num_examples=500,  # synthetic: studies in the split
                beam_size=3,  # 1 = greedy
                length_penalty=0.0,  # beam score = log-prob sum / length ** penalty (0: R2Gen's)
                num_pictures=4,  # studies drawn with their reports
                meteor=True,  # score METEOR (Java; skipped with a notice when Java is missing)
            ),
            ranges={"num_examples": (1, None), "beam_size": (1, None),
                    "length_penalty": (0, None), "num_pictures": (1, 64)},
            choices={"split": ("val", "test")},
            build=cls.report_evaluator)}

    @classmethod
    def validate_config(cls, config: ml_collections.ConfigDict) -> None:
        super().validate_config(config)
        check_backbone_config(config)
        check_choices(config, {
            "data.dataset": ("synthetic", *r2gen.DATASETS),
        })
        check_ranges(config, _RANGES)
        m, d = config.model, config.data
        for width, heads in (("d_model", "num_heads"), ("rm_d_model", "rm_num_heads")):
            if m[width] % m[heads]:
                raise ConfigError(f"config: 'model.{width}' = {m[width]} is not divisible by "
                                  f"'model.{heads}' = {m[heads]}")
        if d.crop > d.resize:
            raise ConfigError(f"config: 'data.crop' = {d.crop} exceeds 'data.resize' = {d.resize}")
        if d.dataset == "synthetic":
            return
        if not d.root:
            raise ConfigError(f"config: 'data.root' must name an R2Gen folder ({d.dataset})")
        for key in ("annotation_file", "image_dir", "chexpert_csv", "knowledge_file"):
            path = os.path.join(d.root, d[key]) if key in ("annotation_file", "image_dir") else d[key]
            if path and not os.path.exists(path):
                raise ConfigError(f"config: 'data.{key}': {path} does not exist")

    def __init__(self, config: ml_collections.ConfigDict, dtype: Any):
        super().__init__(config, dtype)
        d = config.data
        defaults = _DEFAULTS[d.dataset]
        self.threshold = defaults["threshold"] if d.threshold < 0 else d.threshold
        self.max_len = defaults["max_len"] if d.max_len < 0 else d.max_len
        train = self._studies("train", d.num_train)
        if d.dataset == "synthetic":
            reports = (train.cleaned(i) for i in range(min(d.vocab_studies, len(train))))
        else:
            reports = (train.cleaned(i) for i in range(len(train)))
        self.vocab = Vocabulary.build(reports, self.threshold)
        self.model = self._build_model()

    def _build_model(self):
        return from_config(R2Gen, self.config.model, vocab_size=self.output_size(),
                           max_len=self.max_len, pad_id=PAD_ID, dtype=self.dtype)

    def output_size(self) -> int:
        """Vocabulary rounded up to a multiple of 8, so that the "vocab" axis of the embedding and
        output layer splits over tensor-parallel devices; the extra ids never occur in the data
        (training pushes their logits down) and decode as "<unk>"."""
        return -(-len(self.vocab) // 8) * 8

    # ------------------------------------------------------------------ data
    @functools.cache
    def _studies(self, split: str, num_examples: int):
        """The studies of `split`; synthetic: `num_examples` of them (R2Gen folders: all)."""
        d = self.config.data
        if d.dataset == "synthetic":
            return SyntheticStudies(num_examples, split=split, seed=self.config.seed,
                                    image_size=d.image_size, views=d.views,
                                    normal_fraction=d.normal_fraction,
                                    prior_fraction=d.prior_fraction)
        return R2GenStudies(d.root, split=split, dataset=d.dataset, image_dir=d.image_dir,
                            annotation_file=d.annotation_file, chexpert_csv=d.chexpert_csv)

    def _examples(self, split: str, num_examples: int) -> ReportExamples:
        return ReportExamples(self._studies(split, num_examples), self.vocab, self.max_len,
                              extras=self.uses_extras, knowledge=self.knowledge(),
                              observations=self.observations())

    @functools.cache
    def knowledge(self) -> dict:
        """The knowledge dictionary (organ -> aliases, normal descriptions, abnormal terms)."""
        d = self.config.data
        if d.dataset == "synthetic":
            return cxr.knowledge_dictionary()
        path = d.knowledge_file or os.path.join(d.root, "knowledge.json")
        return load_knowledge(path) if os.path.exists(path) else default_knowledge()

    def _image_transform(self, train: bool) -> ReportImageTransform:
        d = self.config.data
        stats = dict(mean=_SYNTHETIC_MEAN, std=_SYNTHETIC_STD) if d.dataset == "synthetic" else {}
        return ReportImageTransform(resize=d.resize, crop=d.crop, train=train,
                                          hflip=d.hflip, **stats)

    def prepare_workdir(self, workdir: str) -> None:
        """Saves vocab.json; a workdir whose vocabulary differs (other data) is refused."""
        path = os.path.join(workdir, "vocab.json")
        if os.path.exists(path):
            saved = Vocabulary.load(path)
            if saved.words != self.vocab.words:
                raise ConfigError(f"{path}: the vocabulary of this workdir differs from the one "
                                  f"built from the data now (data changed? use a new workdir)")
            return
        self.vocab.save(path)

    def train_source(self):
        return self._examples("train", self.config.data.num_train)

    def train_transform(self, example, rng):
        image = self._image_transform(train=True)(example["images"], rng)
        return {**{k: v for k, v in example.items() if k != "images"}, "image": image}

    def eval_transform(self, example):
        image = self._image_transform(train=False)(example["images"], None)
        return {**{k: v for k, v in example.items() if k != "images"}, "image": image}

    def model_inputs(self, batch):
        return {"images": batch["image"], "decoder_inputs": shift_right(batch["tokens"], BOS_ID)}

    # ------------------------------------------------------------------ loss
    def loss(self, params, model_state, batch, rng):
        logits, new_state = self.model.apply(
            {"params": params, **model_state}, **self.model_inputs(batch), train=True,
            rngs={"dropout": rng}, mutable=list(model_state))
        tokens = batch["tokens"]
        real = tokens != PAD_ID
        loss_sum = cross_entropy(logits, tokens, ignore_index=PAD_ID, reduction="sum")
        accuracy = jnp.sum((logits.argmax(-1) == tokens) & real) / jnp.maximum(real.sum(), 1)
        metrics = {"token_accuracy_teacher_forced": accuracy}
        return (loss_sum, real.sum()), (metrics, {**model_state, **new_state})

    # ------------------------------------------------------------------ evaluation
    def decoding_step(self, variables, batch) -> tuple[Step, Cache]:
        """The model's decoding step over a batch's studies, and its initial cache."""
        return make_step(self.model, variables, batch["image"], self.max_len)

    def generate(self, variables, batch, beam_size: int, length_penalty: float) -> jax.Array:
        """Generated report ids [B, max_len] (beam search, or greedy with beam_size = 1)."""
        step, cache = self.decoding_step(variables, batch)
        return search(step, cache, beam_size, batch_size=batch["image"].shape[0],
                      max_len=self.max_len, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID,
                      length_penalty=length_penalty)

    def report_evaluator(self, settings: ml_collections.ConfigDict) -> ReportEvaluator:
        """Reports generated for `settings.split`, scored (an `evals` entry of kind "report")."""
        observations = self.observations()
        abnormal = tuple(name for name in observations if name != "No Finding")
        generate_fn = functools.partial(self.generate, beam_size=settings.beam_size,
                                        length_penalty=settings.length_penalty)
        return ReportEvaluator(
            self._examples(settings.split, settings.num_examples), self.eval_transform,
            generate_fn, observations=observations, abnormal_observations=abnormal,
            num_pictures=settings.num_pictures, meteor=settings.meteor)

    def observations(self) -> tuple[str, ...]:
        """CheXpert observations scored: all 14 on real data; on the synthetic data the 8 it can
        make positive (the other 6 would score F1 = 0 for any model and cap macro-F1 at 8/14)."""
        return cxr.OBSERVATIONS if self.config.data.dataset == "synthetic" else CHEXPERT_LABELS
