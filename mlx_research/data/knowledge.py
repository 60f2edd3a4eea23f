"""Radiology knowledge dictionary and per-token normal/abnormal tags of cleaned reports.

A knowledge dictionary is a JSON-serialisable dict ``{organ: {"aliases": [...], "normal":
[...], "abnormal": [...]}}``: the organ's names ("heart", "cardiac silhouette"), normal
descriptions ("the heart is normal in size") and abnormality candidate terms ("cardiomegaly",
"enlarged"). Every entry is a lowercase phrase of space-separated words, as in an R2Gen-cleaned
report. `default_knowledge()` covers the synthetic studies of `mlx_research.data.cxr` and the
common IU X-Ray / MIMIC-CXR vocabulary; `load_knowledge` reads and checks a JSON file of it.

`token_tags` gives each token of a cleaned report one of `TAGS` (NADM's token types).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

TAGS = ("normal_sentence", "abnormal_sentence", "normal_semantic", "abnormal_semantic")
"""Token tag names; a tag is its index here (0..3)."""

FIELDS = ("aliases", "normal", "abnormal")

# Words that qualify an abnormality (side, location, size, grade, certainty, change).
MODIFIERS = frozenset(
    "left right bilateral bibasilar basilar apical upper middle lower lobe lobes base bases apex "
    "small moderate large tiny trace minimal mild mildly moderately severe severely markedly "
    "marked subsegmental segmental lobar patchy dense focal multifocal diffuse possible possibly "
    "probable likely new unchanged stable persistent increased decreased increasing improved "
    "worsening".split())
STOPWORDS = frozenset(
    "a an the is are was were be been of in on at to and or with there this that it its for by "
    "as has have seen".split())
_PRE_NEGATION = ("no", "not", "without", "negative for", "free of", "clear of", "absence of",
                 "resolution of", "removal of")
_POST_NEGATION = ("resolved", "removed", "absent", "not seen", "not identified", "not present",
                  "no longer")
_PSEUDO_NEGATION = ("no change", "no interval change", "no significant change", "can not",
                    "not excluded", "not be excluded")
_SCOPE_END = frozenset("but however although though which except whereas".split())

_DEFAULT = {
    "heart": {
        "aliases": ["heart", "heart size", "cardiac", "cardiac silhouette", "cardiac contour"],
        "normal": ["the heart is normal in size", "heart size is normal",
                   "the cardiac silhouette is within normal limits", "no cardiomegaly"],
        "abnormal": ["cardiomegaly", "enlarged", "enlargement", "borderline",
                     "pericardial effusion"],
    },
    "mediastinum": {
        "aliases": ["mediastinum", "mediastinal", "mediastinal contours", "cardiomediastinal",
                    "cardiomediastinal silhouette", "hilar", "hila", "trachea", "aorta"],
        "normal": ["the mediastinal contours are normal", "the mediastinum is unremarkable",
                   "mediastinal contours are within normal limits", "the trachea is midline",
                   "normal cardiomediastinal silhouette"],
        "abnormal": ["widened", "widening", "tortuous", "tortuosity", "calcification",
                     "calcified", "lymphadenopathy", "hiatal hernia"],
    },
    "lung": {
        "aliases": ["lung", "lungs", "lung volumes", "lobe", "parenchyma", "pulmonary",
                    "pulmonary vascularity", "airspace"],
        "normal": ["the lungs are clear", "the lungs are well expanded and clear",
                   "no focal airspace consolidation", "pulmonary vascularity is normal",
                   "normal lung volumes"],
        "abnormal": ["consolidation", "opacity", "opacities", "opacification", "infiltrate",
                     "infiltrates", "nodule", "nodules", "mass", "masses", "atelectasis",
                     "atelectatic", "collapse", "edema", "congestion", "pneumonia", "infection",
                     "emphysema", "hyperinflation", "granuloma", "granulomas", "scarring",
                     "fibrosis", "lesion"],
    },
    "pleura": {
        "aliases": ["pleura", "pleural", "pleural space", "pleural spaces",
                    "costophrenic angle", "costophrenic angles"],
        "normal": ["there is no pleural effusion", "no pleural effusion", "no pneumothorax",
                   "the costophrenic angles are sharp"],
        "abnormal": ["effusion", "effusions", "pneumothorax", "pneumothoraces",
                     "pleural thickening", "blunting"],
    },
    "bone": {
        "aliases": ["osseous structures", "osseous", "bones", "bony", "ribs", "spine",
                    "thoracic spine"],
        "normal": ["the osseous structures are intact", "no acute osseous abnormality",
                   "visualized osseous structures are unremarkable"],
        "abnormal": ["fracture", "fractures", "degenerative", "scoliosis", "deformity",
                     "osteopenia"],
    },
    "devices": {
        "aliases": ["devices", "support devices", "lines and tubes", "hardware"],
        "normal": ["no support devices"],
        "abnormal": ["tube", "tubes", "catheter", "catheters", "pacemaker", "line", "lines",
                     "picc", "wires", "device", "leads", "port"],
    },
    "chest": {
        "aliases": ["chest", "cardiopulmonary", "thorax"],
        "normal": ["no acute cardiopulmonary abnormality", "no acute cardiopulmonary process",
                   "no active disease"],
        "abnormal": ["abnormality", "abnormalities", "disease"],
    },
}


def default_knowledge() -> dict[str, dict[str, list[str]]]:
    """The built-in knowledge dictionary (a fresh copy): heart, mediastinum, lung, pleura, bone,
    devices and chest; it covers the synthetic reports of `mlx_research.data.cxr`."""
    return json.loads(json.dumps(_DEFAULT))


def validate_knowledge(knowledge: Any, source: str = "knowledge"
                       ) -> dict[str, dict[str, list[str]]]:
    """Checks the dictionary format; returns ``knowledge``.

    Raises:
      ValueError: one line naming ``source`` and the offending organ / field.
    """
    if not isinstance(knowledge, dict) or not knowledge:
        raise ValueError(f"{source}: expected a non-empty JSON object {{organ: {{...}}}}")
    for organ, entry in knowledge.items():
        if not isinstance(entry, dict):
            raise ValueError(f"{source}: organ {organ!r} must map to an object with {FIELDS}")
        unknown = sorted(set(entry) - set(FIELDS))
        if unknown:
            raise ValueError(f"{source}: organ {organ!r} has unknown key(s) {unknown} "
                             f"(expected {FIELDS})")
        for field in FIELDS:
            values = entry.get(field)
            if not isinstance(values, list) or not all(
                    isinstance(v, str) and v.strip() for v in values):
                raise ValueError(f"{source}: organ {organ!r} key {field!r} must be a list of "
                                 "non-empty strings")
    return knowledge


def load_knowledge(path: str | os.PathLike) -> dict[str, dict[str, list[str]]]:
    """Reads and validates a knowledge dictionary JSON file.

    Raises:
      FileNotFoundError: no file at ``path``.
      ValueError: invalid JSON or format, naming the file (and organ / key).
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"knowledge dictionary not found: {path}") from None
    try:
        knowledge = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from None
    return validate_knowledge(knowledge, str(path))


Phrases = dict[str, list[tuple[str, ...]]]  # first word -> phrases, longest first


def _index(phrases: Iterable[str]) -> Phrases:
    """Phrases indexed by their first word, longest first."""
    index: Phrases = {}
    for phrase in sorted({tuple(p.lower().split()) for p in phrases}, key=len, reverse=True):
        index.setdefault(phrase[0], []).append(phrase)
    return index


def _match(tokens: Sequence[str], phrases: Phrases) -> list[tuple[int, int]]:
    """Non-overlapping [start, end) spans of ``phrases`` (longest first at each position)."""
    spans, i = [], 0
    while i < len(tokens):
        for phrase in phrases.get(tokens[i], ()):
            if tuple(tokens[i:i + len(phrase)]) == phrase:
                spans.append((i, i + len(phrase)))
                i += len(phrase)
                break
        else:
            i += 1
    return spans


_CUES = {"pre": _index(_PRE_NEGATION), "post": _index(_POST_NEGATION),
         "pseudo": _index(_PSEUDO_NEGATION)}


def _negated(sentence: Sequence[str], spans: list[tuple[int, int]]) -> list[bool]:
    """Whether each term span is negated (see `token_tags`)."""
    cue = [None] * len(sentence)  # "pre", "post" or None per token position
    pseudo = _match(sentence, _CUES["pseudo"])
    blocked = {i for s, e in pseudo for i in range(s, e)}
    for kind in ("pre", "post"):  # a post cue wins at the same word ("no longer" over "no")
        for s, e in _match(sentence, _CUES[kind]):
            if s not in blocked:
                cue[s] = kind
    result = []
    for start, end in spans:
        negated = False
        for i in range(start - 1, -1, -1):
            if sentence[i] in _SCOPE_END:
                break
            if cue[i] == "pre":
                negated = True
                break
        for i in range(end, len(sentence)):
            if negated or sentence[i] in _SCOPE_END:
                break
            negated = cue[i] == "post"
        result.append(negated)
    return result


def token_tags(tokens: Sequence[str], knowledge: Mapping[str, Mapping[str, Sequence[str]]]
               ) -> np.ndarray:
    """NADM token types of a cleaned report's tokens.

    Sentences are the runs of tokens up to and including each "." (a trailing run without "." is
    a sentence too). Abnormality terms (the knowledge's "abnormal" phrases) are matched as token
    sequences, longest first. A term is *negated* when, in its sentence and with no scope end
    ("but", "however", "although", "though", "which", "except", "whereas") in between, a negation
    cue precedes it ("no", "not", "without", "negative for", "free of", "clear of", "absence of",
    "resolution of", "removal of") or follows it ("resolved", "removed", "absent", "not seen",
    "not identified", "not present", "no longer"); "no change", "can not", "not (be) excluded"
    are no cues. A sentence is abnormal when it holds a term that is not negated (an uncertain
    one such as "possible nodule" counts). Tags:

    - in a normal sentence: 2 (normal_semantic) for the words of alias phrases, the words of
      normal descriptions other than `STOPWORDS`, and negated terms; 0 (normal_sentence) else;
    - in an abnormal sentence: 3 (abnormal_semantic) for terms and `MODIFIERS` (side, location,
      size, grade, certainty, change words); 1 (abnormal_sentence) else.

    The "." token takes its sentence's 0 or 1.

    Args:
      tokens: a cleaned report split on spaces, e.g. "the heart is enlarged . no pneumothorax ."
      knowledge: a knowledge dictionary (`default_knowledge()` or `load_knowledge(path)`).

    Returns:
      int32 [len(tokens)] indices into `TAGS`.
    """
    terms = _index(p for e in knowledge.values() for p in e["abnormal"])
    aliases = _index(p for e in knowledge.values() for p in e["aliases"])
    normal_words = {w for e in knowledge.values() for p in [*e["normal"], *e["aliases"]]
                    for w in p.lower().split() if w not in STOPWORDS}
    tags = np.zeros(len(tokens), np.int32)
    start = 0
    while start < len(tokens):
        end = start
        while end < len(tokens) and tokens[end] != ".":
            end += 1
        sentence = list(tokens[start:end])
        spans = _match(sentence, terms)
        negated = _negated(sentence, spans)
        tag = tags[start:end + 1]  # a view: the sentence and its "."
        if not all(negated):
            tag[:] = 1
            tag[:end - start][[w in MODIFIERS for w in sentence]] = 3
            for s, e in spans:
                tag[s:e] = 3
        else:
            tag[:end - start][[w in normal_words for w in sentence]] = 2
            for s, e in _match(sentence, aliases) + spans:
                tag[s:e] = 2
        start = end + 1
    return tags
