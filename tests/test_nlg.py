"""Tests for mlx_research.evaluation.nlg: pycocoevalcap's scores against independent formulas.

BLEU, ROUGE-L and CIDEr-D are recomputed from their definitions as pycocoevalcap states them
(BLEU and ROUGE-L in tests/report_scores.py; CIDEr-D here, with IDF from the references).
METEOR needs Java: one test runs it where Java exists; the others hide or fake ``java``.
"""

import math
import os
import shutil
import time

import numpy as np
import pytest

from mlx_research.evaluation.nlg import SCORES, caption_scores
from tests.report_scores import bleu, ngrams, rouge_l

REFERENCES = [
    "the heart is normal in size . the lungs are clear .",
    "no pleural effusion or pneumothorax . the heart  is normal .",  # two spaces: a '' token
    "mild cardiomegaly . small left pleural effusion .",
    "the lungs are clear . no focal consolidation .",
]
HYPOTHESES = [
    "the heart is normal . the lungs are clear .",  # shorter than its reference
    "no pleural effusion . no pleural effusion . the heart is normal .",  # repeats: clipping
    "mild cardiomegaly . small right pleural effusion .",
    "the lungs are clear .",
]


def _cider_d(references, hypotheses, sigma=6.0):
    """Dense tf-idf vectors per n; the length penalty uses the bigram counts (pycocoevalcap's
    length), which equal the word counts minus one for non-empty strings."""
    n_docs = len(references)
    grams = [[ngrams(s.split(), k) for k in range(1, 5)] for s in references + hypotheses]
    vocab = sorted({g for doc in grams for counts in doc for g in counts})
    index = {g: i for i, g in enumerate(vocab)}

    def dense(counts):
        v = np.zeros(len(vocab))
        for g, c in counts.items():
            v[index[g]] = c
        return v

    df = sum((dense(c) > 0).astype(float) for doc in grams[:n_docs] for c in doc)
    idf = np.log(n_docs) - np.log(np.maximum(df, 1.0))
    scores = []
    pairs = zip(references, hypotheses, grams[:n_docs], grams[n_docs:])
    for ref, hyp, ref_grams, hyp_grams in pairs:
        delta = max(len(hyp.split()) - 1, 0) - max(len(ref.split()) - 1, 0)
        sims = []
        for r_counts, h_counts in zip(ref_grams, hyp_grams):
            r, h = dense(r_counts) * idf, dense(h_counts) * idf
            norms = np.linalg.norm(h) * np.linalg.norm(r)
            sims.append(np.sum(np.minimum(h, r) * r) / norms if norms else 0.0)
        scores.append(10.0 * np.mean(sims) * math.exp(-delta**2 / (2 * sigma**2)))
    return float(np.mean(scores))


def _expected(references, hypotheses):
    expected = {f"bleu_{k + 1}": b for k, b in enumerate(bleu(references, hypotheses))}
    expected["rouge_l"] = rouge_l(references, hypotheses)
    expected["cider"] = _cider_d(references, hypotheses)
    return expected


@pytest.fixture
def no_java(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))


def _check(scores, expected):
    assert set(scores) == set(expected)
    for name, value in expected.items():
        assert scores[name] == pytest.approx(value, abs=1e-6), name


def test_scores_equal_independent_formulas(no_java, capsys):
    scores = caption_scores(REFERENCES, HYPOTHESES)
    _check(scores, _expected(REFERENCES, HYPOTHESES))
    assert 0.2 < scores["bleu_4"] < scores["bleu_1"] < 1  # a corpus that tells the orders apart
    assert capsys.readouterr().out == "meteor: skipped (java not found)\n"
    assert list(scores) == [s for s in SCORES if s != "meteor"]


def test_empty_hypothesis(no_java):
    hypotheses = [HYPOTHESES[0], "", HYPOTHESES[2], HYPOTHESES[3]]
    _check(caption_scores(REFERENCES, hypotheses), _expected(REFERENCES, hypotheses))


def test_line_breaks_and_separators_become_spaces(no_java):
    hypotheses = ["the heart is normal .\nthe lungs are clear .", "no effusion ||| .",
                  "mild cardiomegaly .\r\nsmall effusion .", "the lungs|||are clear ."]
    sanitized = ["the heart is normal . the lungs are clear .", "no effusion   .",
                 "mild cardiomegaly .  small effusion .", "the lungs are clear ."]
    _check(caption_scores(REFERENCES, hypotheses), _expected(REFERENCES, sanitized))


def test_bad_arguments():
    with pytest.raises(ValueError, match="as many references as hypotheses"):
        caption_scores(REFERENCES, HYPOTHESES[:2])
    with pytest.raises(ValueError, match="reference 1 is blank"):
        caption_scores(["a .", " \n "], ["a .", "b ."])


def _fake_java(monkeypatch, tmp_path, body):
    java = tmp_path / "java"
    java.write_text(f"#!/bin/sh\n{body}\n")
    java.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")


def test_failing_java_gives_notice(monkeypatch, tmp_path, capsys):
    _fake_java(monkeypatch, tmp_path, "echo 'Error: no JVM' >&2\nexit 1")
    scores = caption_scores(REFERENCES, HYPOTHESES)
    out = capsys.readouterr().out
    assert out.startswith("meteor: skipped (failed: ") and out.count("\n") == 1
    _check(scores, _expected(REFERENCES, HYPOTHESES))


def _gone(pid):
    """True once process ``pid`` has ended (exited or a zombie), waiting up to 5 s."""
    for _ in range(50):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
def test_hanging_java_times_out(monkeypatch, tmp_path, capsys):
    _fake_java(monkeypatch, tmp_path, f"echo $$ > {tmp_path}/pid\nexec sleep 60")
    start = time.monotonic()
    scores = caption_scores(REFERENCES, HYPOTHESES, meteor_timeout=3)
    assert time.monotonic() - start < 30
    assert capsys.readouterr().out == "meteor: skipped (no answer within 3 s)\n"
    assert "meteor" not in scores and "cider" in scores
    assert _gone(int((tmp_path / "pid").read_text()))  # the "JVM" was killed with its parent


@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs java")
@pytest.mark.slow
def test_meteor_runs_and_stays_in_step(capsys):
    """Hypotheses equal to their references but for line breaks, "|||" and spaces score 1.0;
    unsanitised, the line breaks would desynchronise METEOR's Java protocol."""
    references = ["the heart is normal . no effusion .", "lungs are clear .", "no pneumothorax ."]
    hypotheses = [
        "the heart is normal .\nno effusion .", "lungs are clear|||.", "no pneumothorax ."]
    scores = caption_scores(references, hypotheses)
    assert capsys.readouterr().out == ""
    assert list(scores) == list(SCORES)
    assert scores["meteor"] == pytest.approx(1.0, abs=1e-9)
