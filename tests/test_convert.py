"""dinov2-convert: original torch-hub layout -> this package, this package -> stock transformers."""

import json
import logging

import pytest
import torch
import transformers
from safetensors.torch import load_file

from modeling_dinov2 import Dinov2Config, Dinov2ForImageClassification, Dinov2Model
from modeling_dinov2.convert import main as convert_main

from conftest import tiny_config_kwargs

ATOL = 1e-5


def timm_dinov2(swiglu: bool = False):
    """timm's DINOv2 ViT (validated against the original to <1e-6, timm PR #1797): an independent reference
    whose state dict uses the original key layout (`blocks.i.attn.qkv`, `ls1.gamma`, `pos_embed`, ...)."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    kwargs = dict(img_size=28, patch_size=14, embed_dim=32, depth=2, num_heads=2, num_classes=0, init_values=0.5)
    if swiglu:
        # timm packs SwiGLU's gate and up projections in fc1 (gate first), as the original's w12; 176 = 2 x 88,
        # the original's hidden size rule for width 32
        from timm.layers import SwiGLUPacked

        kwargs.update(mlp_ratio=176 / 32, mlp_layer=SwiGLUPacked, act_layer=torch.nn.SiLU)
    return timm.create_model("vit_small_patch14_dinov2", pretrained=False, **kwargs).eval()


def original_state_dict_from_timm(model, swiglu: bool) -> dict[str, torch.Tensor]:
    state = dict(model.state_dict())
    if swiglu:  # the original names the packed SwiGLU projections w12 / w3
        state = {k.replace(".mlp.fc1.", ".mlp.w12.").replace(".mlp.fc2.", ".mlp.w3."): v for k, v in state.items()}
    state["mask_token"] = torch.randn(1, 32)
    return state


@pytest.mark.parametrize("swiglu", [False, True], ids=["mlp", "swiglu"])
def test_from_original_matches_the_reference_implementation(tmp_path, swiglu):
    reference = timm_dinov2(swiglu)
    checkpoint = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(original_state_dict_from_timm(reference, swiglu), checkpoint)
    arch = "vit_giant2" if swiglu else "vit_small"
    # the presets' sizes differ from this tiny model: the sizes are read off the weights
    assert convert_main(["from-original", str(checkpoint), str(tmp_path / "out"), "--arch", arch,
                         "--num-heads", "2"]) == 0
    ours = Dinov2Model.from_pretrained(tmp_path / "out").eval()
    assert ours.config.num_hidden_layers == 2 and ours.config.image_size == 28
    assert ours.config.ffn_type == ("swiglu" if swiglu else "mlp") and ours.config.ffn_hidden_size == (88 if swiglu else 128)
    pixel_values = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        expected = reference.forward_features(pixel_values)  # normed tokens, CLS first
        got = ours(pixel_values).last_hidden_state
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


# Legacy (on-disk) transformers names -> original names: how transformers' convert_dinov2_to_hf.py maps them,
# inverted by hand. q, k, v are stacked into qkv in that order.
_LEGACY_TO_ORIGINAL = [
    ("embeddings.cls_token", "cls_token"),
    ("embeddings.mask_token", "mask_token"),
    ("embeddings.position_embeddings", "pos_embed"),
    ("embeddings.register_tokens", "register_tokens"),
    ("embeddings.patch_embeddings.projection.", "patch_embed.proj."),
    ("attention.output.dense.", "attn.proj."),
    ("layer_scale1.lambda1", "ls1.gamma"),
    ("layer_scale2.lambda1", "ls2.gamma"),
    ("encoder.layer.", "blocks."),
    ("layernorm.", "norm."),
]


def original_layout_from_stock_file(path, block_chunks: int = 0) -> dict[str, torch.Tensor]:
    """Rebuild the original checkpoint layout from a stock transformers model.safetensors.

    With `block_chunks`, keys get FSDP chunk indices as training checkpoints have them
    (`blocks.<chunk>.<global index>.`)."""
    legacy = load_file(path)
    state = {}
    for key, value in legacy.items():
        if ".attention.attention." in key:
            continue
        for old, new in _LEGACY_TO_ORIGINAL:
            key = key.replace(old, new)
        state[key] = value
    layers = sorted({int(k.split(".")[2]) for k in legacy if k.startswith("encoder.layer.")})
    for i in layers:
        for kind in ("weight", "bias"):
            parts = [legacy[f"encoder.layer.{i}.attention.attention.{n}.{kind}"] for n in ("query", "key", "value")]
            state[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(parts)
    if block_chunks:
        per_chunk = len(layers) // block_chunks
        state = {
            (f"blocks.{int(k.split('.')[1]) // per_chunk}.{k.removeprefix('blocks.')}" if k.startswith("blocks.") else k): v
            for k, v in state.items()
        }
    return state


def test_from_original_with_registers_and_chunked_training_checkpoint(tmp_path):
    # transformers' Dinov2WithRegisters is identical to the original _reg4 models at every size (size-based,
    # antialiased interpolation): the reference for the register layout
    torch.manual_seed(0)
    stock = transformers.Dinov2WithRegistersModel(transformers.Dinov2WithRegistersConfig(
        num_register_tokens=4, layerscale_value=0.5, **tiny_config_kwargs())).eval()
    stock.save_pretrained(tmp_path / "stock")
    backbone = original_layout_from_stock_file(tmp_path / "stock" / "model.safetensors", block_chunks=2)
    assert "blocks.1.1.attn.qkv.weight" in backbone and "blocks.0.0.ls1.gamma" in backbone
    # a training checkpoint: teacher and student, with heads, under "model"
    training = {f"teacher.backbone.{k}": v for k, v in backbone.items()}
    training.update({f"student.backbone.{k}": torch.zeros_like(v) for k, v in backbone.items()})
    training["teacher.dino_head.mlp.0.weight"] = torch.randn(8, 32)
    torch.save({"model": training, "iteration": 10}, tmp_path / "model_0000010.rank_0.pth")
    assert convert_main(["from-original", str(tmp_path / "model_0000010.rank_0.pth"), str(tmp_path / "out"),
                         "--arch", "vit_small_reg4", "--num-heads", "2"]) == 0
    ours = Dinov2Model.from_pretrained(tmp_path / "out").eval()
    assert ours.config.num_register_tokens == 4 and ours.config.interpolate_antialias
    for size in ((28, 28), (56, 70)):
        pixel_values = torch.randn(2, 3, *size)
        with torch.no_grad():
            torch.testing.assert_close(ours(pixel_values).last_hidden_state,
                                       stock(pixel_values).last_hidden_state, atol=ATOL, rtol=0)


class NotATensor:
    """A pickled object other than tensors: `torch.load(weights_only=True)` must refuse it."""


def test_from_original_refuses_pickled_code_and_bad_checkpoints(tmp_path, capsys):
    torch.save({"pos_embed": NotATensor()}, tmp_path / "evil.pth")
    assert convert_main(["from-original", str(tmp_path / "evil.pth"), str(tmp_path / "out"), "--arch", "vit_small"]) == 1
    assert "weights_only" in capsys.readouterr().err
    torch.save({"blocks.0.unknown.weight": torch.zeros(1), "pos_embed": torch.zeros(1, 5, 384),
                "patch_embed.proj.weight": torch.zeros(384, 3, 14, 14)}, tmp_path / "odd.pth")
    assert convert_main(["from-original", str(tmp_path / "odd.pth"), str(tmp_path / "out"), "--arch", "vit_small"]) == 1
    assert "blocks.0.unknown.weight" in capsys.readouterr().err
    torch.save({"pos_embed": torch.zeros(1, 5, 384), "patch_embed.proj.weight": torch.zeros(384, 3, 14, 14)},
               tmp_path / "small.pth")
    assert convert_main(["from-original", str(tmp_path / "small.pth"), str(tmp_path / "out"), "--arch", "vit_base"]) == 1
    assert "--arch vit_base has width 768, the checkpoint has 384" in capsys.readouterr().err


@pytest.mark.parametrize(
    "overrides, registers",
    [
        (dict(interpolate_offset=0.0), False),
        (dict(interpolate_offset=0.0, ffn_type="swiglu"), False),
        (dict(interpolate_offset=0.0, interpolate_antialias=True, num_register_tokens=4), True),
    ],
    ids=["mlp", "swiglu", "registers"],
)
def test_to_transformers_loads_in_stock_transformers_with_the_same_outputs(tmp_path, overrides, registers):
    torch.manual_seed(0)
    ours = Dinov2Model(Dinov2Config(layerscale_value=0.5, **tiny_config_kwargs(), **overrides)).eval()
    ours.save_pretrained(tmp_path / "ours")
    assert convert_main(["to-transformers", str(tmp_path / "ours"), str(tmp_path / "stock")]) == 0
    config = json.loads((tmp_path / "stock" / "config.json").read_text())
    assert "auto_map" not in config and config["model_type"] == ("dinov2_with_registers" if registers else "dinov2")
    assert not list((tmp_path / "stock").glob("*.py"))  # no custom code needed
    stock = transformers.AutoModel.from_pretrained(tmp_path / "stock").eval()
    assert type(stock).__module__.startswith("transformers.models.")
    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path / "stock")
    assert processor.crop_size == {"height": 28, "width": 28}  # a 28-px position table: evaluated at 28 px
    for size in ((28, 28), (42, 70)):
        pixel_values = torch.randn(2, 3, *size)
        with torch.no_grad():
            torch.testing.assert_close(stock(pixel_values).last_hidden_state, ours(pixel_values).last_hidden_state,
                                       atol=ATOL, rtol=0)


def test_to_transformers_classifier(tmp_path):
    torch.manual_seed(0)
    ours = Dinov2ForImageClassification(Dinov2Config(num_labels=3, interpolate_offset=0.0, **tiny_config_kwargs()))
    ours.eval().save_pretrained(tmp_path / "ours")
    assert convert_main(["to-transformers", str(tmp_path / "ours"), str(tmp_path / "stock")]) == 0
    stock = transformers.AutoModelForImageClassification.from_pretrained(tmp_path / "stock").eval()
    assert type(stock) is transformers.Dinov2ForImageClassification
    pixel_values = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(stock(pixel_values).logits, ours(pixel_values).logits, atol=ATOL, rtol=0)


def test_to_transformers_warns_about_the_original_interpolation(tmp_path, caplog):
    torch.manual_seed(0)
    ours = Dinov2Model(Dinov2Config(interpolate_offset=0.1, **tiny_config_kwargs())).eval()
    ours.save_pretrained(tmp_path / "ours")
    with caplog.at_level(logging.WARNING, logger="dinov2-convert"):
        assert convert_main(["to-transformers", str(tmp_path / "ours"), str(tmp_path / "stock")]) == 0
    assert "interpolate_offset=0.1" in caplog.text and "no equivalent in transformers" in caplog.text
    stock = transformers.AutoModel.from_pretrained(tmp_path / "stock").eval()
    with torch.no_grad():  # identical at the native size, as the warning says
        native = torch.randn(1, 3, 28, 28)
        torch.testing.assert_close(stock(native).last_hidden_state, ours(native).last_hidden_state, atol=ATOL, rtol=0)


def test_from_transformers_then_back_is_lossless(tmp_path):
    torch.manual_seed(0)
    stock = transformers.Dinov2Model(transformers.Dinov2Config(use_swiglu_ffn=True, **tiny_config_kwargs())).eval()
    stock.save_pretrained(tmp_path / "stock")
    assert convert_main(["from-transformers", str(tmp_path / "stock"), str(tmp_path / "ours")]) == 0
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["model_type"] == "dinov2_ssl"
    assert convert_main(["to-transformers", str(tmp_path / "ours"), str(tmp_path / "again")]) == 0
    before, after = load_file(tmp_path / "stock" / "model.safetensors"), load_file(tmp_path / "again" / "model.safetensors")
    assert before.keys() == after.keys()
    assert all(before[k].equal(after[k]) for k in before)
