"""Recipes for `dinov2-pretrain --preset NAME`: the original DINOv2 hyperparameters per architecture, and a
`tiny` preset that trains in minutes on a CPU.

- `vit_small`, `vit_base`: `ssl_default_config.yaml` (the original trained these sizes only by distillation;
  these are its from-scratch defaults): base lr 4e-3 per 1024 images, 100 x 1250 steps, 10 warm-up epochs,
  weight decay 0.04 -> 0.4, teacher momentum 0.992 -> 1, drop path 0.3, layer-wise decay 0.9, 65536
  prototypes with a shared iBOT head, softmax centering, batch 64 per GPU.
- `vit_large`, `vit_giant2`: `vitl14.yaml` / `vitg14.yaml`: SwiGLU FFN, base lr 2e-4, 500 x 1250 steps,
  80 warm-up epochs, weight decay 0.04 -> 0.2, momentum 0.994, drop path 0.4, no layer-wise decay,
  131072 prototypes (bottleneck 384) plus a separate iBOT head, Sinkhorn-Knopp, batch 32 / 12 per GPU.
- `tiny`: a 4-block, 128-wide ViT with patch 7 and an FFN as wide as the blocks on 2 x 28-px global and 2 x 14-px
  local crops, for Fashion-MNIST-sized images on a CPU (2900 steps of batch 128: ~10 min on 2 cores with bf16
  instructions, ~30 min in fp32 without). Without --train_dir / --dataset_name it trains on the Fashion-MNIST
  train split (`TINY_DEFAULT_DATA`). Short-run choices, found by probing on Fashion-MNIST (the runs and their
  figures: docs/results.md, "The tiny preset: the search"):
  LayerScale 1.0 (with 1e-5 the blocks barely move in a short run); a fast EMA, momentum 0.9 -> 0.99 (the
  original 0.992 -> 1 averages over more steps than the run has); Sinkhorn-Knopp at a constant teacher
  temperature of 0.01 (softmax centering swings between collapse and uniform targets at this batch size; a cold
  teacher learns fastest in a short run); 512 prototypes and a 512-wide head; lr 3e-3 unscaled; no blur (sigma up
  to 2 px erases a 28-px image); KoLeo weight 0.3 (the regulariser that matters most here); FFN ratio 1 instead of
  4 (a faster step: at equal time, more steps beat a wider FFN); the batched uint8 augmentation in the collator
  and decoded images cached in memory, read in the main process (per-image transforms and a DataLoader worker
  would compete with the step for the 2 cores); eager attention (faster than SDPA on 17-token sequences); bf16
  autocast where the machine computes bf16 natively (AMX, AVX512-BF16, CUDA), else fp32 (emulated bf16 is an
  order of magnitude slower).

Each preset has three parts, for the `model`, `data` and `training` argument groups of the CLI.
"""

from __future__ import annotations

from .configuration_self_distillation import PROTOTYPES

OFFICIAL_EPOCH_LENGTH = 1250
TINY_DEFAULT_DATA = dict(dataset_name="fashion_mnist", max_train_samples=None)  # the whole train split
# DINOv2 counts 1250 iterations as an epoch, whatever the dataset size

_DEFAULT_RECIPE = dict(
    model=dict(
        patch_size=14, drop_path_rate=0.3, layerscale_value=1e-5, dino_out_dim=PROTOTYPES,
        dino_hidden_dim=2048, dino_bottleneck_dim=256, ibot_separate_head=False, centering="softmax_centering",
    ),
    data=dict(global_crops_size=224, local_crops_size=98, local_crops_number=8),
    training=dict(
        per_device_train_batch_size=64, learning_rate=4e-3, max_steps=100 * OFFICIAL_EPOCH_LENGTH, warmup_epochs=10,
        epoch_length=OFFICIAL_EPOCH_LENGTH, weight_decay=0.04, weight_decay_end=0.4, momentum_teacher=0.992,
        warmup_teacher_temp_epochs=30, layerwise_decay=0.9, freeze_last_layer_epochs=1, min_lr=1e-6,
        save_steps=3 * OFFICIAL_EPOCH_LENGTH, save_total_limit=3,
    ),
)

_LARGE_RECIPE = dict(
    model=dict(
        _DEFAULT_RECIPE["model"], drop_path_rate=0.4, ffn_type="swiglu", dino_out_dim=131072,
        dino_bottleneck_dim=384, ibot_separate_head=True, ibot_out_dim=131072, ibot_bottleneck_dim=256,
        centering="sinkhorn_knopp",
    ),
    data=dict(_DEFAULT_RECIPE["data"]),
    training=dict(
        _DEFAULT_RECIPE["training"], per_device_train_batch_size=32, learning_rate=2e-4,
        max_steps=500 * OFFICIAL_EPOCH_LENGTH, warmup_epochs=80, weight_decay_end=0.2, momentum_teacher=0.994,
        layerwise_decay=1.0,
    ),
)


def _with(recipe: dict, **parts) -> dict:
    return {key: dict(recipe[key], **parts.get(key, {})) for key in ("model", "data", "training")}


RECIPES: dict[str, dict] = {
    "vit_small": _with(_DEFAULT_RECIPE, model=dict(arch="vit_small")),
    "vit_base": _with(_DEFAULT_RECIPE, model=dict(arch="vit_base")),
    "vit_large": _with(_LARGE_RECIPE, model=dict(arch="vit_large")),
    "vit_giant2": _with(_LARGE_RECIPE, model=dict(arch="vit_giant2"), training=dict(per_device_train_batch_size=12)),
    "tiny": dict(
        model=dict(
            arch="tiny", hidden_size=128, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=1.0, patch_size=7,
            drop_path_rate=0.0, layerscale_value=1.0, dino_out_dim=512, dino_hidden_dim=512,
            dino_bottleneck_dim=256, ibot_separate_head=False, centering="sinkhorn_knopp", attn_implementation="eager",
            koleo_loss_weight=0.3,
        ),
        data=dict(
            global_crops_size=28, local_crops_size=14, local_crops_number=2, global_crops_scale=[0.4, 1.0],
            local_crops_scale=[0.1, 0.4], blur_probabilities=[0.0, 0.0, 0.0], batched_augmentation=True,
            cache_images=True,
        ),
        training=dict(
            per_device_train_batch_size=128, learning_rate=3e-3, scale_lr_with_batch_size=False, max_steps=2900,
            warmup_epochs=0, warmup_steps=50, epoch_length=100, weight_decay=0.04, weight_decay_end=0.4,
            momentum_teacher=0.9, final_momentum_teacher=0.99, warmup_teacher_temp=0.01, teacher_temp=0.01,
            warmup_teacher_temp_epochs=0, layerwise_decay=1.0, patch_embed_lr_mult=1.0, freeze_last_layer_epochs=0,
            min_lr=1e-6, bf16="native", dataloader_num_workers=0, dataloader_persistent_workers=False,
            dataloader_pin_memory=False, save_steps=250, save_total_limit=2, logging_steps=50,
        ),
    ),
}


def preset(name: str) -> dict:
    """The `{"model", "data", "training"}` values of a preset (copies), with ``bf16="native"`` resolved to
    whether this machine computes bf16 natively (`modeling_dinov2.hardware.bf16_is_native`)."""
    if name not in RECIPES:
        raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(RECIPES)}.")
    values = {key: dict(values) for key, values in RECIPES[name].items()}
    if values["training"].get("bf16") == "native":
        from modeling_dinov2.hardware import bf16_is_native

        values["training"]["bf16"] = bf16_is_native()
    return values
