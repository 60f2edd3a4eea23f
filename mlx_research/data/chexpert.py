"""A rule-based CheXpert-style labeler of radiology reports, and CheXpert label CSVs.

`label_report` finds mentions of the 14 CheXpert observations in a report (raw text, or the
R2Gen-cleaned string: lowercase, " . " between sentences) and classifies each mention as
positive (1), negative (0) or uncertain (-1), in the spirit of the CheXpert labeler
(stanfordmlgroup/chexpert-labeler), whose mention phrases it follows; negation and uncertainty
come from cue phrases instead of its dependency-parse patterns (no parser is installable offline).

Per mention, within its clause (a sentence cut at "but", "however", "although", "though",
"except", "whereas", "which", ";" and ", the" / ", there" / "and the" / "and there"):
  1. exclusion uncertainty ("cannot exclude", "can not be ruled out", "is not excluded", and
     "no new" before the mention, as CheXpert) -> -1;
  2. the nearest cue before the mention: negation ("no", "not", "without", "negative for",
     "free of", "clear of", "absence of", "resolution of", "removal of", "resolved", "removed")
     -> 0, uncertainty ("possible", "may", "could", "likely", "suggest...", "questionable",
     "borderline", "versus", "concern for", ...) -> -1; "no change" is no cue, and "to suggest"
     is one only when no other cue precedes it;
  3. else a cue after the mention: "has resolved", "has been removed", "is not seen", "no longer
     seen", "is absent" -> 0; "is likely", "is possible", "may be", "versus" -> -1;
  4. else 1.
Organ descriptors ("heart size", "the heart", "cardiac silhouette" for Cardiomegaly;
"mediastinum", "mediastinal contours", "cardiomediastinal silhouette" for Enlarged
Cardiomediastinum) are labelled by their nearest qualifier in the clause (after them first, else
before): "normal", "unremarkable", "within normal limits", "not enlarged" -> 0; "borderline",
"top normal", "upper limits of normal", "stable", "unchanged" -> -1 (CheXpert's rules);
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
_QUALIFIER = re.compile(
    r"\b(?:(?P<unc>borderline|top-? ?normal|upper limits? of normal|upper normal|stable"
    r"|unchanged)|(?P<neg>within normal limits|normal|unremarkable|not (?:enlarged|widened))"
    r"|(?P<pos>enlarged|enlargement|large|widened|widening|prominent|increased))\b")

_EXCLUSION = re.compile(
    r"\b(?:cannot|can not|not|could not|may not) (?:be )?(?:excluded|exclude|ruled out"
    r"|rule out)\b")
_NO_NEW = re.compile(r"\bno new\b")
_PSEUDO = re.compile(
    r"\b(?:(?:no|without) (?:significant |interval |definite )?(?:change|increase)|not only"
    r"|no longer)\b")
_PRE = re.compile(
    r"\b(?:(?P<neg>no|not|without|negative for|free of|clear of|absence of|resolution of"
    r"|removal of|resolved|removed|rather than)|(?P<unc>possible|possibly|may|might|could"
    r"|likely|probable|probably|questionable|question of|suspicious|suspect\w*|suggest\w*"
    r"|borderline|equivocal|indeterminate|concern(?:ing)? for|worrisome|presum\w*|versus|vs"
    r"|andor|and/or|differential|consider\w*|rule out)|(?P<cont>to (?:suggest|indicate)))\b")
_POST = re.compile(
    r"\b(?:(?P<neg>(?:has|have|had) (?:\w+ )?resolved|resolved|(?:has|have) been removed"
    r"|removed|(?:is|are|was|were) (?:now )?absent|not (?:seen|identified|present|visualized"
    r"|demonstrated|appreciated|evident)|no longer (?:seen|visualized|present|evident))"
    r"|(?P<unc>(?:is|are) (?:likely|possible|suspected|questionable)|may be|versus|vs))\b")
_CLAUSE_BREAK = re.compile(
    r"\b(?:but|however|although|though|except|whereas|which)\b|;|,\s*(?:and\s+)?(?:the|there)\b"
    r"|\band\s+(?:the|there)\b")
_SENTENCE_BREAK = re.compile(r"(?<!\d)\.(?!\d)|[?!\n]")


def _word_pattern(pattern: str) -> re.Pattern:
    return re.compile(rf"(?<![\w-])(?:{pattern})(?![\w-])")


_MENTION_RES = {name: _word_pattern(p) for name, p in _MENTIONS.items()}
_UNMENTION_RES = {name: _word_pattern(p) for name, p in _UNMENTION.items()}
_DESCRIPTOR_RES = {name: _word_pattern(p) for name, p in _DESCRIPTORS.items()}


def _clauses(text: str) -> list[str]:
    """Lowercased clauses of ``text`` (sentences cut at the clause breaks)."""
    clauses = []
    for sentence in _SENTENCE_BREAK.split(text.lower()):
        clauses += [c for c in _CLAUSE_BREAK.split(sentence) if c.strip()]
    return clauses


def _mask(text: str, pattern: re.Pattern) -> str:
    """``text`` with every match of ``pattern`` replaced by spaces (positions kept)."""
    return pattern.sub(lambda m: " " * len(m.group()), text)


def _cue_label(clause: str, start: int, end: int) -> int:
    """The label of a mention spanning ``clause[start:end]`` (rules 1-4 of the module docstring)."""
    before, after = clause[:start], clause[end:]
    if _EXCLUSION.search(before) or _EXCLUSION.search(after) or _NO_NEW.search(before):
        return -1
    pre = list(_PRE.finditer(_mask(before, _PSEUDO)))
    cues = [m for m in pre if not m.group("cont")]
    if cues:  # "no consolidation to suggest pneumonia": the negation reaches past "to suggest"
        return 0 if cues[-1].group("neg") else -1
    if pre:
        return -1
    post = _POST.search(after)
    if post:
        return 0 if post.group("neg") else -1
    return 1


def _descriptor_label(clause: str, start: int, end: int) -> int | None:
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
    return _cue_label(clause, qualifier.start(), qualifier.end())


def _mentions(clause: str) -> list[tuple[str, str, int]]:
    """(observation, mention text, label) of every mention in one clause."""
    found = []
    for name, pattern in _MENTION_RES.items():
        masked = _mask(clause, _UNMENTION_RES[name]) if name in _UNMENTION_RES else clause
        found += [(name, m.group(), _cue_label(clause, m.start(), m.end()))
                  for m in pattern.finditer(masked)]
    for name, pattern in _DESCRIPTOR_RES.items():
        for m in pattern.finditer(clause):
            label = _descriptor_label(clause, m.start(), m.end())
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
