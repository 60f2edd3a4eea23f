"""Tests for mlx_research.evaluation.clinical: R2Gen's P/R/F1 against hand counts."""

import numpy as np
import pytest

from mlx_research.evaluation.clinical import clinical_scores, labels_matrix


def _prf(tp, fp, fn):
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def test_clinical_scores_against_hand_counts():
    observations = ("Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Edema")
    reference = [{"Cardiomegaly": 1, "Pleural Effusion": 1}, {"Cardiomegaly": 1},
                 {"Pleural Effusion": -1, "Pneumothorax": 0}, {"Cardiomegaly": 0}]
    predicted = [{"Cardiomegaly": 1}, {"Cardiomegaly": -1, "Pleural Effusion": 1},
                 {"Pleural Effusion": 1}, {"Cardiomegaly": 1, "No Finding": 1}]
    # per observation (tp, fp, fn), uncertain and absent counting as negative:
    # Cardiomegaly: ref 1,1,0,0 pred 1,0,0,1 -> (1, 1, 1); Pleural Effusion: ref 1,0,0,0
    # pred 0,1,1,0 -> (0, 2, 1); Pneumothorax and Edema: nothing -> (0, 0, 0)
    counts = [(1, 1, 1), (0, 2, 1), (0, 0, 0), (0, 0, 0)]
    per_label = np.array([_prf(*c) for c in counts])
    micro = _prf(1, 3, 2)
    scores = clinical_scores(reference, predicted, observations)
    assert scores["precision_micro"] == pytest.approx(micro[0])  # 0.25
    assert scores["recall_micro"] == pytest.approx(micro[1])  # 1 / 3
    assert scores["f1_micro"] == pytest.approx(micro[2])
    for i, name in enumerate(("precision", "recall", "f1")):
        assert scores[f"{name}_macro"] == pytest.approx(per_label[:, i].mean())
    assert scores["f1_macro"] == pytest.approx(0.5 / 4)
    empty = clinical_scores([{}, {"Edema": -1}], [{}, {}], observations)
    assert all(v == 0.0 for v in empty.values())
    perfect = clinical_scores(reference, reference, ("Cardiomegaly",))
    assert all(v == 1.0 for v in perfect.values())
    with pytest.raises(ValueError, match="2 reference and 1 predicted"):
        clinical_scores([{}, {}], [{}])


def test_labels_matrix():
    m = labels_matrix([{"No Finding": 1}, {"Cardiomegaly": -1, "Edema": 1, "Fracture": 0}])
    assert m.shape == (2, 14) and m.dtype == np.int32
    expected = np.zeros((2, 14), np.int32)
    expected[0, 0] = expected[1, 5] = 1
    np.testing.assert_array_equal(m, expected)
