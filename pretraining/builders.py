"""Builders shared by `dinov2-pretrain`, the demo and the benchmarks: the ViT config, the self-distillation
model (new, continued from a checkpoint, or distilled from a teacher), the images, the multi-crop augmentation
and the dataset + collator, each from the CLI's argument dataclasses (`pretraining.cli`)."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from modeling_dinov2 import PRESETS as ARCHITECTURES
from modeling_dinov2 import Dinov2Config
from modeling_dinov2.loading import check_checkpoint

from .augmentations import MultiCropAugmentation
from .batched_augmentations import BatchedMultiCropAugmentation, to_uint8_image
from .collate import MultiCropCollator
from .configuration_self_distillation import Dinov2SelfDistillationConfig
from .data import ImageFolderSource, MultiCropDataset
from .fashion_mnist import load_fashion_mnist
from .modeling_self_distillation import Dinov2ForSelfDistillation

if TYPE_CHECKING:  # the argument dataclasses live with the command line
    from .cli import DataArguments, ModelArguments

logger = logging.getLogger("dinov2-pretrain")


def backbone_config(model_args: ModelArguments, data_args: DataArguments) -> Dinov2Config:
    """The student ViT: an architecture preset (or explicit sizes), sized for the global crops."""
    overrides = dict(
        image_size=data_args.global_crops_size,  # the position table matches the global crops, as in training
        patch_size=model_args.patch_size,
        drop_path_rate=model_args.drop_path_rate,
        layerscale_value=model_args.layerscale_value,
    )
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "ffn_type", "mlp_ratio"):
        if getattr(model_args, key) is not None:
            overrides[key] = getattr(model_args, key)
    if model_args.arch in ARCHITECTURES:
        if model_args.num_register_tokens:
            reg = ARCHITECTURES[f"{model_args.arch.removesuffix('_reg4')}_reg4"]
            overrides.update(num_register_tokens=model_args.num_register_tokens,
                             interpolate_offset=reg["interpolate_offset"], interpolate_antialias=reg["interpolate_antialias"])
        return Dinov2Config.from_preset(model_args.arch, **overrides)
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads") if k not in overrides]
    if missing:
        raise ValueError(f"--arch {model_args.arch} is not a released size: give {', '.join('--' + k for k in missing)}.")
    return Dinov2Config(num_register_tokens=model_args.num_register_tokens, **overrides)


def ssl_config_kwargs(model_args: ModelArguments) -> dict:
    keys = ("dino_out_dim", "dino_hidden_dim", "dino_bottleneck_dim", "ibot_separate_head", "ibot_out_dim",
            "ibot_bottleneck_dim", "centering", "student_temp", "dino_loss_weight", "ibot_loss_weight",
            "koleo_loss_weight", "koleo_distributed")
    values = {key: getattr(model_args, key) for key in keys}
    values["ibot_hidden_dim"] = model_args.dino_hidden_dim
    return values


def build_model(model_args: ModelArguments, data_args: DataArguments) -> Dinov2ForSelfDistillation:
    model = _build_model(model_args, data_args)
    if model_args.attn_implementation != "sdpa":
        model.set_attn_implementation(model_args.attn_implementation)
    set_efficiency_switches(model, model_args.packed_forward, model_args.efficient_drop_path)
    return model


def set_efficiency_switches(model: Dinov2ForSelfDistillation, packed_forward: bool, efficient_drop_path: bool) -> None:
    """Switches that change how, not what, the backbones compute (also for a loaded checkpoint's config)."""
    for branch in (model.student, model.teacher):
        backbone = branch.backbone
        backbone.config.packed_forward = packed_forward
        backbone.config.efficient_drop_path = efficient_drop_path
        for layer in backbone.encoder.layer:
            layer.efficient_drop_path = efficient_drop_path


def check_checkpoint_path(option: str, path: str) -> None:
    """`modeling_dinov2.loading.check_checkpoint` (asking the Hub too), its error naming the option: a mistyped
    --model_name_or_path / --distill_from fails before the run starts."""
    try:
        check_checkpoint(path, ask_hub=True)
    except (OSError, ValueError) as error:
        raise ValueError(f"--{option} {error}") from None


def _build_model(model_args: ModelArguments, data_args: DataArguments) -> Dinov2ForSelfDistillation:
    for option in ("model_name_or_path", "distill_from"):
        if getattr(model_args, option):
            check_checkpoint_path(option, getattr(model_args, option))
    student = backbone_config(model_args, data_args)
    if model_args.distill_from:
        if student.drop_path_rate:
            logger.info("Distillation: drop path %s -> 0 (the DINOv2 paper removes it)", student.drop_path_rate)
            student.drop_path_rate = 0.0
        keep = {k: getattr(model_args, k) for k in ("dino_loss_weight", "ibot_loss_weight", "koleo_loss_weight",
                                                     "koleo_distributed")}
        return Dinov2ForSelfDistillation.for_distillation(model_args.distill_from, student, **keep)
    path = model_args.model_name_or_path
    if path:
        if _read_model_type(path) == Dinov2SelfDistillationConfig.model_type:
            return Dinov2ForSelfDistillation.from_pretrained(path)
        # a backbone: keep its architecture and position table (interpolated to the crops), new heads
        overrides = dict(drop_path_rate=model_args.drop_path_rate)
        return Dinov2ForSelfDistillation.from_backbone(path, backbone_overrides=overrides, **ssl_config_kwargs(model_args))
    return Dinov2ForSelfDistillation(Dinov2SelfDistillationConfig(backbone_config=student, **ssl_config_kwargs(model_args)))


def _read_model_type(path: str) -> str | None:
    from transformers import PretrainedConfig

    config_dict, _ = PretrainedConfig.get_config_dict(path)
    return config_dict.get("model_type")


def load_images(data_args: DataArguments):
    """A folder path or a `datasets.Dataset`, limited to `max_train_samples`."""
    if bool(data_args.train_dir) == bool(data_args.dataset_name):
        raise ValueError("Give exactly one of --train_dir (a folder of images) or --dataset_name.")
    if data_args.train_dir:
        return ImageFolderSource(data_args.train_dir, limit=data_args.max_train_samples)
    if data_args.dataset_name == "fashion_mnist":
        return load_fashion_mnist(data_args.dataset_split, limit=data_args.max_train_samples)
    import datasets

    if os.path.isdir(data_args.dataset_name) and os.path.exists(os.path.join(data_args.dataset_name, "dataset_info.json")):
        dataset = datasets.load_from_disk(data_args.dataset_name)
        if isinstance(dataset, datasets.DatasetDict):
            dataset = dataset[data_args.dataset_split]
    else:
        dataset = datasets.load_dataset(data_args.dataset_name, data_args.dataset_config_name, split=data_args.dataset_split)
    if data_args.max_train_samples:
        dataset = dataset.select(range(min(data_args.max_train_samples, len(dataset))))
    return dataset


def build_augmentation(data_args: DataArguments, patch_size: int) -> MultiCropAugmentation | BatchedMultiCropAugmentation:
    """The per-image torchvision augmentation, or the batched one with --batched_augmentation."""
    for name in ("global_crops_size", "local_crops_size"):
        if getattr(data_args, name) % patch_size:
            raise ValueError(f"--{name} {getattr(data_args, name)} is not a multiple of the patch size {patch_size}.")
    augmentation = BatchedMultiCropAugmentation if data_args.batched_augmentation else MultiCropAugmentation
    return augmentation(
        global_crops_size=data_args.global_crops_size,
        local_crops_size=data_args.local_crops_size,
        n_local_crops=data_args.local_crops_number,
        global_crops_scale=tuple(data_args.global_crops_scale),
        local_crops_scale=tuple(data_args.local_crops_scale),
        original_blur_bug=data_args.original_blur_bug,
        blur_probabilities=tuple(data_args.blur_probabilities) if data_args.blur_probabilities else None,
        colour_jitter_probability=data_args.colour_jitter_probability,
        solarize_probability=data_args.solarize_probability,
        blur_kernel_size=min(9, 2 * (min(data_args.global_crops_size, data_args.local_crops_size) // 2) - 1),
    )


def build_data(data_args: DataArguments, patch_size: int, seed: int, images=None) -> tuple[MultiCropDataset, MultiCropCollator]:
    """The dataset and collator: per-image crops in the dataset, or uint8 images cropped batch-wise in the
    collator. `images` (a folder or `datasets.Dataset`) replaces the ones --train_dir / --dataset_name name."""
    augmentation = build_augmentation(data_args, patch_size)
    batched = isinstance(augmentation, BatchedMultiCropAugmentation)
    images = load_images(data_args) if images is None else images
    dataset = MultiCropDataset(images, to_uint8_image if batched else augmentation,
                               image_column=data_args.image_column, seed=seed, min_image_size=data_args.min_image_size,
                               max_image_pixels=data_args.max_image_pixels or None, cache_images=data_args.cache_images)
    collator = MultiCropCollator(
        patch_size=patch_size,
        global_crops_size=data_args.global_crops_size,
        mask_ratio_min_max=tuple(data_args.mask_ratio_min_max),
        mask_probability=data_args.mask_probability,
        batch_transform=augmentation if batched else None,
        mask_sampling=data_args.mask_sampling,
    )
    return dataset, collator
