"""Dinov2Model: parity with stock transformers (the reference), forward options, errors, checkpointing."""

import json

import pytest
import torch
import transformers

from modeling_dinov2 import Dinov2Config, Dinov2ForImageClassification, Dinov2Model
from modeling_dinov2.modeling_dinov2 import add_residual_on_subset

from conftest import tiny_config_kwargs

ATOL = 1e-5  # the fp32 parity bound


def stock_model(registers: bool = False, swiglu: bool = False, **overrides) -> torch.nn.Module:
    """A random stock transformers DINOv2 with non-trivial LayerScale and mask token."""
    torch.manual_seed(0)
    kwargs = tiny_config_kwargs(use_swiglu_ffn=swiglu, layerscale_value=0.7, **overrides)
    if registers:
        model = transformers.Dinov2WithRegistersModel(
            transformers.Dinov2WithRegistersConfig(num_register_tokens=4, **kwargs)
        )
    else:
        model = transformers.Dinov2Model(transformers.Dinov2Config(**kwargs))
    with torch.no_grad():  # stock inits the mask token to zeros; make it visible in outputs
        model.embeddings.mask_token.normal_()
    return model.eval()


@pytest.fixture(params=[(False, False), (False, True), (True, False)], ids=["mlp", "swiglu", "registers"])
def stock_and_ours(request, tmp_path):
    registers, swiglu = request.param
    stock = stock_model(registers, swiglu)
    stock.save_pretrained(tmp_path)
    ours = Dinov2Model.from_pretrained(tmp_path).eval()
    return stock, ours, registers


@pytest.mark.parametrize("size", [(28, 28), (56, 42), (98, 98), (14, 70)], ids=str)
def test_stock_checkpoint_gives_stock_outputs(stock_and_ours, size):
    stock, ours, registers = stock_and_ours
    assert ours.config.interpolate_offset == 0.0 and ours.config.interpolate_antialias == registers
    pixel_values = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected = stock(pixel_values, output_hidden_states=True)
        got = ours(pixel_values, output_hidden_states=True)
    torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state, atol=ATOL, rtol=0)
    torch.testing.assert_close(got.pooler_output, expected.pooler_output, atol=ATOL, rtol=0)
    assert len(got.hidden_states) == len(expected.hidden_states) == 3
    for a, b in zip(got.hidden_states, expected.hidden_states):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    prefix = 5 if registers else 1
    torch.testing.assert_close(got.patch_tokens, expected.last_hidden_state[:, prefix:], atol=ATOL, rtol=0)
    if registers:
        torch.testing.assert_close(got.register_tokens, expected.last_hidden_state[:, 1:5], atol=ATOL, rtol=0)
    else:
        assert got.register_tokens is None


def test_hub_style_config_from_transformers_4(tmp_path):
    """facebook/dinov2-* configs were written by transformers 4.31: no v5 keys, `torch_dtype`, no mask-token flag."""
    stock_model().save_pretrained(tmp_path)
    hub_config = dict(
        architectures=["Dinov2Model"], attention_probs_dropout_prob=0.0, drop_path_rate=0.0, hidden_act="gelu",
        hidden_dropout_prob=0.0, hidden_size=32, image_size=28, initializer_range=0.02, layer_norm_eps=1e-06,
        layerscale_value=1.0, mlp_ratio=4, model_type="dinov2", num_attention_heads=2, num_channels=3,
        num_hidden_layers=2, patch_size=14, qkv_bias=True, torch_dtype="float32",
        transformers_version="4.31.0.dev0", use_swiglu_ffn=False,
    )
    (tmp_path / "config.json").write_text(json.dumps(hub_config))
    stock = transformers.AutoModel.from_pretrained(tmp_path).eval()
    ours = Dinov2Model.from_pretrained(tmp_path).eval()
    assert ours.config.model_type == "dinov2_ssl" and ours.config.use_mask_token
    pixel_values = torch.randn(1, 3, 42, 56)
    with torch.no_grad():
        torch.testing.assert_close(ours(pixel_values).last_hidden_state, stock(pixel_values).last_hidden_state,
                                   atol=ATOL, rtol=0)


def test_mask_token_matches_stock(stock_and_ours):
    stock, ours, _ = stock_and_ours
    pixel_values = torch.randn(3, 3, 28, 28)
    mask = torch.tensor([[True, False, False, True], [False] * 4, [True] * 4])
    with torch.no_grad():
        expected = stock(pixel_values, bool_masked_pos=mask).last_hidden_state
        got = ours(pixel_values, bool_masked_pos=mask).last_hidden_state
        unmasked = ours(pixel_values).last_hidden_state
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    assert not torch.allclose(got[0], unmasked[0])  # the mask changed the masked image
    torch.testing.assert_close(got[1], unmasked[1])  # and not the image without masked patches


def test_classifier_loads_stock_classifier(tmp_path):
    torch.manual_seed(0)
    stock = transformers.Dinov2ForImageClassification(
        transformers.Dinov2Config(num_labels=3, **tiny_config_kwargs())
    ).eval()
    stock.save_pretrained(tmp_path)
    ours = Dinov2ForImageClassification.from_pretrained(tmp_path).eval()
    pixel_values = torch.randn(2, 3, 42, 28)
    labels = torch.tensor([0, 2])
    with torch.no_grad():
        expected, got = stock(pixel_values, labels=labels), ours(pixel_values, labels=labels)
    torch.testing.assert_close(got.logits, expected.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(got.loss, expected.loss, atol=ATOL, rtol=0)


def test_register_classifier_excludes_registers_from_the_patch_mean():
    torch.manual_seed(0)
    model = Dinov2ForImageClassification(Dinov2Config(num_labels=2, num_register_tokens=4, **tiny_config_kwargs()))
    model.eval()
    pixel_values = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        tokens = model.dinov2(pixel_values).last_hidden_state
        features = torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], dim=1)
        torch.testing.assert_close(model(pixel_values).logits, model.classifier(features))


def test_original_interpolation_differs_from_size_based_only_off_native_size():
    torch.manual_seed(0)
    original = Dinov2Model(Dinov2Config(interpolate_offset=0.1, **tiny_config_kwargs(image_size=56))).eval()
    size_based = Dinov2Model(Dinov2Config(interpolate_offset=0.0, **tiny_config_kwargs(image_size=56))).eval()
    size_based.load_state_dict(original.state_dict())
    with torch.no_grad():
        native = torch.randn(1, 3, 56, 56)
        torch.testing.assert_close(original(native).last_hidden_state, size_based(native).last_hidden_state)
        other = torch.randn(1, 3, 98, 98)
        assert not torch.allclose(original(other).last_hidden_state, size_based(other).last_hidden_state, atol=1e-4)


def test_position_table_cache_follows_weight_updates():
    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(**tiny_config_kwargs())).eval()
    pixel_values = torch.randn(1, 3, 42, 42)
    with torch.no_grad():
        before = model(pixel_values).last_hidden_state
        assert model(pixel_values).last_hidden_state.equal(before)  # second call served from the cache
        model.embeddings.position_embeddings.add_(1.0)  # in-place update, as an optimizer step
        after = model(pixel_values).last_hidden_state
    assert not torch.allclose(before, after)
    # with gradients the table is recomputed in the graph, so it receives a gradient
    model(pixel_values).last_hidden_state.sum().backward()
    assert model.embeddings.position_embeddings.grad.abs().sum() > 0


def test_list_of_crops_equals_separate_calls():
    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(**tiny_config_kwargs())).eval()
    global_crops, local_crops = torch.randn(2, 3, 28, 28), torch.randn(4, 3, 14, 14)
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[0, 1] = True
    with torch.no_grad():
        outputs = model([global_crops, local_crops], bool_masked_pos=[mask, None])
        torch.testing.assert_close(
            outputs[0].last_hidden_state, model(global_crops, bool_masked_pos=mask).last_hidden_state
        )
        torch.testing.assert_close(outputs[1].pooler_output, model(local_crops).pooler_output)
    with pytest.raises(ValueError, match="2 image batches but 1 masks"):
        model([global_crops, local_crops], bool_masked_pos=[mask])


def test_get_intermediate_layers():
    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(num_register_tokens=2, **tiny_config_kwargs(num_hidden_layers=3))).eval()
    pixel_values = torch.randn(2, 3, 42, 28)  # a 3x2 patch grid
    with torch.no_grad():
        hidden = model(pixel_values, output_hidden_states=True).hidden_states  # embeddings + 3 blocks
        last_two = model.get_intermediate_layers(pixel_values, n=2)
        torch.testing.assert_close(last_two[0], model.layernorm(hidden[2])[:, 3:])
        torch.testing.assert_close(last_two[1], model.layernorm(hidden[3])[:, 3:])
        chosen = model.get_intermediate_layers(pixel_values, n=[2, 0], norm=False, return_class_token=True)
        torch.testing.assert_close(chosen[0][0], hidden[3][:, 3:])
        torch.testing.assert_close(chosen[1][1], hidden[1][:, 0])
        maps = model.get_intermediate_layers(pixel_values, n=1, reshape=True)
        assert maps[0].shape == (2, 32, 3, 2)
        torch.testing.assert_close(maps[0][:, :, 1, 0], last_two[1][:, 2])  # row-major patch order
    with pytest.raises(ValueError, match="Block indices"):
        model.get_intermediate_layers(pixel_values, n=[3])


def test_eager_and_sdpa_agree_and_eager_returns_attentions():
    torch.manual_seed(0)
    config = Dinov2Config(**tiny_config_kwargs())
    sdpa = Dinov2Model(config).eval()
    eager = Dinov2Model(Dinov2Config(attn_implementation="eager", **tiny_config_kwargs())).eval()
    eager.load_state_dict(sdpa.state_dict())
    pixel_values = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        out = eager(pixel_values, output_attentions=True)
        torch.testing.assert_close(out.last_hidden_state, sdpa(pixel_values).last_hidden_state, atol=1e-6, rtol=0)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 2, 5, 5)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(2, 2, 5))


@pytest.mark.parametrize(
    "pixel_values, message",
    [
        (torch.randn(1, 1, 28, 28), "1 channels, the model expects 3"),
        (torch.randn(1, 3, 30, 28), "not a multiple of the patch size 14"),
        (torch.randn(3, 28, 28), r"\(batch, channels, height, width\)"),
    ],
)
def test_bad_inputs_raise_clear_errors(pixel_values, message):
    model = Dinov2Model(Dinov2Config(**tiny_config_kwargs()))
    with pytest.raises(ValueError, match=message):
        model(pixel_values)


def test_bad_masks_raise_clear_errors():
    model = Dinov2Model(Dinov2Config(**tiny_config_kwargs()))
    with pytest.raises(ValueError, match=r"bool_masked_pos must have shape \(batch, num_patches\) = \(1, 4\)"):
        model(torch.randn(1, 3, 28, 28), bool_masked_pos=torch.zeros(1, 5, dtype=torch.bool))
    no_mask_token = Dinov2Model(Dinov2Config(use_mask_token=False, **tiny_config_kwargs()))
    with pytest.raises(ValueError, match="use_mask_token=False"):
        no_mask_token(torch.randn(1, 3, 28, 28), bool_masked_pos=torch.zeros(1, 4, dtype=torch.bool))


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    config = Dinov2Config(ffn_type="swiglu", **tiny_config_kwargs(num_hidden_layers=3))
    plain = Dinov2Model(config)
    checkpointed = Dinov2Model(config)
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    assert checkpointed.is_activation_checkpointing and not plain.is_activation_checkpointing
    pixel_values = torch.randn(2, 3, 28, 42)
    calls = {}
    for name, model in (("plain", plain), ("checkpointed", checkpointed)):
        calls[name] = 0
        model.encoder.layer[1].mlp.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
        model.train()
        model(pixel_values).last_hidden_state.square().mean().backward()
    assert calls == {"plain": 1, "checkpointed": 2}  # the checkpointed block is recomputed in backward
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_init_follows_the_original():
    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(num_register_tokens=4, **tiny_config_kwargs(hidden_size=64)))
    emb = model.embeddings
    assert emb.cls_token.abs().max() < 1e-4 and emb.cls_token.abs().max() > 0  # N(0, 1e-6)
    assert emb.register_tokens.abs().max() < 1e-4 and emb.register_tokens.abs().max() > 0
    assert emb.mask_token.abs().max() == 0
    assert 0.01 < emb.position_embeddings.std() < 0.03  # trunc_normal(0.02)
    layer = model.encoder.layer[0]
    assert torch.all(layer.layer_scale1.lambda1 == 1e-5)
    assert 0.015 < layer.mlp.fc1.weight.std() < 0.025 and layer.mlp.fc1.bias.abs().max() == 0


def test_efficient_drop_path_updates_exactly_the_kept_subset():
    torch.manual_seed(0)
    hidden = torch.randn(8, 3, 4)
    residual = add_residual_on_subset(hidden, lambda x: torch.ones_like(x), drop_prob=0.3)
    changed = (residual != hidden).flatten(1).any(1)
    keep = int(8 * 0.7)  # 5 samples, as max(int(B * (1 - p)), 1)
    assert changed.sum() == keep
    # kept samples get the residual scaled by B / keep; dropped ones pass through unchanged
    torch.testing.assert_close(residual[changed], hidden[changed] + 8 / keep)
    torch.testing.assert_close(residual[~changed], hidden[~changed])


def test_drop_path_is_active_in_training_and_off_in_eval():
    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(drop_path_rate=0.5, **tiny_config_kwargs()))
    pixel_values = torch.randn(4, 3, 28, 28)
    model.eval()
    with torch.no_grad():
        assert model(pixel_values).last_hidden_state.equal(model(pixel_values).last_hidden_state)
        model.train()
        assert not model(pixel_values).last_hidden_state.equal(model(pixel_values).last_hidden_state)


def test_loading_wrong_shapes_names_the_keys_and_loads_nothing(tmp_path):
    Dinov2Model(Dinov2Config(**tiny_config_kwargs())).save_pretrained(tmp_path)
    wider = Dinov2Config.from_pretrained(tmp_path)
    wider.hidden_size = 64
    with pytest.raises(ValueError) as error:
        Dinov2Model.from_pretrained(tmp_path, config=wider)
    assert "embeddings.cls_token: checkpoint (1, 1, 32) vs model (1, 1, 64)" in str(error.value)
    assert "nothing was loaded" in str(error.value)
    # a checkpoint missing blocks is refused too, naming what is missing
    deeper = Dinov2Config.from_pretrained(tmp_path)
    deeper.num_hidden_layers = 3
    with pytest.raises(ValueError, match=r"encoder\.layer\.2\.norm1\.weight: missing from the checkpoint"):
        Dinov2Model.from_pretrained(tmp_path, config=deeper)


def test_compiles_without_graph_breaks():
    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(num_register_tokens=2, **tiny_config_kwargs())).eval()
    compiled = torch.compile(model, fullgraph=True)  # fullgraph: any graph break is an error
    pixel_values = torch.randn(2, 3, 42, 28)
    with torch.no_grad():
        torch.testing.assert_close(compiled(pixel_values).last_hidden_state, model(pixel_values).last_hidden_state,
                                   atol=1e-5, rtol=0)
