"""Independent reference formulas for the report scores, and a check of a run's logged scores.

BLEU and ROUGE-L as pycocoevalcap states them (corpus BLEU with clipped counts and the
closest-reference brevity penalty, ROUGE-L LCS F with beta 1.2 over space-separated tokens);
clinical P/R/F1 as R2Gen's convention (only label 1 is positive) counted with plain loops.
"""

import math
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import pytest


def ngrams(words: Sequence[str], k: int) -> Counter:
    return Counter(tuple(words[i:i + k]) for i in range(len(words) - k + 1))


def bleu(references: Sequence[str], hypotheses: Sequence[str]) -> list[float]:
    """Corpus BLEU-1..4 with pycocoevalcap's smoothing (1e-15 over 1e-9 for zero counts)."""
    tiny, small = 1e-15, 1e-9
    correct, guess = np.zeros(4), np.zeros(4)
    hyp_len = ref_len = 0
    for ref, hyp in zip(references, hypotheses):
        ref_words, hyp_words = ref.split(), hyp.split()
        hyp_len += len(hyp_words)
        ref_len += len(ref_words)  # the closest of one reference is that reference
        for k in range(1, 5):
            ref_counts = ngrams(ref_words, k)
            correct[k - 1] += sum(min(c, ref_counts[g]) for g, c in ngrams(hyp_words, k).items())
            guess[k - 1] += max(0, len(hyp_words) - k + 1)
    precision = (correct + tiny) / (guess + small)
    ratio = (hyp_len + tiny) / (ref_len + small)
    brevity = math.exp(1 - 1 / ratio) if ratio < 1 else 1.0
    return [brevity * np.prod(precision[:k]) ** (1 / k) for k in range(1, 5)]


def _lcs(a, b):
    table = np.zeros((len(a) + 1, len(b) + 1), int)
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            if x == y:
                table[i + 1, j + 1] = table[i, j] + 1
            else:
                table[i + 1, j + 1] = max(table[i, j + 1], table[i + 1, j])
    return table[-1, -1]


def rouge_l(references: Sequence[str], hypotheses: Sequence[str], beta: float = 1.2) -> float:
    scores = []
    for ref, hyp in zip(references, hypotheses):
        ref_tokens, hyp_tokens = ref.split(" "), hyp.split(" ")
        lcs = _lcs(ref_tokens, hyp_tokens)
        p, r = lcs / len(hyp_tokens), lcs / len(ref_tokens)
        scores.append((1 + beta**2) * p * r / (r + beta**2 * p) if p and r else 0.0)
    return float(np.mean(scores))


def clinical_f1(reference_labels: Sequence[Mapping[str, int]],
                generated_labels: Sequence[Mapping[str, int]],
                observations: Sequence[str]) -> tuple[float, float]:
    """(micro F1, macro F1) over `observations`; a label counts as positive only when it is 1, an
    observation without any true or predicted positive scores 0."""
    counts = []
    for name in observations:
        tp = fp = fn = 0
        for ref, gen in zip(reference_labels, generated_labels):
            truth, guess = ref.get(name) == 1, gen.get(name) == 1
            tp += truth and guess
            fp += guess and not truth
            fn += truth and not guess
        counts.append((tp, fp, fn))
    f1 = lambda tp, fp, fn: 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    micro = f1(*(sum(c[i] for c in counts) for i in range(3)))
    return micro, sum(f1(*c) for c in counts) / len(counts)


def check_logged_scores(scores: Mapping[str, float], rows: Sequence[Mapping],
                        observations: Sequence[str], abnormal: Sequence[str] = ()) -> None:
    """A run's logged `eval/report/*` scores equal the formulas above on its written reports.

    Args:
      scores: one metrics.jsonl evaluation record.
      rows: that evaluation's reports_<step>.json ({reference, generated, *_labels} per study).
      observations: the CheXpert observations the evaluator scores.
      abnormal: those of `clinical_f1_macro_abnormal` (empty: the run does not log it).
    """
    references, generated = [r["reference"] for r in rows], [r["generated"] for r in rows]
    want = {f"bleu_{k + 1}": b for k, b in enumerate(bleu(references, generated))}
    want["rouge_l"] = rouge_l(references, generated)
    ref_labels = [r["reference_labels"] for r in rows]
    gen_labels = [r["generated_labels"] for r in rows]
    want["clinical_f1_micro"], want["clinical_f1_macro"] = clinical_f1(ref_labels, gen_labels,
                                                                       observations)
    if abnormal:
        want["clinical_f1_macro_abnormal"] = clinical_f1(ref_labels, gen_labels, abnormal)[1]
    for name, value in want.items():
        assert scores[f"eval/report/{name}"] == pytest.approx(value, abs=1e-6), name
