"""Configuration of the DINOv2 self-distillation model (student + EMA teacher + heads + losses).

Values default to `dinov2/configs/ssl_default_config.yaml`; the ViT-L/g recipes (`vitl14.yaml`,
`vitg14.yaml`) differ in the head sizes, a separate iBOT head and Sinkhorn-Knopp centering (see
`pretraining.presets`).
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from modeling_dinov2 import Dinov2Config

SSL_MODEL_TYPE = "dinov2_ssl_self_distillation"
CENTERINGS = ("softmax_centering", "sinkhorn_knopp")
OLD_CENTERING_NAMES = {"centering": "softmax_centering"}  # configs saved before the rename
# settings a distilled student inherits from its teacher: the heads (prototypes must match) and the targets
TEACHER_KEYS = (
    "dino_out_dim", "dino_hidden_dim", "dino_bottleneck_dim", "dino_n_layers", "ibot_separate_head", "ibot_out_dim",
    "ibot_hidden_dim", "ibot_bottleneck_dim", "ibot_n_layers", "centering", "center_momentum", "sinkhorn_iterations",
    "student_temp",
)


def _as_backbone_config(value: Dinov2Config | dict | None) -> Dinov2Config | None:
    if value is None or isinstance(value, Dinov2Config):
        return value
    if isinstance(value, dict):
        return Dinov2Config.from_dict(value)
    raise TypeError(f"Expected a Dinov2Config or a dict, got {type(value).__name__}.")


PROTOTYPES = 65536  # K of the DINO and iBOT heads in the ViT-S/B recipe (ssl_default_config.yaml)


class Dinov2SelfDistillationConfig(PretrainedConfig):
    r"""Configuration of [`Dinov2ForSelfDistillation`].

    Args:
        backbone_config (`Dinov2Config` or `dict`): the student ViT (and, unless distilling, the teacher's).
            Defaults to a ViT-B/14 at 224 px with LayerScale 1e-5.
        teacher_backbone_config (`Dinov2Config`, *optional*): the teacher ViT when distilling from a bigger
            frozen model (`distillation=True`); `None` means the teacher is the EMA of the student.
        dino_out_dim (`int`, defaults to 65536): prototypes K of the DINO head.
        dino_hidden_dim (`int`, defaults to 2048), dino_bottleneck_dim (`int`, defaults to 256),
        dino_n_layers (`int`, defaults to 3): DINO head MLP.
        ibot_separate_head (`bool`, defaults to `False`): a separate iBOT head (ViT-L/g recipes) instead of
            sharing the DINO head (iBOT's shared head, the default recipe).
        ibot_out_dim, ibot_hidden_dim, ibot_bottleneck_dim, ibot_n_layers: the separate iBOT head.
        centering (`str`, defaults to `"softmax_centering"`): teacher target normalisation, `"softmax_centering"`
            (softmax of the logits minus an EMA center, the ViT-S/B recipe) or `"sinkhorn_knopp"` (ViT-L/g).
        center_momentum (`float`, defaults to 0.9): EMA momentum of the softmax centers.
        sinkhorn_iterations (`int`, defaults to 3).
        student_temp (`float`, defaults to 0.1): student softmax temperature (DINO and iBOT).
        dino_loss_weight (`float`, defaults to 1.0), ibot_loss_weight (`float`, defaults to 1.0),
        koleo_loss_weight (`float`, defaults to 0.1): weights of the three losses in the total.
        koleo_distributed (`bool`, defaults to `False`): nearest neighbours over the global batch (all ranks)
            instead of the per-GPU batch of the original. Makes N ranks x batch b train exactly like one rank x
            batch N*b; the original's per-GPU KoLeo does not have that property.
        distillation (`bool`, defaults to `False`): train the student against a frozen pretrained teacher
            (DINOv2 paper, Sec. 5): no EMA teacher, no student masking (iBOT still uses the mask positions),
            and a separate EMA of the student (`student_ema`) is kept as the final model.
    """

    model_type = SSL_MODEL_TYPE
    sub_configs = {"backbone_config": Dinov2Config, "teacher_backbone_config": Dinov2Config}

    def __init__(
        self,
        backbone_config: Dinov2Config | dict | None = None,
        teacher_backbone_config: Dinov2Config | dict | None = None,
        dino_out_dim: int = PROTOTYPES,
        dino_hidden_dim: int = 2048,
        dino_bottleneck_dim: int = 256,
        dino_n_layers: int = 3,
        ibot_separate_head: bool = False,
        ibot_out_dim: int = PROTOTYPES,
        ibot_hidden_dim: int = 2048,
        ibot_bottleneck_dim: int = 256,
        ibot_n_layers: int = 3,
        centering: str = "softmax_centering",
        center_momentum: float = 0.9,
        sinkhorn_iterations: int = 3,
        student_temp: float = 0.1,
        dino_loss_weight: float = 1.0,
        ibot_loss_weight: float = 1.0,
        koleo_loss_weight: float = 0.1,
        koleo_distributed: bool = False,
        distillation: bool = False,
        **kwargs,
    ):
        self.backbone_config = _as_backbone_config(backbone_config) or Dinov2Config()
        self.teacher_backbone_config = _as_backbone_config(teacher_backbone_config)
        self.dino_out_dim = dino_out_dim
        self.dino_hidden_dim = dino_hidden_dim
        self.dino_bottleneck_dim = dino_bottleneck_dim
        self.dino_n_layers = dino_n_layers
        self.ibot_separate_head = ibot_separate_head
        self.ibot_out_dim = ibot_out_dim
        self.ibot_hidden_dim = ibot_hidden_dim
        self.ibot_bottleneck_dim = ibot_bottleneck_dim
        self.ibot_n_layers = ibot_n_layers
        self.centering = OLD_CENTERING_NAMES.get(centering, centering)
        self.center_momentum = center_momentum
        self.sinkhorn_iterations = sinkhorn_iterations
        self.student_temp = student_temp
        self.dino_loss_weight = dino_loss_weight
        self.ibot_loss_weight = ibot_loss_weight
        self.koleo_loss_weight = koleo_loss_weight
        self.koleo_distributed = koleo_distributed
        self.distillation = distillation
        super().__init__(**kwargs)
        self.validate()

    def validate(self) -> None:
        """Raise a `ValueError` naming the problem for settings the model cannot be built with."""
        if self.centering not in CENTERINGS:
            raise ValueError(f"`centering` must be one of {CENTERINGS}, got {self.centering!r}.")
        if self.distillation and self.teacher_backbone_config is None:
            raise ValueError("`distillation=True` needs `teacher_backbone_config` (the frozen teacher's ViT).")
        if not self.distillation and self.teacher_backbone_config is not None:
            raise ValueError(
                "`teacher_backbone_config` is only used with `distillation=True`; the EMA teacher is a copy of the student."
            )
        if self.distillation and self.teacher_backbone_config.patch_size != self.backbone_config.patch_size:
            raise ValueError(
                "Distillation needs the same patch size for student and teacher (the iBOT mask positions are shared), "
                f"got {self.backbone_config.patch_size} and {self.teacher_backbone_config.patch_size}."
            )
        if self.student_temp <= 0:
            raise ValueError(f"`student_temp` must be positive, got {self.student_temp}.")
        if not self.backbone_config.use_mask_token and not self.distillation and self.ibot_loss_weight > 0:
            raise ValueError("The iBOT loss needs a mask token: set `use_mask_token=True` in the backbone config.")

    @property
    def teacher_config(self) -> Dinov2Config:
        """The teacher ViT: the student's own architecture unless distilling."""
        return self.teacher_backbone_config if self.distillation else self.backbone_config

    def head_kwargs(self, kind: str) -> dict[str, Any]:
        """Keyword arguments of `DINOHead` for the `"dino"` or `"ibot"` head (without `in_dim`)."""
        return dict(
            out_dim=getattr(self, f"{kind}_out_dim"),
            hidden_dim=getattr(self, f"{kind}_hidden_dim"),
            bottleneck_dim=getattr(self, f"{kind}_bottleneck_dim"),
            n_layers=getattr(self, f"{kind}_n_layers"),
        )

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        for key in ("backbone_config", "teacher_backbone_config"):
            value = getattr(self, key)
            output[key] = value.to_dict() if value is not None else None
        return output
