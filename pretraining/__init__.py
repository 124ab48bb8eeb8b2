"""DINOv2 self-supervised pretraining components: augmentation, masking, collation, heads, teacher
target normalisation, losses and schedules. Each is a small, model-agnostic building block."""

from .augmentations import MultiCropAugmentation
from .centering import SinkhornKnoppCentering, SoftmaxCentering, sinkhorn_knopp
from .collate import MultiCropCollator
from .heads import DINOHead
from .losses import (
    DINOLoss,
    IBOTPatchLoss,
    KoLeoLoss,
    dino_crossed_pairs,
    dino_loss,
    ibot_loss,
    koleo_loss,
    soft_cross_entropy,
)
from .masking import BlockMaskGenerator, MaskBatch, sample_masks
from .schedules import (
    cosine_schedule,
    learning_rate,
    scaled_learning_rate,
    teacher_momentum,
    teacher_temperature,
    weight_decay,
)

__all__ = [
    "BlockMaskGenerator",
    "DINOHead",
    "DINOLoss",
    "IBOTPatchLoss",
    "KoLeoLoss",
    "MaskBatch",
    "MultiCropAugmentation",
    "MultiCropCollator",
    "SinkhornKnoppCentering",
    "SoftmaxCentering",
    "cosine_schedule",
    "dino_crossed_pairs",
    "dino_loss",
    "ibot_loss",
    "koleo_loss",
    "learning_rate",
    "scaled_learning_rate",
    "sample_masks",
    "sinkhorn_knopp",
    "soft_cross_entropy",
    "teacher_momentum",
    "teacher_temperature",
    "weight_decay",
]
