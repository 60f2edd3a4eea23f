"""A seq2seq task whose evaluator fails on the host (to test what a crash in evaluation keeps)."""

from mlx_research.evaluation.base import SumEvaluator
from mlx_research.train.tasks import seq2seq


class _Failing(SumEvaluator):
    def update(self, predictions, indices):
        raise RuntimeError("evaluator failed")


class Task(seq2seq.Task):
    def decode_evaluator(self, settings):
        evaluator = super().decode_evaluator(settings)
        return _Failing(evaluator.source, evaluator.predict, lambda sums: sums)
