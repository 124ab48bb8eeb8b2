"""`dinov2-convert`: move DINOv2 weights between this package, stock transformers and the original repo.

    dinov2-convert from-original dinov2_vits14_pretrain.pth out/vits14 --arch vit_small
    dinov2-convert to-transformers out/vits14 out/vits14-stock      # loads in stock transformers
    dinov2-convert from-transformers facebook/dinov2-small out/small  # stock -> this package

Key names follow transformers' on-disk layout (see `modeling_dinov2.py`); the original's layout is
mapped by `original_to_transformers_keys`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import re
import sys
from typing import Mapping

import torch

from .configuration_dinov2 import PRESETS, Dinov2Config, config_to_stock_dict
from .model_card import write_preprocessor_config
from .modeling_dinov2 import Dinov2ForImageClassification, Dinov2Model
from .preprocessing import eval_crop_size

logger = logging.getLogger("dinov2-convert")

# original (dinov2/models/vision_transformer.py) -> transformers layout, applied in order
_ORIGINAL_RENAMES = [
    (r"^cls_token$", "embeddings.cls_token"),
    (r"^mask_token$", "embeddings.mask_token"),
    (r"^pos_embed$", "embeddings.position_embeddings"),
    (r"^register_tokens$", "embeddings.register_tokens"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embeddings.projection."),
    (r"^blocks\.(\d+)\.norm([12])\.", r"encoder.layer.\1.norm\2."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layer.\1.attention.output.dense."),
    (r"^blocks\.(\d+)\.ls([12])\.gamma$", r"encoder.layer.\1.layer_scale\2.lambda1"),
    (r"^blocks\.(\d+)\.mlp\.fc([12])\.", r"encoder.layer.\1.mlp.fc\2."),
    (r"^blocks\.(\d+)\.mlp\.w12\.", r"encoder.layer.\1.mlp.weights_in."),
    (r"^blocks\.(\d+)\.mlp\.w3\.", r"encoder.layer.\1.mlp.weights_out."),
    (r"^norm\.", "layernorm."),
]
_QKV = re.compile(r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$")
# FSDP block chunking writes blocks.<chunk>.<global index>.*; the chunk index carries no information
_CHUNKED_BLOCK = re.compile(r"^blocks\.\d+\.(\d+)\.")
# prefixes of backbone weights inside training checkpoints (teacher_checkpoint.pth, model_*.rank_*.pth)
_BACKBONE_PREFIXES = ("teacher.backbone.", "backbone.", "module.")


def load_original_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """Backbone state dict of an original checkpoint: torch-hub weights, or the teacher of a training
    checkpoint (`{"teacher": ...}` / `{"model": ...}`, `backbone.` prefixes, chunked blocks). Loaded with
    `weights_only=True`: no code in the file is executed."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{path} holds objects other than tensors, refused by torch.load(weights_only=True): {error}"
        ) from None
    for container in ("teacher", "model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(container), dict):
            state = state[container]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors.")
    if any(key.startswith("teacher.backbone.") for key in state):  # a full SSL checkpoint: keep the teacher
        state = {k: v for k, v in state.items() if k.startswith("teacher.backbone.")}
    backbone = {}
    for key, value in state.items():
        for prefix in _BACKBONE_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        if key.startswith(("dino_head.", "ibot_head.", "student.", "teacher.", "head.")):
            continue  # projection heads are not part of the backbone
        backbone[key] = value
    return backbone


def original_to_transformers_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an original DINOv2 backbone state dict to transformers' layout; split fused qkv into
    query / key / value (rows [0:D], [D:2D], [2D:3D])."""
    converted: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        key = _CHUNKED_BLOCK.sub(r"blocks.\1.", key)
        qkv = _QKV.match(key)
        if qkv:
            layer, kind = qkv.groups()
            if value.shape[0] % 3:
                raise ValueError(f"{key} has {value.shape[0]} rows, not a multiple of 3.")
            for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                converted[f"encoder.layer.{layer}.attention.attention.{name}.{kind}"] = part.clone()
            continue
        for pattern, replacement in _ORIGINAL_RENAMES:
            new_key, count = re.subn(pattern, replacement, key)
            if count:
                converted[new_key] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"Unrecognised keys in the original checkpoint: {sorted(unknown)}")
    return converted


def config_from_original(state: Mapping[str, torch.Tensor], arch: str, **overrides) -> Dinov2Config:
    """Config for an original checkpoint: the `arch` preset, with the position-table size, patch size,
    registers, FFN type and mask token read off the weights."""
    if arch not in PRESETS:
        raise ValueError(f"Unknown --arch {arch!r}; choose one of {sorted(PRESETS)}.")
    values = dict(PRESETS[arch])
    if "pos_embed" not in state or "patch_embed.proj.weight" not in state:
        raise ValueError("Not a DINOv2 backbone checkpoint: 'pos_embed' or 'patch_embed.proj.weight' is missing.")
    patch_weight = state["patch_embed.proj.weight"]  # (D, C, p, p)
    hidden_size = patch_weight.shape[0]
    if hidden_size != values["hidden_size"] and "num_attention_heads" not in overrides:
        raise ValueError(
            f"--arch {arch} has width {values['hidden_size']}, the checkpoint has {hidden_size}: pick the matching "
            "arch, or give --num-heads for a non-standard width."
        )
    values["hidden_size"] = hidden_size
    values["patch_size"] = patch_weight.shape[-1]
    values["num_channels"] = patch_weight.shape[1]
    grid = int(round((state["pos_embed"].shape[1] - 1) ** 0.5))
    values["image_size"] = grid * values["patch_size"]
    registers = state.get("register_tokens")
    values["num_register_tokens"] = registers.shape[1] if registers is not None else 0
    values["ffn_type"] = "swiglu" if any(".mlp.w12." in k for k in state) else "mlp"
    values["use_mask_token"] = "mask_token" in state
    block_ids = {int(m.group(1)) for k in state if (m := re.match(r"^blocks\.(?:\d+\.)?(\d+)\.norm1\.", k))}
    values["num_hidden_layers"] = len(block_ids)
    values.update(overrides)
    return Dinov2Config(**values)


def convert_original(checkpoint: str, output_dir: str, arch: str, **overrides) -> Dinov2Model:
    """Convert an original `.pth` into a `modeling_dinov2` folder; returns the model."""
    state = load_original_checkpoint(checkpoint)
    converted = original_to_transformers_keys(state)  # first: names every unrecognised key
    config = config_from_original(state, arch, **overrides)
    model = Dinov2Model(config)
    load_state_dict_exactly(model, converted, source=checkpoint)
    model.save_pretrained(output_dir)
    return model


def load_state_dict_exactly(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """`load_state_dict` that checks every key and shape first and names all problems at once."""
    expected = model.state_dict()
    problems = [f"  {k}: missing" for k in sorted(set(expected) - set(state))]
    problems += [f"  {k}: unexpected" for k in sorted(set(state) - set(expected))]
    problems += [
        f"  {k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if problems:
        raise ValueError(f"{source} does not fit {type(model).__name__} (nothing was loaded):\n" + "\n".join(problems))
    model.load_state_dict(state, strict=True)


def to_transformers(source: str, output_dir: str) -> list[str]:
    """Write a folder that stock `transformers.AutoModel.from_pretrained` loads without custom code.

    Weight names are already transformers' layout; only the config is translated. Returns the warnings
    about settings transformers cannot reproduce (they are also logged)."""
    from safetensors.torch import save_file

    config = Dinov2Config.from_pretrained(source)
    is_classifier = any("ImageClassification" in a for a in (config.architectures or []))
    model_class = Dinov2ForImageClassification if is_classifier else Dinov2Model
    model = model_class.from_pretrained(source)
    stock_config, warnings = config_to_stock_dict(model.config)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    with_registers = stock_config["model_type"] == "dinov2_with_registers"
    if with_registers and "embeddings.mask_token" not in {k.removeprefix("dinov2.") for k in state}:
        prefix = "dinov2." if is_classifier else ""
        state[f"{prefix}embeddings.mask_token"] = torch.zeros(1, model.config.hidden_size)
    if is_classifier:
        stock_config["architectures"] = [stock_config["architectures"][0].replace("Model", "ForImageClassification")]
        if with_registers:  # transformers' register classifier names its backbone differently
            state = {re.sub(r"^dinov2\.", "dinov2_with_registers.", k): v for k, v in state.items()}
    os.makedirs(output_dir, exist_ok=True)
    save_file(state, os.path.join(output_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(output_dir, "config.json"), "w") as f:
        json.dump(stock_config, f, indent=2, sort_keys=True)
    write_preprocessor_config(output_dir, crop_size=eval_crop_size(config.image_size))
    for warning in warnings:
        logger.warning("WARNING: %s", warning)
    return warnings


def from_transformers(source: str, output_dir: str) -> Dinov2Model:
    """Load a stock transformers checkpoint (`dinov2` / `dinov2_with_registers`) and save it in this
    package's format (config with `auto_map`, code, model card)."""
    config = Dinov2Config.from_pretrained(source)
    is_classifier = any("ImageClassification" in a for a in (config.architectures or []))
    model = (Dinov2ForImageClassification if is_classifier else Dinov2Model).from_pretrained(source)
    model.save_pretrained(output_dir)
    return model


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dinov2-convert",
        description="Convert DINOv2 weights between the original repository, stock transformers and modeling_dinov2.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    original = commands.add_parser(
        "from-original",
        help="original .pth (torch hub or training teacher checkpoint) -> modeling_dinov2 folder",
        description="Convert a facebookresearch/dinov2 checkpoint (torch-hub backbone weights, or a training "
        "checkpoint whose teacher backbone is taken) into a modeling_dinov2 folder.",
    )
    original.add_argument("checkpoint", help="path of the .pth file (read with weights_only=True)")
    original.add_argument("output_dir")
    original.add_argument("--arch", required=True, choices=sorted(PRESETS),
                          help="architecture preset; sizes read off the weights must agree with it")
    original.add_argument("--num-heads", type=int, default=None,
                          help="attention heads, for a checkpoint whose width is not the preset's (heads cannot be "
                          "read off the weights)")
    original.add_argument("--interpolate-offset", type=float, default=None,
                          help="override the position interpolation offset (preset: 0.1, or 0 for _reg4)")
    original.add_argument("--interpolate-antialias", choices=("true", "false"), default=None,
                          help="override antialiased position interpolation (preset: false, or true for _reg4)")
    stock = commands.add_parser(
        "to-transformers", help="modeling_dinov2 folder -> folder that stock transformers loads without custom code"
    )
    stock.add_argument("source", help="modeling_dinov2 folder or Hub id")
    stock.add_argument("output_dir")
    back = commands.add_parser("from-transformers", help="stock transformers dinov2 checkpoint -> modeling_dinov2 folder")
    back.add_argument("source", help="folder or Hub id of a transformers dinov2 / dinov2_with_registers checkpoint")
    back.add_argument("output_dir")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        if args.command == "from-original":
            overrides = {}
            if args.num_heads is not None:
                overrides["num_attention_heads"] = args.num_heads
            if args.interpolate_offset is not None:
                overrides["interpolate_offset"] = args.interpolate_offset
            if args.interpolate_antialias is not None:
                overrides["interpolate_antialias"] = args.interpolate_antialias == "true"
            model = convert_original(args.checkpoint, args.output_dir, args.arch, **overrides)
            logger.info("Wrote %s (%s parameters)", args.output_dir, f"{model.num_parameters():,}")
        elif args.command == "to-transformers":
            to_transformers(args.source, args.output_dir)
            logger.info("Wrote %s: load it with transformers.AutoModel.from_pretrained(%r)", args.output_dir,
                        args.output_dir)
        else:
            from_transformers(args.source, args.output_dir)
            logger.info("Wrote %s", args.output_dir)
    except (ValueError, FileNotFoundError, OSError) as error:
        print(f"dinov2-convert: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
