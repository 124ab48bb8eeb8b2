"""k-NN accuracy of frozen features with DINOv2's protocol (`dinov2/eval/knn.py`).

Each evaluation sample votes with its k nearest training samples by cosine similarity; with s_1 >= ... >= s_K
the similarities of the K = max(ks) nearest and w = softmax(s / T) over those K, the score of class c is the
sum of w_i over the first k neighbours of class c. Top-1 / top-5 accuracy of those scores, for each k.
"""

import datasets
import evaluate

from modeling_dinov2.metrics.functional import DEFAULT_KS, DEFAULT_TEMPERATURE, knn_classify

_KWARGS_DESCRIPTION = """
Args:
    predictions: (N, D) features of the evaluation samples.
    references: (N,) their integer labels.
    train_features: (M, D) features of the training samples (array or tensor).
    train_labels: (M,) their labels.
    ks: numbers of neighbours (default 10, 20, 100, 200); T: the vote temperature (0.07).
Returns:
    {"top1_k<k>": ..., "top5_k<k>": ...} accuracies in [0, 1] for each k.
"""


class KnnAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float32")),
                                        "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, train_features, train_labels, ks=DEFAULT_KS, T=DEFAULT_TEMPERATURE,
                 num_classes=None):
        import torch

        results = knn_classify(torch.as_tensor(train_features), torch.as_tensor(train_labels),
                               torch.as_tensor(predictions), torch.as_tensor(references), ks=tuple(ks), T=T,
                               num_classes=num_classes)
        return {f"{name}_k{k}": value for k, accuracy in results.items() for name, value in accuracy.items()}
