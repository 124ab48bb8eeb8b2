"""DINOv2 vision transformers as first-class transformers models.

Importing the package registers `Dinov2Config` and the models with `AutoConfig`, `AutoModel`,
`AutoModelForImageClassification` and `AutoBackbone` (model type ``dinov2_ssl``).
"""

from transformers import AutoBackbone, AutoConfig, AutoModel, AutoModelForImageClassification

from .configuration_dinov2 import MODEL_TYPE, PRESETS, Dinov2Config
from .loading import load_backbone
from .model_card import build_model_card, write_model_card
from .modeling_dinov2 import (
    Dinov2Backbone,
    Dinov2ForImageClassification,
    Dinov2Model,
    Dinov2ModelOutput,
    Dinov2PreTrainedModel,
    interpolate_position_embeddings,
)
from .preprocessing import eval_transform, make_image_processor

AutoConfig.register(MODEL_TYPE, Dinov2Config, exist_ok=True)
AutoModel.register(Dinov2Config, Dinov2Model, exist_ok=True)
AutoModelForImageClassification.register(Dinov2Config, Dinov2ForImageClassification, exist_ok=True)
AutoBackbone.register(Dinov2Config, Dinov2Backbone, exist_ok=True)

__all__ = [
    "PRESETS",
    "Dinov2Backbone",
    "Dinov2Config",
    "Dinov2ForImageClassification",
    "Dinov2Model",
    "Dinov2ModelOutput",
    "Dinov2PreTrainedModel",
    "build_model_card",
    "eval_transform",
    "interpolate_position_embeddings",
    "load_backbone",
    "make_image_processor",
    "write_model_card",
]
