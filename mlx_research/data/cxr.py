"""Synthetic chest X-ray studies: rendered radiographs, reports, CheXpert labels, priors.

Study ``i`` of a split is a pure function of ``(seed, split, i)``: nothing is stored, any process
renders any index, and the train/val/test streams hold different patients. Half the studies
(``normal_fraction``) are normal; the others carry 1 finding (60%), 2 (32%) or 3 (8%) of
`FINDINGS` with a *grade*: 0 = mild, reported with uncertainty ("Possible small nodule ...",
CheXpert label -1), 1..3 = small/moderate/large (label 1). Severities lie in gapped bands per
grade (0.15-0.25, 0.40-0.50, 0.65-0.75, 0.90-1.00) so grades stay apart in the image.

Images (uint8 [views, S, S]): view 0 is frontal PA, so the patient's LEFT is on the image RIGHT
(x grows to the patient's left); view 1 is a lateral with anterior on the image left. Anatomy:
dark background, soft-tissue body, dark lung fields with vessel texture, ribs, clavicles, spine,
bright heart and mediastinum, per-study jitter of position/size/contrast, gaussian noise. A small
bright corner marker names the reading site, whose template style the report mostly follows
(paraphrase choice: 2-3 variants per sentence type). See `render_views` for the findings.

Reports: sentences in a fixed organ order (devices, heart, mediastinum, lungs, pleural effusion,
pneumothorax, bones, "no acute ..." for normal studies), a finding replacing its organ's normal
sentence. With probability ``prior_fraction`` the patient has a prior study, a perturbation of the
current one: its findings are kept ("Unchanged ..."), missing ("New ...") or extra ("Previously
seen ... has resolved.", "Interval removal of ...": label 0, a normal sentence).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from mlx_research.data.cxr_render import FINDINGS, render_views
from mlx_research.data.knowledge import default_knowledge
from mlx_research.data.pipeline import checked_index, last_index_cache

CHEXPERT = {"cardiomegaly": "Cardiomegaly", "effusion_left": "Pleural Effusion",
            "effusion_right": "Pleural Effusion", "pneumothorax": "Pneumothorax",
            "nodule": "Lung Lesion", "consolidation": "Consolidation",
            "atelectasis": "Atelectasis", "support_devices": "Support Devices"}
"""Finding -> the CheXpert observation its sentences mention."""
OBSERVATIONS = ("No Finding", "Cardiomegaly", "Lung Lesion", "Consolidation", "Atelectasis",
                "Pneumothorax", "Pleural Effusion", "Support Devices")
"""The CheXpert observations that can be positive in the synthetic reports (score macro-F1 over
these: an observation without any positive scores 0 under sklearn's zero_division=0)."""
LOBES = ("right upper lobe", "right middle lobe", "right lower lobe", "left upper lobe",
         "left lower lobe")
DEVICES = ("endotracheal tube", "right internal jugular catheter", "left chest wall pacemaker")
_SPLITS = {"train": 0, "val": 1, "test": 2}
_WEIGHTS = np.array([0.17, 0.12, 0.12, 0.09, 0.12, 0.12, 0.12, 0.14])
_SITE_P = (0.5, 0.3, 0.2)  # reading sites = template styles; a site's variant is used 85%

# ------------------------------------------------------------------------------- report text
_NORMAL = {  # slot -> variants (sentence, {CheXpert observation: label})
    "heart": (("The heart is normal in size.", {"Cardiomegaly": 0}),
              ("Heart size is normal.", {"Cardiomegaly": 0}),
              ("The cardiac silhouette is within normal limits.", {"Cardiomegaly": 0})),
    "mediastinum": (("The mediastinal contours are normal.", {"Enlarged Cardiomediastinum": 0}),
                    ("The mediastinum is unremarkable.", {"Enlarged Cardiomediastinum": 0}),
                    ("Mediastinal contours are within normal limits.",
                     {"Enlarged Cardiomediastinum": 0})),
    "lungs": (("The lungs are clear.", {}), ("The lungs are well expanded and clear.", {}),
              ("The lungs are clear without focal consolidation.", {"Consolidation": 0})),
    "effusion": (("There is no pleural effusion.", {"Pleural Effusion": 0}),
                 ("No pleural effusion.", {"Pleural Effusion": 0}),
                 ("No pleural effusion is seen.", {"Pleural Effusion": 0})),
    "pneumothorax": (("There is no pneumothorax.", {"Pneumothorax": 0}),
                     ("No pneumothorax.", {"Pneumothorax": 0}),
                     ("No pneumothorax is identified.", {"Pneumothorax": 0})),
    "bones": (("The osseous structures are intact.", {}), ("No acute osseous abnormality.", {}),
              ("Visualized osseous structures are unremarkable.", {})),
    "impression": (("No acute cardiopulmonary abnormality.", {}),
                   ("No acute cardiopulmonary process.", {})),
}
_SLOT = {"support_devices": "devices", "cardiomegaly": "heart", "nodule": "lungs",
         "consolidation": "lungs", "atelectasis": "lungs", "effusion_right": "effusion",
         "effusion_left": "effusion", "pneumothorax": "pneumothorax"}
_SLOTS = ("devices", "heart", "mediastinum", "lungs", "effusion", "pneumothorax", "bones")
# Templates per status (current, unchanged, new, resolved); {a} is "a" or "an" before {np}.
_COUNT = (("There is {a} {np}.", "{Np}.", "{A} {np} is present."),
          ("Unchanged {np}.", "Stable {np}."),
          ("New {np}.", "Interval development of {a} {np}."),
          ("Previously seen {np} has resolved.", "Interval resolution of the {np}."))
_MASS = (("There is {np}.", "{Np}.", "{Np} is present."), _COUNT[1],
         ("New {np}.", "Interval development of {np}."), _COUNT[3])
_DEVICE = (("{Np} in place.", "There is {a} {np} in place.", "{Np} in standard position."),
           ("{Np} unchanged in position.", "Stable {np}."),
           ("Interval placement of {a} {np}.", "New {np}."),
           ("Interval removal of the {np}.", "The {np} has been removed."))
_HEART = (("The heart is {adv} enlarged.", "There is {np}.",
           "The cardiac silhouette is {adv} enlarged."),
          ("Unchanged {np}.", "Stable {np}."), ("New {np}.",), ())
_UNCERTAIN = ("Possible {np}.", "{Np} cannot be excluded.")
_HEART_UNCERTAIN = ("Heart size is borderline.", "Borderline cardiomegaly.",
                    "The cardiac silhouette is borderline enlarged.")
_STATUS = ("current", "unchanged", "new", "resolved")


def _noun_phrase(name: str, d: dict) -> str:
    """The finding's noun phrase at grade ``d["grade"]`` (grade 0: the mild wording)."""
    g, where = d["grade"], d.get("side") or d.get("lobe")
    size = ("small", "small", "moderate", "large")[g]
    if name.startswith("effusion"):
        return f"{'trace' if g == 0 else size} {where} pleural effusion"
    if name == "pneumothorax":
        return f"tiny {where} apical pneumothorax" if g == 0 else f"{size} {where} pneumothorax"
    if name == "nodule":
        return f"{('small nodule', 'small nodule', 'nodule', 'mass')[g]} in the {where}"
    if name == "consolidation":
        return f"{('', 'patchy ', '', 'dense ')[g]}consolidation in the {where}"
    if name == "atelectasis":
        kind = ("subsegmental", "subsegmental", "segmental", "lobar")[g]
        return f"{kind} atelectasis in the {where}"
    if name == "cardiomegaly":
        return f"{('mild', 'mild', 'moderate', 'severe')[g]} cardiomegaly"
    return DEVICES[d["device"]]


def _sentence(name: str, d: dict, status: str, pick) -> tuple[str, bool, dict[str, int]]:
    """(sentence, abnormal, {CheXpert observation: label}) of one finding."""
    if d["grade"] == 0 and status != "resolved":
        text, label = pick(_HEART_UNCERTAIN if name == "cardiomegaly" else _UNCERTAIN), -1
    else:
        table = (_DEVICE if name == "support_devices" else _HEART if name == "cardiomegaly"
                 else _COUNT if name in ("nodule", "pneumothorax", "effusion_left",
                                         "effusion_right") else _MASS)
        text, label = pick(table[_STATUS.index(status)]), 0 if status == "resolved" else 1
    phrase = _noun_phrase(name, d)
    article = "an" if phrase[0] in "aeiou" else "a"
    text = text.format(np=phrase, Np=phrase[0].upper() + phrase[1:], a=article,
                       A=article.title(), adv=("", "mildly", "moderately", "markedly")[d["grade"]])
    return text, label != 0, {CHEXPERT[name]: label}


def _report(details: dict, status: dict, resolved: dict, site: int,
            rng: np.random.Generator) -> list[tuple[str, bool, dict[str, int]]]:
    """The report's sentences with their abnormality and labels (see the module docstring)."""
    def pick(variants):
        keep = rng.random() < 0.85
        return variants[site % len(variants) if keep else int(rng.integers(len(variants)))]

    slots = {slot: [] for slot in _SLOTS}
    for name in FINDINGS:
        if name in details:
            slots[_SLOT[name]].append(_sentence(name, details[name], status[name], pick))
        elif name in resolved:
            slots[_SLOT[name]].append(_sentence(name, resolved[name], "resolved", pick))
    sentences = []
    for slot in _SLOTS:
        if slots[slot] or slot == "devices":
            sentences += slots[slot]
        else:
            text, labels = pick(_NORMAL[slot])
            sentences.append((text, False, labels))
    if not details:
        text, labels = pick(_NORMAL["impression"])
        sentences.append((text, False, labels))
    return sentences


def _aggregate(sentences) -> dict[str, int]:
    """CheXpert's aggregation of sentence labels (positive > uncertain > negative)."""
    votes: dict[str, list[int]] = {}
    for _, _, labels in sentences:
        for name, value in labels.items():
            votes.setdefault(name, []).append(value)
    result = {n: 1 if 1 in v else -1 if -1 in v else 0 for n, v in votes.items()}
    if not any(v != 0 for n, v in result.items() if n != "Support Devices"):
        result["No Finding"] = 1
    return result


def _format(sentences: list[str], rng: np.random.Generator) -> str:
    """Raw report text: usually one space between sentences; sometimes "1. ... 5." numbering of
    the first five sentences or double spaces (R2Gen's cleaning removes both)."""
    u = rng.random()
    if u < 0.1:
        return " ".join(f"{i + 1}. {s}" if i < 5 else s for i, s in enumerate(sentences))
    if u < 0.2:
        return "  ".join(sentences)
    return " ".join(sentences)


# ------------------------------------------------------------------------------- studies
def _draw_finding(name: str, rng: np.random.Generator, grade: int | None = None) -> dict:
    if name == "support_devices":
        return {"severity": 1.0, "grade": 2, "device": int(rng.integers(len(DEVICES)))}
    grade = int(rng.choice(4, p=[0.2, 0.35, 0.3, 0.15])) if grade is None else grade
    d = {"severity": float(rng.uniform(0.15, 0.25) + 0.25 * grade), "grade": grade}
    if name.startswith("effusion"):
        d["side"] = name.split("_")[1]
    elif name == "pneumothorax":
        d["side"] = ("left", "right")[int(rng.integers(2))]
    elif name != "cardiomegaly":
        lobes = LOBES if name != "atelectasis" else LOBES[1:3] + LOBES[4:]
        d["lobe"] = lobes[int(rng.integers(len(lobes)))]
    return d


class SyntheticCXR:
    """Random-access synthetic chest X-ray studies (see the module docstring).

    Args:
      num_studies: ``len(self)``.
      image_size: side S of the square views, >= 32.
      views: 1 (frontal, MIMIC-CXR-like) or 2 (frontal + lateral, IU X-Ray-like).
      seed: base seed >= 0.
      split: "train", "val" or "test" (disjoint patients).
      normal_fraction: probability of a study without findings.
      prior_fraction: probability that the patient has a prior study.
    """

    def __init__(self, num_studies: int, *, image_size: int = 128, views: int = 2, seed: int = 0,
                 split: str = "train", normal_fraction: float = 0.5, prior_fraction: float = 0.3):
        if split not in _SPLITS:
            raise ValueError(f"split={split!r} must be one of {sorted(_SPLITS)}.")
        if num_studies < 0 or image_size < 32 or views not in (1, 2) or seed < 0:
            raise ValueError(f"need num_studies={num_studies} >= 0, image_size={image_size} >= "
                             f"32, views={views} in (1, 2), seed={seed} >= 0.")
        for name, value in (("normal_fraction", normal_fraction),
                            ("prior_fraction", prior_fraction)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value} must lie in [0, 1].")
        self.num_studies, self.image_size, self.views = num_studies, image_size, views
        self.seed, self.split = seed, split
        self.normal_fraction, self.prior_fraction = normal_fraction, prior_fraction

    def __len__(self) -> int:
        return self.num_studies

    def _rng(self, index: int, stream: int) -> np.random.Generator:
        index = checked_index(index, self.num_studies)
        return np.random.default_rng([self.seed, _SPLITS[self.split], index, stream])

    @last_index_cache  # study() and images() of one index draw once
    def _draw(self, index: int) -> tuple[int, dict, dict, dict | None]:
        """(site, current findings, status per finding, prior findings or None); read only."""
        rng = self._rng(index, 0)
        site = int(rng.choice(3, p=_SITE_P))
        details = {}
        if rng.random() >= self.normal_fraction:
            count = int(rng.choice([1, 2, 3], p=[0.6, 0.32, 0.08]))
            chosen = rng.choice(len(FINDINGS), count, replace=False, p=_WEIGHTS / _WEIGHTS.sum())
            details = {FINDINGS[i]: _draw_finding(FINDINGS[i], rng) for i in sorted(chosen)}
        status = {name: "current" for name in details}
        if rng.random() >= self.prior_fraction:
            return site, details, status, None
        prior = {}
        for name, d in details.items():
            if d["grade"] == 0 or rng.random() < 0.6:
                prior[name] = d
                status[name] = "current" if d["grade"] == 0 else "unchanged"
            else:
                status[name] = "new"
        gone = [n for n in FINDINGS if n not in details and n != "cardiomegaly"]
        if rng.random() < 0.5:
            name = gone[int(rng.integers(len(gone)))]
            prior[name] = _draw_finding(name, rng, grade=int(rng.integers(1, 4)))
        return site, details, status, prior

    def study(self, index: int) -> dict:
        """The study's text and labels: {"id", "patient_id", "report", "prior_report",
        "findings" (finding -> severity), "details" (finding -> severity, grade, side / lobe /
        device), "chexpert" (what `chexpert.label_report(report)` returns), "sentences"
        ([(raw sentence, abnormal)]), "site"}."""
        index = checked_index(index, self.num_studies)
        site, details, status, prior = self._draw(index)
        rng = self._rng(index, 2)
        resolved = {n: d for n, d in (prior or {}).items() if n not in details}
        sentences = _report(details, status, resolved, site, rng)
        prior_report = ""
        if prior is not None:
            old = _report(prior, {n: "current" for n in prior}, {}, site, rng)
            prior_report = _format([s for s, _, _ in old], rng)
        return {"id": f"cxr-{self.split}-{index:07d}",
                "patient_id": f"patient-{self.split}-{index:07d}",
                "report": _format([s for s, _, _ in sentences], rng),
                "prior_report": prior_report,
                "findings": {n: d["severity"] for n, d in details.items()},
                "details": {n: dict(d) for n, d in details.items()},
                "chexpert": _aggregate(sentences),
                "sentences": [(s, abnormal) for s, abnormal, _ in sentences],
                "site": site}

    def images(self, index: int) -> np.ndarray:
        """uint8 [views, S, S]: view 0 frontal PA (patient's left on the image right), view 1
        lateral (anterior on the image left)."""
        site, details, _, _ = self._draw(index)
        return render_views(details, self._rng(index, 1), self.image_size, self.views, site)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        """{"images": uint8 [views, S, S], "index": int64 scalar}."""
        index = checked_index(index, self.num_studies)
        return {"images": self.images(index), "index": np.int64(index)}


def knowledge_dictionary() -> dict:
    """The knowledge dictionary of the synthetic reports (`knowledge.default_knowledge()`)."""
    return default_knowledge()


def write_r2gen(root: str | os.PathLike, num_train: int, num_val: int, num_test: int,
                **kwargs) -> Path:
    """Writes synthetic studies as an R2Gen folder.

    ``root/annotation.json`` holds {"train", "val", "test"} lists of entries {"id", "report",
    "image_path": ["<id>/0.png"(, "<id>/1.png")], "split", "prior_report"}, plus MIMIC-CXR's
    integer "study_id" and "subject_id" when ``views == 1``; the PNGs lie under
    ``root/images/``; ``root/knowledge.json`` is `knowledge_dictionary()`.

    Args:
      root: the folder (created).
      num_train, num_val, num_test: studies per split.
      **kwargs: `SyntheticCXR` arguments (image_size, views, seed, normal_fraction,
        prior_fraction).

    Returns:
      The path of annotation.json.
    """
    from PIL import Image

    root = Path(root)
    annotation = {}
    for split, count in (("train", num_train), ("val", num_val), ("test", num_test)):
        data = SyntheticCXR(count, split=split, **kwargs)
        entries = []
        for i in range(count):
            study, images = data.study(i), data.images(i)
            paths = [f"{study['id']}/{v}.png" for v in range(len(images))]
            (root / "images" / study["id"]).mkdir(parents=True, exist_ok=True)
            for path, image in zip(paths, images):
                Image.fromarray(image).save(root / "images" / path, compress_level=1)
            entry = {"id": study["id"], "report": study["report"], "image_path": paths,
                     "split": split, "prior_report": study["prior_report"]}
            if data.views == 1:
                entry["study_id"] = 50_000_000 + 10_000_000 * _SPLITS[split] + i
                entry["subject_id"] = 10_000_000 + 10_000_000 * _SPLITS[split] + i
            entries.append(entry)
        annotation[split] = entries
    (root / "knowledge.json").write_text(json.dumps(knowledge_dictionary(), indent=1))
    path = root / "annotation.json"
    path.write_text(json.dumps(annotation))
    return path
