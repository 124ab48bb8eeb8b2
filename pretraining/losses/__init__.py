"""DINOv2 pretraining losses: DINO (CLS), iBOT (masked patches) and KoLeo."""

from .dino import dino_crossed_pairs, dino_loss, soft_cross_entropy
from .ibot import ibot_loss
from .koleo import koleo_loss, koleo_loss_distributed

__all__ = [
    "dino_crossed_pairs",
    "dino_loss",
    "ibot_loss",
    "koleo_loss",
    "koleo_loss_distributed",
    "soft_cross_entropy",
]
