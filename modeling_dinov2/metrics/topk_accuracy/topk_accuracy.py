"""Top-k accuracy: the fraction of samples whose label is among the k highest-scoring classes.

Top-1 accuracy is `evaluate`'s `accuracy` (mean of prediction == reference) on the arg-max predictions.
"""

import datasets
import evaluate

from modeling_dinov2.metrics.functional import topk_accuracy

_DESCRIPTION = __doc__
_KWARGS_DESCRIPTION = """
Args:
    predictions: (N, C) class scores (logits, probabilities or votes), one list per sample.
    references: (N,) integer class ids.
    ks: the k values (default [1, 5]); a k above C counts every label as found.
Returns:
    {"top<k>": accuracy in [0, 1]} for each k.
Example:
    >>> metric = modeling_dinov2.metrics.load("topk_accuracy")
    >>> metric.compute(predictions=[[0.1, 0.9], [0.8, 0.2]], references=[1, 1], ks=[1])
    {'top1': 0.5}
"""


class TopkAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float32")),
                                        "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, ks=(1, 5)):
        accuracy = topk_accuracy(predictions, references, ks=tuple(ks))
        return {f"top{k}": value for k, value in accuracy.items()}
