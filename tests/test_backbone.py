"""`Dinov2Backbone`: transformers' backbone API on this package's ViT. Feature maps equal stock
`Dinov2Backbone` / `Dinov2WithRegistersBackbone` on the same weights; DPT and Depth Anything run on it (and
equal their stock-backbone twins); a pretraining export loads into it with no missing or unexpected keys."""

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file

from modeling_dinov2 import Dinov2Backbone, Dinov2Config, Dinov2Model

from conftest import run_python, tiny_config_kwargs

BACKBONE_VARIANTS = {
    "last stage": dict(),
    "stem and blocks": dict(out_features=["stem", "stage1", "stage2"]),
    "sequences, no norm": dict(out_indices=[1, 2], reshape_hidden_states=False, apply_layernorm=False),
    "swiglu": dict(out_indices=[1, 2], use_swiglu_ffn=True),
}


def _stock_backbone(registers: bool = False, **overrides):
    torch.manual_seed(0)
    kwargs = tiny_config_kwargs(layerscale_value=0.7, **overrides)
    if registers:
        return transformers.Dinov2WithRegistersBackbone(
            transformers.Dinov2WithRegistersConfig(num_register_tokens=4, **kwargs)).eval()
    return transformers.Dinov2Backbone(transformers.Dinov2Config(**kwargs)).eval()


@pytest.mark.parametrize("registers, overrides", [(False, v) for v in BACKBONE_VARIANTS.values()]
                         + [(True, dict(out_indices=[1, 2]))], ids=[*BACKBONE_VARIANTS, "registers"])
def test_feature_maps_equal_stock_backbones(tmp_path, registers, overrides):
    stock = _stock_backbone(registers, **overrides)
    stock.save_pretrained(tmp_path)
    ours = Dinov2Backbone.from_pretrained(tmp_path).eval()
    assert ours.out_features == stock.out_features and ours.channels == stock.channels
    pixel_values = torch.randn(2, 3, 56, 42)
    with torch.no_grad():
        expected, got = stock(pixel_values, output_hidden_states=True), ours(pixel_values, output_hidden_states=True)
    assert len(got.feature_maps) == len(expected.feature_maps) == len(stock.out_features)
    for a, b in zip(got.feature_maps, expected.feature_maps):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert len(got.hidden_states) == len(expected.hidden_states) == 3
    assert ours(pixel_values).hidden_states is None


def test_the_config_takes_backbone_keys_without_changing_the_network(tmp_path):
    plain = Dinov2Config(**tiny_config_kwargs())
    backbone = Dinov2Config(**tiny_config_kwargs(), out_indices=[1, 2], reshape_hidden_states=False)
    assert backbone.out_features == ["stage1", "stage2"] and backbone.stage_names == ["stem", "stage1", "stage2"]
    torch.manual_seed(0)
    model = Dinov2Model(backbone)
    torch.manual_seed(0)
    assert model.state_dict().keys() == Dinov2Model(plain).state_dict().keys()
    backbone.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["out_indices"] == [1, 2] and saved["reshape_hidden_states"] is False
    assert Dinov2Config.from_pretrained(tmp_path).out_features == ["stage1", "stage2"]
    with pytest.raises(ValueError, match="out_features must be a subset of stage_names"):
        Dinov2Config(**tiny_config_kwargs(), out_features=["stage7"])


def test_auto_backbone_and_remote_code(tmp_path):
    config = Dinov2Config(**tiny_config_kwargs(), out_indices=[1, 2])
    assert isinstance(transformers.AutoBackbone.from_config(config), Dinov2Backbone)
    Dinov2Backbone(config).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["auto_map"]["AutoBackbone"] == "modeling_dinov2.Dinov2Backbone"
    # a fresh interpreter that never imports this package: the folder's own code, through the Auto classes
    # (transformers 5.25's AutoBackbone.from_pretrained asks the Hub about local paths, so: from_config + weights)
    out = run_python(f"""
import torch, transformers
from safetensors.torch import load_file
config = transformers.AutoConfig.from_pretrained({str(tmp_path)!r}, trust_remote_code=True)
backbone = transformers.AutoBackbone.from_config(config, trust_remote_code=True)
backbone.load_state_dict(load_file({str(tmp_path / 'model.safetensors')!r}))
maps = backbone(torch.randn(1, 3, 28, 28)).feature_maps
print(type(backbone).__module__.split('.')[0], [tuple(m.shape) for m in maps])
""", cwd=tmp_path.parent)
    assert "transformers_modules" in out and "[(1, 32, 2, 2), (1, 32, 2, 2)]" in out


DENSE_MODELS = {
    "DPT": (transformers.DPTForDepthEstimation, transformers.DPTConfig,
            dict(neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_in_index=-1, is_hybrid=False,
                 hidden_size=32)),
    "Depth Anything": (transformers.DepthAnythingForDepthEstimation, transformers.DepthAnythingConfig,
                       dict(reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16,
                            head_hidden_size=8)),
}
DENSE_BACKBONE = dict(tiny_config_kwargs(num_hidden_layers=4, layerscale_value=0.7), out_indices=[1, 2, 3, 4],
                      reshape_hidden_states=False)


@pytest.mark.parametrize("name", DENSE_MODELS)
def test_dense_heads_run_on_it_and_match_their_stock_backbone_twin(tmp_path, name):
    model_class, config_class, head = DENSE_MODELS[name]
    torch.manual_seed(0)
    stock = model_class(config_class(backbone_config=transformers.Dinov2Config(**DENSE_BACKBONE), **head)).eval()
    ours = model_class(config_class(backbone_config=Dinov2Config(**DENSE_BACKBONE), **head)).eval()
    assert isinstance(ours.backbone, Dinov2Backbone)
    stock.backbone.save_pretrained(tmp_path)  # stock weights into ours through the checkpoint format
    ours.backbone.load_state_dict(Dinov2Backbone.from_pretrained(tmp_path).state_dict())
    result = ours.load_state_dict({k: v for k, v in stock.state_dict().items() if not k.startswith("backbone.")},
                                  strict=False)
    assert not result.unexpected_keys and all(k.startswith("backbone.") for k in result.missing_keys)
    pixel_values = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(ours(pixel_values).predicted_depth, stock(pixel_values).predicted_depth,
                                   rtol=0, atol=1e-5)
    ours.train()
    ours(pixel_values).predicted_depth.mean().backward()
    without_gradient = [n for n, p in ours.backbone.named_parameters() if p.grad is None]
    assert without_gradient == ["embeddings.mask_token"]  # only iBOT pretraining uses it
    assert ours.backbone.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0


def test_a_pretraining_export_loads_into_a_dpt_backbone_with_no_missing_or_unexpected_keys(tmp_path):
    from pretraining.export import export_backbone
    from test_pretraining_ddp import HELPER  # noqa: F401  (the helper's tiny model)
    from ddp_pretraining_helper import tiny_model

    export_backbone(tiny_model(), tmp_path / "backbone")
    backbone, info = Dinov2Backbone.from_pretrained(tmp_path / "backbone", out_indices=[1, 2],
                                                    reshape_hidden_states=False, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    dpt = transformers.DPTForDepthEstimation(transformers.DPTConfig(
        backbone_config=backbone.config, neck_hidden_sizes=[8, 16], fusion_hidden_size=16, head_in_index=-1,
        is_hybrid=False, hidden_size=backbone.config.hidden_size, reassemble_factors=[2, 1]))
    result = dpt.backbone.load_state_dict(backbone.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    exported = load_file(tmp_path / "backbone" / "model.safetensors")
    torch.testing.assert_close(dpt.backbone.embeddings.cls_token, exported["embeddings.cls_token"])
    assert dpt(torch.randn(1, 3, 32, 32)).predicted_depth.shape[0] == 1
