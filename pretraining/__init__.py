"""DINOv2 self-supervised pretraining: augmentation, masking, collation, heads, teacher target normalisation,
losses and schedules (small, model-agnostic building blocks), `Dinov2ForSelfDistillation`, and the
`Dinov2PretrainingTrainer` that trains it (see pretraining/README.md)."""

from .augmentations import MultiCropAugmentation
from .centering import SinkhornKnoppCentering, SoftmaxCentering, sinkhorn_knopp
from .collate import MultiCropCollator
from .configuration_self_distillation import Dinov2SelfDistillationConfig
from .data import BadImageError, EpochRandomSampler, MultiCropDataset, decode_image
from .fashion_mnist import load_fashion_mnist
from .export import export_backbone
from .heads import DINOHead
from .losses import (
    dino_crossed_pairs,
    dino_loss,
    ibot_loss,
    koleo_loss,
    soft_cross_entropy,
)
from .masking import BlockMaskGenerator, MaskBatch, sample_masks
from .modeling_self_distillation import Dinov2ForSelfDistillation, Dinov2SelfDistillationOutput
from .schedules import (
    PretrainingSchedule,
    cosine_schedule,
    learning_rate,
    scaled_learning_rate,
    teacher_momentum,
    teacher_temperature,
    weight_decay,
)
from .trainer import Dinov2PretrainingArguments, Dinov2PretrainingTrainer, NonFiniteLossError

# `AutoConfig.from_pretrained` / `AutoModel.from_pretrained` of a self-distillation checkpoint
from transformers import AutoConfig, AutoModel  # noqa: E402

AutoConfig.register(Dinov2SelfDistillationConfig.model_type, Dinov2SelfDistillationConfig, exist_ok=True)
AutoModel.register(Dinov2SelfDistillationConfig, Dinov2ForSelfDistillation, exist_ok=True)

__all__ = [
    "BadImageError",
    "BlockMaskGenerator",
    "Dinov2ForSelfDistillation",
    "Dinov2PretrainingArguments",
    "Dinov2PretrainingTrainer",
    "Dinov2SelfDistillationConfig",
    "Dinov2SelfDistillationOutput",
    "EpochRandomSampler",
    "MultiCropDataset",
    "NonFiniteLossError",
    "PretrainingSchedule",
    "decode_image",
    "export_backbone",
    "load_fashion_mnist",
    "DINOHead",
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
