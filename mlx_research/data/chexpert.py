"""A rule-based CheXpert-style labeler of radiology reports, and CheXpert label CSVs.

`label_report` finds mentions of the 14 CheXpert observations in a report (raw text, or the
R2Gen-cleaned string: lowercase, " . " between sentences) and classifies each mention as
positive (1), negative (0) or uncertain (-1), in the spirit of the CheXpert labeler
(stanfordmlgroup/chexpert-labeler), whose mention phrases it follows; negation and uncertainty
come from cue phrases instead of its dependency-parse patterns (no parser is installable offline).

Per mention, within its clause (a sentence cut at "but", "however", "although", "though",
"except", "whereas", "which", ";" and ", the" / ", there" / "and the" / "and there"), in
CheXpert's order (pre-negation uncertainty, then negation, then post-negation uncertainty):
  1. exclusion uncertainty ("cannot exclude", "cannot be entirely excluded", "can not be ruled
     out", "is not excluded", and "no new" before the mention) -> -1;
  2. negation -> 0: the nearest cue before the mention is a negation ("no", "not", "without",
     "negative for", "free of", "clear of", "absence of", "resolution of", "removal of",
     "resolved", "removed"), or an uncertainty cue right after a negation with no mention between
     ("no suspicious opacity"); relational uncertainty cues ("suspicious for", "concerning for",
     "suggestive of", "to suggest") leave an earlier negation in charge ("no opacity concerning
     for pneumonia"); or a negation after the mention ("has resolved", "has been removed", "is
     not seen", "no longer seen", "is absent");
  3. uncertainty -> -1: the nearest cue before the mention is an uncertainty cue ("possible",
     "may", "could", "likely", "suggest...", "questionable", "suspicious", "borderline", "versus",
     "concern for", ...), or only relational ones precede it; or after the mention an uncertainty
     predicate that no other mention follows ("is likely", "is suspected", "may be": "effusion
     may be present", but "opacity may be atelectasis" leaves the opacity positive), or a
     conjunction right after it ("versus", "and/or": "atelectasis versus pneumonia", but not
     "effusion with atelectasis versus pneumonia"); or a mention hedged by itself ("vascular
     congestion", "indistinctness", "vascular prominence" for Edema, as CheXpert);
  4. else 1.
"no change" and "no longer" are no cues; cues are whole words, so "non-suspicious" holds none;
a cue before a mention reaches no further than a "with" that follows another mention ("likely
atelectasis, with small effusion": the effusion is positive), "consistent with" and "compatible
with" excepted.
Organ descriptors ("heart size", "the heart", "cardiac silhouette" for Cardiomegaly;
"mediastinum", "mediastinal contours", "cardiomediastinal silhouette" for Enlarged
Cardiomediastinum) are labelled by their nearest qualifier in the clause (after them first, else
before): "normal", "unremarkable", "within normal limits", "upper limits of normal", "not
enlarged" -> 0; "borderline", "top normal", "stable", "unchanged" -> -1 (CheXpert's rules);
"enlarged", "enlargement", "widened", "prominent", "increased" -> 1, then rules 1-3 at the
qualifier; no qualifier -> no mention.
Aggregation as CheXpert: per observation positive beats uncertain beats negative; a positive or
uncertain "chf" / "heart failure" adds an uncertain Cardiomegaly mention; "No Finding" is 1 when
no observation other than Support Devices (nor one of CheXpert's other findings: emphysema,
scoliosis, granuloma, ...) is positive or uncertain, and absent otherwise.

`read_chexpert_csv` reads a CheXpert label file (MIMIC-CXR's) into the same {observation: label}
form. Data sets use both for reference labels; `evaluation.clinical` scores them.
"""

from __future__ import annotations

import csv
import re

CHEXPERT_LABELS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices")
"""The CheXpert observations in the CheXpert dataset's column order."""

_OTHER = "other finding"  # CheXpert's no_finding phrases: block "No Finding", get no label

# Observation -> mention pattern (word-bounded), after removing the unmention phrases below.
_MENTIONS = {
    "Enlarged Cardiomediastinum": r"(?:mediastinal|cardiomediastinal) (?:widening|enlargement)"
                                  r"|enlarged cardiomediastinum|widening of the mediastinum",
    "Cardiomegaly": r"cardiomegaly|cardiac enlargement|enlarged heart",
    "Lung Opacity": r"opaci\w*|infiltrat\w*|air-? ?space disease|increased density"
                    r"|interstitial (?:markings?|pattern|lung)|reticular (?:pattern|markings?)"
                    r"|reticulation|parenchymal scarring|peribronchial thickening|scar(?:ring|s)?",
    "Lung Lesion": r"mass(?:es)?|nodul\w*|lump|cavitary lesion|carcinoma|neoplasm|tumou?rs?",
    "Edema": r"edema|heart failure|chf|(?:pulmonary )?vascular congestion|pulmonary congestion"
             r"|indistinctness|vascular prominence",
    "Consolidation": r"consolidat\w*",
    "Pneumonia": r"pneumonias?|infection|infectious",
    "Atelectasis": r"atelecta\w*|collapsed?",
    "Pneumothorax": r"pneumothora(?:x|ces)",
    "Pleural Effusion": r"effusions?|pleural fluid",
    "Pleural Other": r"pleural thickening|fibrosis|fibrothorax|pleural scar\w*"
                     r"|pleuro-?parenchymal scar\w*",
    "Fracture": r"fractur\w*",
    "Support Devices": r"pacer|pacemakers?|lines?|picc|tubes?|valves?|catheters?|hardware"
                       r"|arthroplast\w*|markers?|icd|defibrillators?|devices?|drains?|plates?"
                       r"|screws?|cannula|apparatus|coils?|support|equipment|mediport|wires?",
    _OTHER: r"emphysema|blunt\w*|density|elevat\w*|eventration|scoliosis|degenera\w*|calcifi\w*"
            r"|hyperinflat\w*|bronchospasm|asthma|hernia|copd|plaques?|osteophyt\w*"
            r"|aortic disease|bronchiolitis|airways? disease|thickening|cephalization|aspiration"
            r"|bullae|contusion|atherosclero\w*|osteopenia|metasta\w*|granuloma\w*"
            r"|pneumomediastinum|pneumoperitoneum|osteodystrophy|cuffing|irregular lucency"
            r"|inflam\w*|fissure|hypertension|prominen\w*|kyphosis|hyperexpan\w*|bullet"
            r"|thoracentesis|bronchitis|volume loss|deformity|hemorrhage|hematoma|radiopaque"
            r"|aerophagia|arthropathy|tracheostomy",
}
_UNMENTION = {  # phrases that contain a mention but are not one (CheXpert's unmention lists)
    "Lung Lesion": r"calcified nodul\w*",
    "Lung Opacity": r"pleural scar\w*",
    "Pleural Effusion": r"pericardial effusions?",
    "Support Devices": r"pleural lines?|kerley b lines?",
}
_DESCRIPTORS = {
    "Cardiomegaly": r"heart(?! failure)(?: size)?|cardiac (?:silhouette|size|contours?|shadow)",
    "Enlarged Cardiomediastinum": r"(?:cardio)?mediastinum|(?:cardio)?mediastinal (?:contours?"
                                  r"|silhouettes?|configuration|width|structures|shadow)",
}
_HEDGED = re.compile(
    r"(?:pulmonary )?vascular congestion|pulmonary congestion|indistinctness|vascular prominence")
"""Edema mentions that are themselves uncertain (CheXpert's post-negation uncertainty)."""


def _word_pattern(pattern: str) -> re.Pattern:
    """Whole words only: a hyphenated prefix is part of a description ("non-suspicious")."""
    return re.compile(rf"(?<![\w-])(?:{pattern})(?![\w-])")


_QUALIFIER = _word_pattern(
    r"(?P<unc>borderline|top-? ?normal|upper normal|stable|unchanged)"
    r"|(?P<neg>upper limits? of normal|within normal limits|normal"
    r"|unremarkable|not (?:enlarged|widened))"
    r"|(?P<pos>enlarged|enlargement|large|widened|widening|prominent|increased)")
_EXCLUSION = _word_pattern(
    r"(?:cannot|can not|not|could not|may not) (?:be )?(?:\w+ )?(?:excluded|exclude|ruled out"
    r"|rule out)")
_NO_NEW = _word_pattern(r"no new")
_PSEUDO = _word_pattern(
    r"(?:no|without) (?:significant |interval |definite )?(?:change|increase)|not only"
    r"|no longer")
_PRE = _word_pattern(
    r"(?P<neg>no|not|without|negative for|free of|clear of|absence of|resolution of|removal of"
    r"|resolved|removed|rather than)"
    r"|(?P<rel>(?:suspicious|concerning|worrisome) for|suggestive of|to (?:suggest|indicate))"
    r"|(?P<unc>possible|possibly|may|might|could|likely|probable|probably|questionable"
    r"|question of|suspicious|suspect\w*|suggest\w*|borderline|equivocal|indeterminate"
    r"|concern for|worrisome|presum\w*|versus|vs|andor|and/or|differential|consider\w*"
    r"|rule out)")
_POST = _word_pattern(
    r"(?P<neg>(?:has|have|had) (?:\w+ )?resolved|resolved|(?:has|have) been removed|removed"
    r"|(?:is|are|was|were) (?:now )?absent|not (?:seen|identified|present|visualized"
    r"|demonstrated|appreciated|evident)|no longer (?:seen|visualized|present|evident))"
    r"|(?P<unc>(?:is|are) (?:likely|possible|suspected|questionable)|may be)"
    r"|(?P<conj>versus|vs|andor|and/or)")
_WITH = _word_pattern(r"(?<!consistent )(?<!compatible )with")
_CLAUSE_BREAK = re.compile(
    r"\b(?:but|however|although|though|except|whereas|which)\b|;|,\s*(?:and\s+)?(?:the|there)\b"
    r"|\band\s+(?:the|there)\b")
_SENTENCE_BREAK = re.compile(r"(?<!\d)\.(?!\d)|[?!\n]")

_MENTION_RES = {name: _word_pattern(p) for name, p in _MENTIONS.items()}
_UNMENTION_RES = {name: _word_pattern(p) for name, p in _UNMENTION.items()}
_DESCRIPTOR_RES = {name: _word_pattern(p) for name, p in _DESCRIPTORS.items()}

_Spans = list[tuple[int, int]]  # (start, end) of the mentions in a clause


def _clauses(text: str) -> list[str]:
    """Lowercased clauses of ``text`` (sentences cut at the clause breaks)."""
    clauses = []
    for sentence in _SENTENCE_BREAK.split(text.lower()):
        clauses += [c for c in _CLAUSE_BREAK.split(sentence) if c.strip()]
    return clauses


def _mask(text: str, pattern: re.Pattern) -> str:
    """``text`` with every match of ``pattern`` replaced by spaces (positions kept)."""
    return pattern.sub(lambda m: " " * len(m.group()), text)


def _mention_between(spans: _Spans, lo: int, hi: int) -> bool:
    """True when one of the clause's mention ``spans`` lies within ``[lo, hi)``."""
    return any(lo <= start and end <= hi for start, end in spans)


def _pre_cue(clause: str, spans: _Spans, start: int) -> str | None:
    """What the cues before a mention at ``clause[start:]`` say: "neg", "unc" or None."""
    before = _mask(clause[:start], _PSEUDO)
    cues = [m for m in _PRE.finditer(before)  # a cue's phrase ends at "with" after a mention
            if not any(_mention_between(spans, m.end(), w.start())
                       for w in _WITH.finditer(before, m.end()))]
    plain = [m for m in cues if not m.group("rel")]
    if not plain:  # "opacity concerning for pneumonia"; "no X to suggest Y" has a plain "no"
        return "unc" if cues else None
    last = plain[-1]
    if last.group("neg"):
        return "neg"
    negation = plain[-2] if len(plain) > 1 and plain[-2].group("neg") else None
    if negation and not _mention_between(spans, negation.end(), last.start()):
        return "neg"  # "no suspicious opacity": the negation scopes over the uncertainty word
    return "unc"


def _post_cue(clause: str, spans: _Spans, end: int) -> str | None:
    """What the cues after a mention ending at ``clause[:end]`` say: "neg", "unc" or None."""
    post = list(_POST.finditer(clause, end))
    if any(m.group("neg") for m in post):
        return "neg"
    for m in post:
        if m.group("conj") and not _mention_between(spans, end, m.start()):
            return "unc"  # "atelectasis versus pneumonia", not "effusion with X versus Y"
        if m.group("unc") and not any(start >= m.end() for start, _ in spans):
            return "unc"  # "effusion may be present", not "opacity may be atelectasis"
    return None


def _cue_label(clause: str, spans: _Spans, start: int, end: int) -> int:
    """The label of a mention spanning ``clause[start:end]`` (rules 1-4 of the module docstring)."""
    before, after = clause[:start], clause[end:]
    if _EXCLUSION.search(before) or _EXCLUSION.search(after) or _NO_NEW.search(before):
        return -1
    pre, post = _pre_cue(clause, spans, start), _post_cue(clause, spans, end)
    if "neg" in (pre, post):
        return 0
    if "unc" in (pre, post) or _HEDGED.fullmatch(clause, start, end):
        return -1
    return 1


def _descriptor_label(clause: str, spans: _Spans, start: int, end: int) -> int | None:
    """The label of an organ descriptor at ``clause[start:end]`` from its qualifier, or None."""
    qualifier = _QUALIFIER.search(clause, end)
    if qualifier is None:
        earlier = list(_QUALIFIER.finditer(clause[:start]))
        qualifier = earlier[-1] if earlier else None
    if qualifier is None:
        return None
    if qualifier.group("neg"):
        return 0
    if qualifier.group("unc"):
        return -1
    return _cue_label(clause, spans, qualifier.start(), qualifier.end())


def _mentions(clause: str) -> list[tuple[str, str, int]]:
    """(observation, mention text, label) of every mention in one clause."""
    matches = []
    for name, pattern in _MENTION_RES.items():
        masked = _mask(clause, _UNMENTION_RES[name]) if name in _UNMENTION_RES else clause
        matches += [(name, m) for m in pattern.finditer(masked)]
    spans = [m.span() for _, m in matches]
    found = [(name, m.group(), _cue_label(clause, spans, *m.span())) for name, m in matches]
    for name, pattern in _DESCRIPTOR_RES.items():
        for m in pattern.finditer(clause):
            label = _descriptor_label(clause, spans, m.start(), m.end())
            if label is not None:
                found.append((name, m.group(), label))
    return found


def label_report(text: str) -> dict[str, int]:
    """CheXpert labels of one report (see the module docstring for the rules).

    Args:
      text: a report, raw ("The heart is enlarged. No pneumothorax.") or R2Gen-cleaned
        ("the heart is enlarged . no pneumothorax .").

    Returns:
      {observation: 1 | 0 | -1} over `CHEXPERT_LABELS`; unmentioned observations are absent.
    """
    votes: dict[str, list[int]] = {}
    for clause in _clauses(text):
        for name, mention, label in _mentions(clause):
            votes.setdefault(name, []).append(label)
            if mention in ("chf", "heart failure") and label != 0:
                votes.setdefault("Cardiomegaly", []).append(-1)
    labels = {}
    for name in CHEXPERT_LABELS:
        if name in votes:
            found = votes[name]
            labels[name] = 1 if 1 in found else -1 if -1 in found else 0
    finding = any(1 in found or -1 in found
                  for name, found in votes.items() if name != "Support Devices")
    if not finding:
        labels["No Finding"] = 1
    return labels


def read_chexpert_csv(path: str, key: str = "study_id") -> dict[str, dict[str, int]]:
    """Reads a CheXpert label CSV such as MIMIC-CXR's ``mimic-cxr-2.0.0-chexpert.csv``.

    Args:
      path: CSV with a header holding ``key`` and the 14 `CHEXPERT_LABELS` columns (any order,
        other columns ignored); label cells are 1.0 / 0.0 / -1.0 or blank.
      key: the column whose value (as a string) keys the result.

    Returns:
      {key value: {observation: 1 | 0 | -1}}, blank cells absent.

    Raises:
      FileNotFoundError: no file at ``path``.
      ValueError: a missing column, a cell that is not 1/0/-1/blank, or a repeated key; the
        message names the file (and the line).
    """
    try:
        handle = open(path, newline="", encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"CheXpert label CSV not found: {path}") from None
    with handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [c for c in (key, *CHEXPERT_LABELS) if c not in columns]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing} (header: {columns})")
        result: dict[str, dict[str, int]] = {}
        for row in reader:
            line = reader.line_num
            ident = (row[key] or "").strip()
            if not ident:
                raise ValueError(f"{path}:{line}: empty {key!r}")
            if ident in result:
                raise ValueError(f"{path}:{line}: {key} {ident} appears twice")
            labels = {}
            for name in CHEXPERT_LABELS:
                cell = (row[name] or "").strip()
                if not cell:
                    continue
                try:
                    value = float(cell)
                except ValueError:
                    value = float("nan")
                if value not in (1.0, 0.0, -1.0):
                    raise ValueError(f"{path}:{line}: {name}={cell!r} is not 1, 0, -1 or blank")
                labels[name] = int(value)
            result[ident] = labels
    return result
