"""Report generation as a trainer evaluator: decode on the devices, score on the host.

`ReportEvaluator` runs a jittable `generate_fn(variables, batch) -> tokens [B, L]` over a split,
decodes the tokens with the vocabulary, and scores the generated reports against the references
as R2Gen does (the cleaned report encoded to `max_len` tokens and decoded again, so truncated and
with rare words as "<unk>"): BLEU-1..4, METEOR, ROUGE-L, CIDEr (`nlg.caption_scores`) and clinical efficacy
(`clinical.clinical_scores` of the labeler's findings on both texts; reference labels come from the
studies, e.g. MIMIC-CXR's CheXpert CSV). `write_outputs` saves every generated report beside its
reference as JSON; `images` draws sample views with both texts.
"""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from PIL import Image, ImageDraw

from mlx_research.data import chexpert
from mlx_research.data.reports import ReportExamples
from mlx_research.evaluation import clinical, nlg
from mlx_research.evaluation.base import Batch, Evaluator, Predictions

_PANEL_WIDTH = 560  # pixels of text beside each picture
_LINE_HEIGHT = 12


class ReportEvaluator(Evaluator):
    """NLG and clinical scores of generated reports on `studies`.

    Args:
      source: the split's examples; its studies give references and labels, its vocabulary
        decodes generated ids, its `max_len` truncates the scored references.
      transform: eval transform ({"images": views, ...} -> {"image": float32 [V, S, S, C], ...}).
      generate_fn: jittable (variables, batch) -> int32 [B, L] generated token ids.
      observations: CheXpert observations scored; `abnormal_observations` get their own macro-F1.
      num_pictures: examples drawn by `images`.
      meteor: score METEOR (needs Java; see `nlg.caption_scores`).
    """

    def __init__(self, source: ReportExamples, transform: Callable[[dict], dict],
                 generate_fn: Callable[[Any, Batch], jax.Array], *,
                 observations: Sequence[str] = chexpert.CHEXPERT_LABELS,
                 abnormal_observations: Sequence[str] = (),
                 num_pictures: int = 4, meteor: bool = True):
        self.source = source
        self.studies, self.vocab, self.max_len = source.studies, source.vocab, source.max_len
        self._transform, self._generate = transform, generate_fn
        self.observations, self.abnormal = tuple(observations), tuple(abnormal_observations)
        self.num_pictures, self.meteor = num_pictures, meteor
        self.generated: dict[int, str] = {}

    def transform(self, example):
        return self._transform(example)

    def predict(self, variables, batch):
        return {"tokens": self._generate(variables, batch)}

    def reset(self) -> None:
        self.generated = {}

    def update(self, predictions: Predictions, indices: np.ndarray) -> None:
        for tokens, index in zip(predictions["tokens"], indices):
            self.generated[int(index)] = self.vocab.decode(tokens)

    def reference(self, index: int) -> str:
        """The scored reference text of study `index`."""
        return self.vocab.decode(self.vocab.encode(self.studies.cleaned(index), self.max_len))

    def _rows(self) -> list[tuple[int, str, str]]:
        return [(i, self.reference(i), self.generated[i]) for i in sorted(self.generated)]

    def result(self) -> dict[str, float]:
        rows = self._rows()
        if not rows:
            raise ValueError("ReportEvaluator.result: no report was generated")
        scores = nlg.caption_scores([r for _, r, _ in rows], [g for _, _, g in rows],
                                    meteor=self.meteor)
        reference = [self.studies.reference_labels(i) for i, _, _ in rows]
        predicted = [chexpert.label_report(g) for _, _, g in rows]
        for key, value in clinical.clinical_scores(reference, predicted, self.observations).items():
            scores[f"clinical_{key}"] = value
        if self.abnormal:
            f1 = clinical.clinical_scores(reference, predicted, self.abnormal)["f1_macro"]
            scores["clinical_f1_macro_abnormal"] = f1
        return {k: float(v) for k, v in scores.items()}

    def write_outputs(self, directory: str, step: int) -> None:
        """<directory>/reports_<step>.json: [{id, reference, generated, labels of both}]."""
        os.makedirs(directory, exist_ok=True)
        rows = [{"id": self.studies.study_id(i), "reference": ref, "generated": gen,
                 "reference_labels": self.studies.reference_labels(i),
                 "generated_labels": chexpert.label_report(gen)} for i, ref, gen in self._rows()]
        path = os.path.join(directory, f"reports_{step:08d}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)

    def images(self, predictions: Predictions, batch: Batch) -> dict[str, np.ndarray]:
        """One picture: per example its first view beside the generated and reference texts."""
        rows = []
        for tokens, index, image in zip(predictions["tokens"][: self.num_pictures],
                                        batch["index"], batch["image"]):
            text = (f"generated: {self.vocab.decode(tokens)}\n\n"
                    f"reference: {self.reference(int(index))}")
            rows.append(_picture_with_text(image[0], text))
        height = sum(r.shape[0] for r in rows)
        canvas = np.zeros((height, max(r.shape[1] for r in rows), 3), np.uint8)
        top = 0
        for row in rows:
            canvas[top: top + row.shape[0], : row.shape[1]] = row
            top += row.shape[0]
        return {"reports": canvas}


def _picture_with_text(view: np.ndarray, text: str) -> np.ndarray:
    """[S, S, C] normalised view (any range) -> uint8 [H, S + panel, 3] with `text` on the right."""
    view = np.asarray(view, np.float64)
    low, high = view.min(), view.max()
    gray = np.uint8(255 * (view - low) / max(high - low, 1e-6))
    gray = np.repeat(gray[..., :1], 3, axis=-1) if gray.shape[-1] != 3 else gray
    lines = [line for paragraph in text.split("\n")
             for line in (textwrap.wrap(paragraph, 90) or [""])]
    height = max(gray.shape[0], _LINE_HEIGHT * len(lines) + 8)
    panel = Image.new("RGB", (gray.shape[1] + _PANEL_WIDTH, height))
    panel.paste(Image.fromarray(gray), (0, 0))
    draw = ImageDraw.Draw(panel)
    for k, line in enumerate(lines):
        draw.text((gray.shape[1] + 6, 4 + k * _LINE_HEIGHT), line, fill=(255, 255, 255))
    return np.asarray(panel)
