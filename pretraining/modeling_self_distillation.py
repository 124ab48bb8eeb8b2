"""`Dinov2ForSelfDistillation`: DINOv2's student/teacher pair with its losses, as one `PreTrainedModel`
(DINOv2 ``dinov2/train/ssl_meta_arch.py``; Oquab et al. 2023, Sec. 4).

One forward = one DINOv2 iteration without the optimizer:

1. teacher (no grad, eval): backbone on the 2B *unmasked* global crops -> CLS tokens and the patch
   tokens at the masked positions -> heads -> softmax centering or Sinkhorn-Knopp targets;
2. student: backbone on [global crops (masked), local crops] -> heads on [global CLS, local CLS,
   masked patches] in one call;
3. loss = w_dino * DINO(crossed pairs) + w_ibot * iBOT(masked patches) + w_koleo * KoLeo(global CLS).

The teacher follows the student by EMA (`update_ema`, called once per optimizer step by the
Trainer callback). With `config.distillation` the teacher is a frozen pretrained model of any size, the
student is not masked (iBOT still uses the mask positions) and `student_ema` tracks the student.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from modeling_dinov2 import Dinov2Config, Dinov2Model

from .centering import SinkhornKnoppCentering, SoftmaxCentering
from .configuration_self_distillation import TEACHER_KEYS, Dinov2SelfDistillationConfig
from .heads import DINOHead
from .losses import dino_loss, ibot_loss, koleo_loss, koleo_loss_distributed


@dataclass
class Dinov2SelfDistillationOutput(ModelOutput):
    """Loss of one self-distillation step and its parts (all scalars, the parts detached).

    Args:
        loss: w_dino * dino_loss + w_ibot * ibot_loss + w_koleo * koleo_loss (with gradient).
        dino_loss: DINO cross-entropy, mean over the crossed (student crop, teacher crop) pairs.
        ibot_loss: iBOT masked-patch cross-entropy (per-image 1/|M| weighting, mean over global crops).
        koleo_loss: KoLeo, summed over the two global crops (unweighted).
        teacher_entropy: mean entropy of the teacher's DINO targets; ln K means uniform (uninformative)
            targets.
        prototype_usage: fraction of teacher rows whose most likely prototype is distinct, a collapse
            indicator (1/rows: every crop gets the same prototype).
    """

    loss: torch.FloatTensor | None = None
    dino_loss: torch.FloatTensor | None = None
    ibot_loss: torch.FloatTensor | None = None
    koleo_loss: torch.FloatTensor | None = None
    teacher_entropy: torch.FloatTensor | None = None
    prototype_usage: torch.FloatTensor | None = None


def build_branch(backbone_config: Dinov2Config, config: Dinov2SelfDistillationConfig) -> nn.ModuleDict:
    """`{backbone, dino_head[, ibot_head]}`: the modules that the student and the teacher each have."""
    modules = {
        "backbone": Dinov2Model(backbone_config),
        "dino_head": DINOHead(backbone_config.hidden_size, **config.head_kwargs("dino")),
    }
    if config.ibot_separate_head:
        modules["ibot_head"] = DINOHead(backbone_config.hidden_size, **config.head_kwargs("ibot"))
    return nn.ModuleDict(modules)


def make_centering(config: Dinov2SelfDistillationConfig, num_prototypes: int) -> nn.Module:
    if config.centering == "sinkhorn_knopp":
        return SinkhornKnoppCentering(config.sinkhorn_iterations)
    return SoftmaxCentering(num_prototypes, momentum=config.center_momentum)


@torch.no_grad()
def copy_weights_(target: nn.Module, source: nn.Module) -> None:
    """target <- source, parameter by parameter (a no-op on the meta device used by `from_pretrained`)."""
    target_params, source_params = dict(target.named_parameters()), dict(source.named_parameters())
    if target_params.keys() != source_params.keys():
        raise ValueError("Cannot copy weights between branches with different parameters.")
    for name, param in target_params.items():
        if param.device.type != "meta" and source_params[name].device.type != "meta":
            param.copy_(source_params[name])


@torch.no_grad()
def ema_update_(target: list[torch.Tensor], source: list[torch.Tensor], momentum: float) -> None:
    """theta_t <- m * theta_t + (1 - m) * theta_s, fused over all tensors (DINOv2 `update_teacher`)."""
    torch._foreach_mul_(target, momentum)
    torch._foreach_add_(target, source, alpha=1.0 - momentum)


class Dinov2ForSelfDistillation(PreTrainedModel):
    """DINOv2 self-distillation: a student and an EMA teacher (backbone + DINO head [+ iBOT head]), softmax
    centers and the DINO + iBOT + KoLeo loss. See the module docstring for the data flow.

    The teacher is a copy of the student after initialisation, never receives gradients and stays in eval
    mode (no drop path) whatever `train()` is called with. Build one from scratch with a config, continue
    pretraining from a backbone checkpoint with [`from_backbone`], or distil with [`for_distillation`].
    """

    config_class = Dinov2SelfDistillationConfig
    config: Dinov2SelfDistillationConfig
    base_model_prefix = "ssl"
    main_input_name = "global_crops"
    supports_gradient_checkpointing = True
    # FSDP auto-wrap units (accelerate's TRANSFORMER_BASED_WRAP reads this list): every block, the embeddings
    # and each head. Student and teacher get identical units, so the EMA runs shard by shard.
    _no_split_modules = ["Dinov2Embeddings", "Dinov2Layer", "DINOHead"]
    # the backbones' attention kernels; `set_attn_implementation("eager")` reaches student and teacher
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def __init__(self, config: Dinov2SelfDistillationConfig):
        super().__init__(config)
        self.student = build_branch(config.backbone_config, config)
        self.teacher = build_branch(config.teacher_config, config)
        if config.distillation:
            # the model users keep: an EMA of the student (the teacher is frozen and of another size)
            self.student_ema = build_branch(config.backbone_config, config)
        self.dino_centering = make_centering(config, config.dino_out_dim)
        ibot_prototypes = config.ibot_out_dim if config.ibot_separate_head else config.dino_out_dim
        self.ibot_centering = make_centering(config, ibot_prototypes)
        self.post_init()
        # copied after post_init: initialising a deep copy would give it different weights
        if config.distillation:
            copy_weights_(self.student_ema, self.student)
            frozen = [self.teacher, self.student_ema]
        else:
            copy_weights_(self.teacher, self.student)
            frozen = [self.teacher]
        for module in frozen:
            module.requires_grad_(False)
            module.eval()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # backbones are PreTrainedModels and initialise themselves; heads and centers are ours
        if isinstance(module, DINOHead):
            module.reset_parameters()
        elif isinstance(module, SoftmaxCentering):
            nn.init.zeros_(module.center)

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_backbone(
        cls, backbone: str | Dinov2Model, backbone_overrides: dict | None = None, **config_kwargs
    ) -> "Dinov2ForSelfDistillation":
        """Continued pretraining: student and teacher start from a pretrained backbone, the heads are new.

        Args:
            backbone: a `Dinov2Model`, or a folder / Hub id of a `modeling_dinov2` or stock transformers
                `dinov2` / `dinov2_with_registers` checkpoint.
            backbone_overrides: config values to change for training, e.g. `{"drop_path_rate": 0.3}`.
            config_kwargs: [`Dinov2SelfDistillationConfig`] arguments (head sizes, losses, ...).
        """
        if not isinstance(backbone, Dinov2Model):
            backbone = Dinov2Model.from_pretrained(backbone)
        backbone_config = Dinov2Config.from_dict({**backbone.config.to_dict(), **(backbone_overrides or {})})
        model = cls(Dinov2SelfDistillationConfig(backbone_config=backbone_config, **config_kwargs))
        model.student.backbone.load_state_dict(backbone.state_dict())
        copy_weights_(model.teacher, model.student)
        return model

    @classmethod
    def for_distillation(
        cls, teacher: str | "Dinov2ForSelfDistillation", student_backbone_config: Dinov2Config, **config_kwargs
    ) -> "Dinov2ForSelfDistillation":
        """Distil a (small) student from a frozen pretrained teacher (DINOv2 paper, Sec. 5 / App. B.2).

        Args:
            teacher: a trained `Dinov2ForSelfDistillation` (or its folder): its EMA teacher's backbone *and
                heads* become the frozen teacher (released backbones have no heads, so they cannot teach).
            student_backbone_config: the student ViT. Drop path should be 0 (the paper removes it).
            config_kwargs: other config overrides (loss weights, ...); the head sizes are the teacher's,
                since student and teacher must share the prototypes.
        """
        if not isinstance(teacher, Dinov2ForSelfDistillation):
            teacher = Dinov2ForSelfDistillation.from_pretrained(teacher)
        source = teacher.config
        source_branch = teacher.exported_branch()
        values = {key: getattr(source, key) for key in TEACHER_KEYS}
        values.update(config_kwargs)
        config = Dinov2SelfDistillationConfig(
            backbone_config=student_backbone_config,
            teacher_backbone_config=source_branch.backbone.config,
            distillation=True,
            **values,
        )
        model = cls(config)
        copy_weights_(model.teacher, source_branch)
        # the teacher's centers carry its target statistics
        model.dino_centering.load_state_dict(teacher.dino_centering.state_dict())
        model.ibot_centering.load_state_dict(teacher.ibot_centering.state_dict())
        return model

    # ------------------------------------------------------------------ training-mode and EMA
    def train(self, mode: bool = True) -> "Dinov2ForSelfDistillation":
        """Train the student; the teacher (and the student EMA) always stay in eval mode."""
        super().train(mode)
        self.teacher.eval()
        if self.config.distillation:
            self.student_ema.eval()
        return self

    def ema_pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(targets, sources) of the EMA: teacher <- student, or student_ema <- student when distilling."""
        target = self.student_ema if self.config.distillation else self.teacher
        target_params = dict(target.named_parameters())
        names = [name for name, _ in self.student.named_parameters()]
        return [target_params[name] for name in names], [p for _, p in self.student.named_parameters()]

    @torch.no_grad()
    def update_ema(self, momentum: float) -> None:
        """The teacher update, an EMA step of the averaged branch: teacher <- m * teacher + (1 - m) * student;
        when distilling, where the teacher is frozen, the student EMA (the exported model) instead."""
        targets, sources = self.ema_pairs()
        ema_update_(targets, [s.detach() for s in sources], momentum)

    def get_input_embeddings(self) -> None:
        """None: student and teacher each have a patch embedding, neither is "the" input embedding (accelerate's
        FSDP2 would otherwise shard the student's a second time, inside its already sharded embeddings unit)."""
        return None

    def exported_branch(self) -> nn.ModuleDict:
        """The branch users want at the end: the EMA teacher, or the student EMA when distilling."""
        return self.student_ema if self.config.distillation else self.teacher

    # ------------------------------------------------------------------ forward
    def _heads(self, branch: nn.ModuleDict, cls_tokens: torch.Tensor, patch_tokens: torch.Tensor):
        """DINO logits of `cls_tokens` and iBOT logits of `patch_tokens`, in one head call when shared."""
        if "ibot_head" in branch:
            return branch["dino_head"](cls_tokens), branch["ibot_head"](patch_tokens)
        logits = branch["dino_head"](torch.cat([cls_tokens, patch_tokens]))
        return logits[: len(cls_tokens)], logits[len(cls_tokens):]

    @torch.no_grad()
    def teacher_targets(
        self, global_crops: torch.Tensor, mask_indices: torch.Tensor, teacher_temp: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher DINO targets (2B, K), iBOT targets (M, K) and the raw DINO logits, from unmasked crops.

        The centers are updated here in training mode, after the targets are computed, so step t uses the
        center of steps <= t-1 (the original's lazy update).
        """
        output = self.teacher.backbone(global_crops)
        patches = output.patch_tokens.flatten(0, 1).index_select(0, mask_indices)  # (2B, N, D) -> (M, D)
        dino_logits, ibot_logits = self._heads(self.teacher, output.pooler_output, patches)
        dino_targets = self.dino_centering(dino_logits, teacher_temp)
        ibot_targets = self.ibot_centering(ibot_logits, teacher_temp)
        if self.training:
            self.dino_centering.update(dino_logits)
            self.ibot_centering.update(ibot_logits)
        return dino_targets, ibot_targets, dino_logits

    def forward(
        self,
        global_crops: torch.Tensor,
        local_crops: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        mask_indices: torch.Tensor | None = None,
        mask_weights: torch.Tensor | None = None,
        teacher_temp: float = 0.07,
        return_dict: bool | None = None,
    ) -> Dinov2SelfDistillationOutput | tuple:
        r"""
        Args:
            global_crops: (2B, 3, H, W), crop-major (all first crops, then all second crops).
            local_crops: (L*B, 3, h, w), crop-major, or None.
            masks: (2B, N) bool iBOT masks of the global crops; None disables iBOT.
            mask_indices: (M,) flat indices of the masked patches in (2B*N); derived from `masks` if None.
            mask_weights: (M,) 1/|M_i| per masked patch; derived from `masks` if None.
            teacher_temp: teacher softmax temperature (scheduled by the Trainer).
        """
        config = self.config
        if global_crops.dim() != 4 or global_crops.shape[0] % 2:
            raise ValueError(
                f"global_crops must be (2B, C, H, W) with the two global crops of B images, got {tuple(global_crops.shape)}."
            )
        use_ibot = masks is not None
        if use_ibot and masks.shape[-1] != self._num_patches(global_crops):
            patch = config.backbone_config.patch_size
            raise ValueError(
                f"The iBOT masks hold {masks.shape[-1]} patches per global crop, but the backbone cuts the "
                f"{tuple(global_crops.shape[-2:])} crops into {self._num_patches(global_crops)} patches of {patch} px: "
                f"build the MultiCropCollator with patch_size={patch} (the model's backbone_config.patch_size)."
            )
        if not use_ibot:
            mask_indices = torch.zeros(0, dtype=torch.long, device=global_crops.device)
        elif mask_indices is None:
            mask_indices = masks.flatten().nonzero().flatten()

        dino_targets, ibot_targets, teacher_logits = self.teacher_targets(global_crops, mask_indices, teacher_temp)

        # The student sees the masked global crops (unmasked when distilling). An all-false mask instead of None
        # keeps the mask token in the graph, so DDP sees every parameter used.
        student_masks = masks if use_ibot and not config.distillation else None
        if student_masks is None and self.student.backbone.embeddings.mask_token is not None:
            student_masks = torch.zeros(
                global_crops.shape[0], self._num_patches(global_crops), dtype=torch.bool, device=global_crops.device
            )
        crops = [global_crops] if local_crops is None else [global_crops, local_crops]
        outputs = self.student.backbone(crops, bool_masked_pos=[student_masks] + [None] * (len(crops) - 1))
        global_cls = outputs[0].pooler_output  # (2B, D)
        local_cls = outputs[1].pooler_output if local_crops is not None else global_cls[:0]  # (L*B, D)
        patches = outputs[0].patch_tokens.flatten(0, 1).index_select(0, mask_indices)  # (2B, N, D) -> (M, D)
        cls_logits, patch_logits = self._heads(self.student, torch.cat([global_cls, local_cls]), patches)
        n_global = global_cls.shape[0]

        loss_dino = dino_loss(
            cls_logits[:n_global], cls_logits[n_global:] if local_crops is not None else None, dino_targets,
            student_temp=config.student_temp,
        )
        if use_ibot:
            loss_ibot = ibot_loss(patch_logits, ibot_targets, masks, mask_weights, student_temp=config.student_temp)
        else:
            loss_ibot = patch_logits.sum() * 0.0  # keeps a separate iBOT head in the graph
        koleo = koleo_loss_distributed if config.koleo_distributed else koleo_loss
        loss_koleo = sum(koleo(crop) for crop in global_cls.chunk(2))  # per global crop, never mixed
        loss = config.dino_loss_weight * loss_dino + config.ibot_loss_weight * loss_ibot
        loss = loss + config.koleo_loss_weight * loss_koleo

        with torch.no_grad():
            entropy = -(dino_targets * torch.log(dino_targets.clamp_min(1e-30))).sum(-1).mean()
            usage = torch.tensor(
                teacher_logits.argmax(-1).unique().numel() / max(teacher_logits.shape[0], 1), device=loss.device
            )
        output = Dinov2SelfDistillationOutput(
            loss=loss,
            dino_loss=loss_dino.detach(),
            ibot_loss=loss_ibot.detach(),
            koleo_loss=loss_koleo.detach(),
            teacher_entropy=entropy,
            prototype_usage=usage,
        )
        if return_dict is False:
            return output.to_tuple()
        return output

    def _num_patches(self, pixel_values: torch.Tensor) -> int:
        patch = self.config.backbone_config.patch_size
        return (pixel_values.shape[-2] // patch) * (pixel_values.shape[-1] // patch)

    def floating_point_ops(self, inputs: dict, exclude_embeddings: bool = True) -> int:
        """Rough training FLOPs of one batch: 6 * params * tokens for the student, 2 * params * tokens for
        the teacher (forward only), counting one token per patch plus the prefix tokens."""

        def tokens(crops: torch.Tensor | None, backbone_config: Dinov2Config) -> int:
            if crops is None:
                return 0
            per_image = self._num_patches(crops) + 1 + backbone_config.num_register_tokens
            return crops.shape[0] * per_image

        student = sum(p.numel() for p in self.student.backbone.parameters())
        teacher = sum(p.numel() for p in self.teacher.backbone.parameters())
        student_tokens = tokens(inputs["global_crops"], self.config.backbone_config)
        student_tokens += tokens(inputs.get("local_crops"), self.config.backbone_config)
        teacher_tokens = tokens(inputs["global_crops"], self.config.teacher_config)
        return 6 * student * student_tokens + 2 * teacher * teacher_tokens
