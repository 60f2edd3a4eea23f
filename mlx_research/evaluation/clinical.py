"""Clinical efficacy of reports: R2Gen's P/R/F1 over the CheXpert labels of reference and
generated reports (labels from `mlx_research.data.chexpert`).

`clinical_scores` follows R2Gen's convention (its lineage runs the CheXpert labeler on both
texts): only 1 is positive, uncertain (-1) and blank count as negative, and precision, recall and
F1 are sklearn's micro and macro averages with ``zero_division=0``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mlx_research.data.chexpert import CHEXPERT_LABELS


def labels_matrix(labels: Sequence[Mapping[str, int]],
                  observations: Sequence[str] = CHEXPERT_LABELS) -> np.ndarray:
    """Binary label matrix, R2Gen's convention: 1 positive, uncertain (-1) and absent -> 0.

    Args:
      labels: per report {observation: 1 | 0 | -1}.
      observations: the columns, in order.

    Returns:
      int32 [len(labels), len(observations)].
    """
    matrix = np.zeros((len(labels), len(observations)), np.int32)
    for row, report in enumerate(labels):
        for col, name in enumerate(observations):
            matrix[row, col] = report.get(name) == 1
    return matrix


def clinical_scores(reference_labels: Sequence[Mapping[str, int]],
                    predicted_labels: Sequence[Mapping[str, int]],
                    observations: Sequence[str] = CHEXPERT_LABELS) -> dict[str, float]:
    """Micro and macro precision/recall/F1 of predicted against reference labels.

    sklearn's ``precision_recall_fscore_support(..., average="micro" | "macro",
    zero_division=0)`` on `labels_matrix` of both: micro pools true/false positives over all
    observations; macro is the unweighted mean of the per-observation scores (an observation
    with no reference and no predicted positive scores 0).

    Args:
      reference_labels: per report {observation: 1 | 0 | -1} of the references.
      predicted_labels: the same for the generated reports, in the same order.
      observations: the observations scored.

    Returns:
      {"precision_micro", "recall_micro", "f1_micro", "precision_macro", "recall_macro",
      "f1_macro"}.
    """
    if len(reference_labels) != len(predicted_labels):
        raise ValueError(f"{len(reference_labels)} reference and {len(predicted_labels)} "
                         "predicted label sets")
    truth = labels_matrix(reference_labels, observations).astype(bool)
    pred = labels_matrix(predicted_labels, observations).astype(bool)
    tp = np.sum(truth & pred, axis=0).astype(np.float64)
    fp = np.sum(~truth & pred, axis=0).astype(np.float64)
    fn = np.sum(truth & ~pred, axis=0).astype(np.float64)

    def prf(tp, fp, fn):
        precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=tp + fp > 0)
        recall = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=tp + fn > 0)
        f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=tp > 0)
        return precision, recall, f1

    micro = prf(tp.sum(keepdims=True), fp.sum(keepdims=True), fn.sum(keepdims=True))
    macro = prf(tp, fp, fn)
    scores = {}
    for name, values in zip(("precision", "recall", "f1"), micro):
        scores[f"{name}_micro"] = float(values[0])
    for name, values in zip(("precision", "recall", "f1"), macro):
        scores[f"{name}_macro"] = float(values.mean()) if values.size else 0.0
    return scores
