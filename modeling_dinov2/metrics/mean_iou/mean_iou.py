"""Mean intersection over union of semantic segmentation, from a confusion matrix over all pixels.

IoU_c = TP_c / (TP_c + FP_c + FN_c); the mean is over the classes present in the references or the
predictions (the others have no IoU), as `evaluate`'s `mean_iou` and mmsegmentation compute it. Pixels whose
reference is `ignore_index` are left out; pixel accuracy is correct / labelled pixels (`evaluate`'s
`overall_accuracy`).
"""

import datasets
import evaluate

from modeling_dinov2.metrics.functional import IGNORE_INDEX, mean_iou

_KWARGS_DESCRIPTION = """
Args:
    predictions: (N, H, W) predicted class ids, one 2-d list (or array) per image.
    references: (N, H, W) true class ids, `ignore_index` where unlabelled.
    num_labels: the number of classes C.
    ignore_index: the reference value to leave out (default 255).
Returns:
    {"mean_iou", "pixel_accuracy", "per_class_iou"} (per-class NaN for classes absent from both).
"""


class MeanIoU(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Sequence(datasets.Value("int32"))),
                                        "references": datasets.Sequence(datasets.Sequence(datasets.Value("int32")))}),
        )

    def _compute(self, predictions, references, num_labels: int, ignore_index: int = IGNORE_INDEX):
        import numpy as np

        predictions = np.concatenate([np.asarray(p).ravel() for p in predictions]) if len(predictions) else np.empty(0)
        references = np.concatenate([np.asarray(r).ravel() for r in references]) if len(references) else np.empty(0)
        return mean_iou(predictions, references, num_classes=num_labels, ignore_index=ignore_index)
