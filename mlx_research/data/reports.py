"""Report-generation studies behind one interface: the synthetic chest X-rays or an R2Gen folder.

`SyntheticStudies` and `R2GenStudies` give, per split and study index, the cleaned report, the
cleaned prior report ("" when the patient has none), the images and the reference CheXpert labels;
`ReportExamples` turns them into the arrays the trainer batches (images + report tokens). Text
stays on the host: evaluators look references up by example index.
"""

from __future__ import annotations

import functools
from typing import Protocol

import numpy as np

from mlx_research.data import chexpert, cxr, r2gen
from mlx_research.data.knowledge import default_knowledge, token_tags
from mlx_research.data.pipeline import checked_index, last_index_cache
from mlx_research.data.tokenizer import Vocabulary


class Studies(Protocol):
    """Host-side access to one split's studies."""

    def __len__(self) -> int: ...

    def study_id(self, index: int) -> str: ...

    def cleaned(self, index: int) -> str:
        """The R2Gen-cleaned report."""

    def prior(self, index: int) -> str:
        """The cleaned report of the patient's previous study, "" when there is none."""

    def images(self, index: int) -> list[np.ndarray]:
        """The study's views, uint8 [H, W, C] each (sizes may differ)."""

    def reference_labels(self, index: int) -> dict[str, int]:
        """CheXpert labels of the reference report ({observation: 1 | 0 | -1})."""


class SyntheticStudies:
    """A split of `cxr.SyntheticCXR`: grayscale views [S, S, 1], reports cleaned as IU X-Ray."""

    def __init__(self, num_studies: int, *, split: str, seed: int, image_size: int, views: int,
                 normal_fraction: float, prior_fraction: float):
        self.data = cxr.SyntheticCXR(
            num_studies, image_size=image_size, views=views, seed=seed, split=split,
            normal_fraction=normal_fraction, prior_fraction=prior_fraction)

    def __len__(self) -> int:
        return len(self.data)

    @last_index_cache  # an example asks for several parts of one study
    def _study(self, index: int) -> dict:
        return self.data.study(index)

    def study_id(self, index: int) -> str:
        return self._study(index)["id"]

    def cleaned(self, index: int) -> str:
        return r2gen.clean_report(self._study(index)["report"], "iu_xray")

    def prior(self, index: int) -> str:
        prior = self._study(index)["prior_report"]
        return r2gen.clean_report(prior, "iu_xray") if prior else ""

    def images(self, index: int) -> list[np.ndarray]:
        return [view[..., None] for view in self.data.images(index)]

    def reference_labels(self, index: int) -> dict[str, int]:
        return dict(self._study(index)["chexpert"])


class R2GenStudies:
    """A split of an R2Gen folder; reference labels from the rule-based labeler or, for
    MIMIC-CXR, from the CheXpert label CSV (`chexpert_csv`, keyed by study_id)."""

    def __init__(self, root: str, *, split: str, dataset: str, image_dir: str,
                 annotation_file: str, chexpert_csv: str = ""):
        self.dataset = dataset
        self.annotations = r2gen.R2GenAnnotations(
            root, split, dataset, image_dir=image_dir, annotation_file=annotation_file)
        self.csv_labels = chexpert.read_chexpert_csv(chexpert_csv) if chexpert_csv else None
        self._priors = _previous_studies(self.annotations) if dataset == "mimic_cxr" else {}

    def __len__(self) -> int:
        return len(self.annotations)

    def study_id(self, index: int) -> str:
        return str(self.annotations.entry(index)["id"])

    def cleaned(self, index: int) -> str:
        return self.annotations.entry(index)["cleaned"]

    def prior(self, index: int) -> str:
        previous = self._priors.get(index)
        return "" if previous is None else self.cleaned(previous)

    def images(self, index: int) -> list[np.ndarray]:
        return self.annotations.load_images(index)

    @functools.lru_cache(maxsize=None)
    def reference_labels(self, index: int) -> dict[str, int]:
        if self.csv_labels is not None:
            study = str(self.annotations.entry(index).get("study_id", ""))
            if study in self.csv_labels:
                return dict(self.csv_labels[study])
        return chexpert.label_report(self.cleaned(index))


def _previous_studies(annotations: r2gen.R2GenAnnotations) -> dict[int, int]:
    """MIMIC-CXR: index -> index of the same subject's previous study in the split (by study_id
    order), for studies that have one."""
    by_subject: dict[str, list[tuple[str, int]]] = {}
    for i in range(len(annotations)):
        entry = annotations.entry(i)
        by_subject.setdefault(str(entry.get("subject_id", "")), []).append((str(entry["study_id"]), i))
    previous = {}
    for subject, studies in by_subject.items():
        if not subject:
            continue
        ordered = [i for _, i in sorted(studies)]
        previous.update(zip(ordered[1:], ordered[:-1]))
    return previous


class ReportExamples:
    """Grain source over `studies`: {"images": list of uint8 [H, W, C] views, "tokens": int32
    [max_len] (report ids, EOS, PAD)}; the image transform stacks the views.

    With `extras` (NADM / MKMIA) also, per study: "token_tags" int32 [max_len] (`knowledge.TAGS`
    index of each report token; EOS and padding 0), "prior_tokens" int32 [max_len] (the prior
    report, all PAD when there is none) and "labels" float32 [len(observations)] (1 where the
    reference's CheXpert label is positive).
    """

    def __init__(self, studies: Studies, vocab: Vocabulary, max_len: int, *, extras: bool = False,
                 knowledge: dict | None = None,
                 observations: tuple[str, ...] = chexpert.CHEXPERT_LABELS):
        self.studies, self.vocab, self.max_len = studies, vocab, max_len
        self.extras, self.observations = extras, observations
        self.knowledge = knowledge if knowledge is not None else default_knowledge()

    def __len__(self) -> int:
        return len(self.studies)

    def __getitem__(self, index: int) -> dict:
        index = checked_index(index, len(self))
        cleaned = self.studies.cleaned(index)
        example = {"images": self.studies.images(index),
                   "tokens": self.vocab.encode(cleaned, self.max_len)}
        if self.extras:
            words = cleaned.split()[: self.max_len - 1]  # encode keeps these, then EOS
            tags = np.zeros(self.max_len, np.int32)
            tags[: len(words)] = token_tags(words, self.knowledge)
            labels = self.studies.reference_labels(index)
            example.update(
                token_tags=tags,
                prior_tokens=self.vocab.encode(self.studies.prior(index), self.max_len)
                if self.studies.prior(index) else np.zeros(self.max_len, np.int32),
                labels=np.array([labels.get(name) == 1 for name in self.observations], np.float32))
        return example
