"""DINOv2 optimizer parameter groups and the scheduler that drives them
(DINOv2 ``dinov2/utils/param_groups.py`` and ``apply_optim_scheduler`` in ``dinov2/train/train.py``).

Per student parameter:

- lr multiplier ``layerwise_decay ** (L + 1 - layer_id)`` with layer_id 0 for the embeddings (patch
  projection, position table, CLS / mask / register tokens), ``i + 1`` for block ``i`` and ``L + 1``
  (multiplier 1) for everything else (final norm, heads); the patch embedding gets another x0.2;
- weight-decay multiplier 0 for biases, norms and LayerScale, 1 otherwise (the position table, tokens
  and the last layer's weight-norm magnitude are decayed, as in the original);
- ``is_last_layer`` for the heads' prototype layers, which follow the last-layer lr schedule (0 during
  the first epoch).

Parameters with equal (lr multiplier, wd multiplier, is_last_layer) share one group.
"""

from __future__ import annotations

import re

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from .schedules import PretrainingSchedule

_EMBEDDING_PARAMS = ("cls_token", "mask_token", "position_embeddings", "register_tokens", "patch_embeddings")
_BLOCK = re.compile(r"(?:^|\.)encoder\.layer\.(\d+)\.")


def layer_id(name: str, num_layers: int) -> int:
    """Depth of a backbone parameter: 0 embeddings, i + 1 for block i, L + 1 for the rest."""
    if name.startswith("embeddings.") and any(key in name for key in _EMBEDDING_PARAMS):
        return 0
    block = _BLOCK.search(name)
    if block:
        return int(block.group(1)) + 1
    return num_layers + 1


def no_weight_decay(name: str) -> bool:
    """Biases, norms and LayerScale are not decayed (the original's `.bias` / `norm` / `gamma` rule)."""
    return name.endswith(".bias") or "norm" in name or "layer_scale" in name


def parameter_multipliers(
    branch: nn.ModuleDict, layerwise_decay: float = 0.9, patch_embed_lr_mult: float = 0.2
) -> dict[str, dict]:
    """`{name: {"lr_multiplier", "wd_multiplier", "is_last_layer"}}` for every trainable parameter of a
    student branch (`{backbone, dino_head[, ibot_head]}`)."""
    out = {}
    for module_name, module in branch.items():
        num_layers = module.config.num_hidden_layers if module_name == "backbone" else 0
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            lr_multiplier = 1.0
            if module_name == "backbone":
                lr_multiplier = layerwise_decay ** (num_layers + 1 - layer_id(name, num_layers))
                if "patch_embeddings" in name:
                    lr_multiplier *= patch_embed_lr_mult
            out[f"{module_name}.{name}"] = {
                "lr_multiplier": lr_multiplier,
                "wd_multiplier": 0.0 if no_weight_decay(name) else 1.0,
                "is_last_layer": "last_layer" in name,
            }
    return out


def build_param_groups(
    model: nn.Module, branch_name: str = "student", layerwise_decay: float = 0.9, patch_embed_lr_mult: float = 0.2
) -> list[dict]:
    """Optimizer parameter groups of `model.<branch_name>`, fused by equal multipliers.

    Each group carries `lr_multiplier`, `wd_multiplier`, `is_last_layer` and the parameter `names`;
    [`RecipeScheduler`] turns them into `lr` and `weight_decay` at every step.
    """
    branch = getattr(model, branch_name)
    params = dict(branch.named_parameters())
    groups: dict[tuple, dict] = {}
    for name, multipliers in parameter_multipliers(branch, layerwise_decay, patch_embed_lr_mult).items():
        key = (multipliers["lr_multiplier"], multipliers["wd_multiplier"], multipliers["is_last_layer"])
        group = groups.setdefault(key, {"params": [], "names": [], **multipliers})
        group["params"].append(params[name])
        group["names"].append(f"{branch_name}.{name}")
    return list(groups.values())


class RecipeScheduler(LRScheduler):
    """Sets every group's `lr` and `weight_decay` from a [`PretrainingSchedule`] at each optimizer step:
    lr = (last-layer lr if `is_last_layer` else lr)(step) x `lr_multiplier`, weight_decay = wd(step) x
    `wd_multiplier`. Its state is the step counter, so a resumed run continues the same curves."""

    def __init__(self, optimizer: Optimizer, schedule: PretrainingSchedule, last_epoch: int = -1):
        for group in optimizer.param_groups:
            missing = {"lr_multiplier", "wd_multiplier", "is_last_layer"} - set(group)
            if missing:
                raise ValueError(f"Parameter group without {sorted(missing)}: build the groups with `build_param_groups`.")
        self.schedule = schedule
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        step = max(self.last_epoch, 0)
        lr, last_layer_lr, wd = self.schedule.lr(step), self.schedule.last_layer_lr(step), self.schedule.weight_decay(step)
        for group in self.optimizer.param_groups:
            group["weight_decay"] = wd * group["wd_multiplier"]
        return [(last_layer_lr if g["is_last_layer"] else lr) * g["lr_multiplier"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {key: value for key, value in super().state_dict().items() if key != "schedule"}
