"""Dinov2Config: presets with the original sizes, validation, and stock-config translation."""

import pytest
import torch
import transformers

from modeling_dinov2 import PRESETS, Dinov2Config, Dinov2Model
from modeling_dinov2.configuration_dinov2 import config_to_stock_dict, swiglu_hidden_size


def test_vit_small_518_has_the_stock_parameter_count():
    # 22,056,576 is what transformers' Dinov2Model reports for facebook/dinov2-small (ViT-S/14, 37x37 table)
    with torch.device("meta"):
        ours = Dinov2Model(Dinov2Config.from_preset("vit_small"))
        stock = transformers.Dinov2Model(transformers.Dinov2Config(
            hidden_size=384, num_hidden_layers=12, num_attention_heads=6, image_size=518, patch_size=14))
    assert ours.num_parameters() == 22_056_576
    assert stock.num_parameters() == ours.num_parameters()


@pytest.mark.parametrize(
    "name, width, depth, heads, ffn, ffn_hidden",
    [
        ("vit_small", 384, 12, 6, "mlp", 1536),
        ("vit_base", 768, 12, 12, "mlp", 3072),
        ("vit_large", 1024, 24, 16, "mlp", 4096),
        ("vit_giant2", 1536, 40, 24, "swiglu", 4096),  # SwiGLUFFNFused: (int(6144*2/3)+7)//8*8
    ],
)
def test_presets_match_the_original_architectures(name, width, depth, heads, ffn, ffn_hidden):
    for suffix, registers, offset, antialias in (("", 0, 0.1, False), ("_reg4", 4, 0.0, True)):
        config = Dinov2Config.from_preset(name + suffix)
        assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (width, depth, heads)
        assert config.head_dim == 64 and config.patch_size == 14 and config.image_size == 518
        assert config.ffn_type == ffn and config.ffn_hidden_size == ffn_hidden
        assert config.num_register_tokens == registers
        assert (config.interpolate_offset, config.interpolate_antialias) == (offset, antialias)
    assert set(PRESETS) >= {name, name + "_reg4"}


def test_preset_overrides_and_training_defaults():
    config = Dinov2Config.from_preset("vit_small", image_size=224, drop_path_rate=0.3)
    assert config.image_size == 224 and config.drop_path_rate == 0.3
    assert Dinov2Config().layerscale_value == 1e-5  # the original's training value, not transformers' 1.0
    with pytest.raises(ValueError, match="Unknown preset"):
        Dinov2Config.from_preset("vit_huge")


def test_swiglu_hidden_size_rule():
    assert swiglu_hidden_size(1536, 4) == 4096
    assert swiglu_hidden_size(32, 4) == 88  # (int(128*2/3)+7)//8*8 = (85+7)//8*8


def test_drop_path_rates_uniform_and_linear():
    assert Dinov2Config(num_hidden_layers=4, drop_path_rate=0.3).drop_path_rates() == [0.3] * 4
    linear = Dinov2Config(num_hidden_layers=4, drop_path_rate=0.3, drop_path_uniform=False).drop_path_rates()
    assert linear == pytest.approx([0.0, 0.1, 0.2, 0.3])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(hidden_size=100, num_attention_heads=6), "divisible by `num_attention_heads`"),
        (dict(image_size=100, patch_size=14), "multiple of `patch_size`"),
        (dict(ffn_type="moe"), "`ffn_type` must be one of"),
        (dict(num_register_tokens=-1), "num_register_tokens"),
        (dict(drop_path_rate=1.0), "drop_path_rate"),
        (dict(interpolate_offset=-0.1), "interpolate_offset"),
        (dict(patch_size=0), "patch_size"),
        (dict(mlp_ratio=0), "mlp_ratio"),
    ],
)
def test_invalid_configs_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Dinov2Config(**kwargs)


def test_stock_config_round_trip_and_warnings():
    config = Dinov2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=56,
                          ffn_type="swiglu", interpolate_offset=0.0)
    stock, warnings = config_to_stock_dict(config)
    assert stock["model_type"] == "dinov2" and stock["use_swiglu_ffn"] is True and not warnings
    back = Dinov2Config.from_dict(stock)
    assert back.ffn_type == "swiglu" and back.interpolate_offset == 0.0 and not back.interpolate_antialias

    _, warnings = config_to_stock_dict(Dinov2Config(interpolate_offset=0.1))
    assert any("interpolate_offset" in w for w in warnings)
    stock, warnings = config_to_stock_dict(Dinov2Config(num_register_tokens=4, interpolate_offset=0.0,
                                                        interpolate_antialias=True))
    assert stock["model_type"] == "dinov2_with_registers" and stock["num_register_tokens"] == 4 and not warnings
