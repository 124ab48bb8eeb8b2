"""The packed multi-crop forward: crop batches of different sizes as one token sequence give the outputs and
gradients of one forward per batch (fp32), with iBOT masks, registers, SwiGLU and hidden states; stochastic
depth on a packed sequence drops whole crops."""

import pytest
import torch

from modeling_dinov2 import Dinov2Config, Dinov2Model
from modeling_dinov2.modeling_dinov2 import PackedLayout, add_residual_on_subset, drop_path

CROP_MIXES = {
    "2 sizes": [(4, 28), (6, 14)],
    "3 sizes": [(2, 28), (3, 21), (5, 14)],
    "local first": [(5, 14), (2, 28)],
}


def _model(**overrides) -> Dinov2Model:
    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, patch_size=7, image_size=28,
                          layerscale_value=1.0, **overrides)
    return Dinov2Model(config)


def _outputs_and_gradients(model, crops, masks, packed):
    model.config.packed_forward = packed
    model.zero_grad()
    outputs = model(crops, bool_masked_pos=masks, output_hidden_states=True)
    torch.manual_seed(1)  # the same random readout of every output in both runs
    loss = sum((torch.randn_like(out.last_hidden_state) * out.last_hidden_state).sum() for out in outputs)
    loss.backward()
    return outputs, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mix", CROP_MIXES, ids=list(CROP_MIXES))
@pytest.mark.parametrize("overrides", [{}, {"num_register_tokens": 4, "interpolate_offset": 0.0},
                                       {"ffn_type": "swiglu"}], ids=["plain", "registers", "swiglu"])
def test_packed_outputs_and_gradients_equal_one_forward_per_size(mix, overrides):
    model = _model(**overrides)
    generator = torch.Generator().manual_seed(0)
    crops = [torch.randn(batch, 3, side, side, generator=generator) for batch, side in CROP_MIXES[mix]]
    masks = [torch.rand(batch, (side // 7) ** 2, generator=generator) < 0.4 if i == 0 else None
             for i, (batch, side) in enumerate(CROP_MIXES[mix])]
    packed, packed_grads = _outputs_and_gradients(model, crops, masks, packed=True)
    per_size, per_size_grads = _outputs_and_gradients(model, crops, masks, packed=False)
    assert len(packed) == len(per_size) == len(crops)
    for ours, reference in zip(packed, per_size):
        for field in ("last_hidden_state", "pooler_output", "patch_tokens"):
            torch.testing.assert_close(getattr(ours, field), getattr(reference, field), rtol=0, atol=1e-5)
        if overrides.get("num_register_tokens"):
            torch.testing.assert_close(ours.register_tokens, reference.register_tokens, rtol=0, atol=1e-5)
        assert len(ours.hidden_states) == len(reference.hidden_states) == model.config.num_hidden_layers + 1
        for a, b in zip(ours.hidden_states, reference.hidden_states):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert packed_grads.keys() == per_size_grads.keys()
    assert "embeddings.mask_token" in packed_grads
    for name, grad in per_size_grads.items():
        # sums over the tokens in another order: equal to 1e-5 of the gradient's scale, or 1e-5 where that scale is
        # below 1 (the key bias gets none: softmax is invariant to it)
        scale = max(grad.abs().max().item(), 1.0)
        torch.testing.assert_close(packed_grads[name], grad, rtol=0, atol=1e-5 * scale, msg=name)


def test_attention_weights_and_tuples_fall_back_to_one_forward_per_size():
    model = _model().eval()
    crops = [torch.randn(2, 3, 28, 28), torch.randn(3, 3, 14, 14)]
    outputs = model(crops, output_attentions=True)
    assert [out.attentions[0].shape for out in outputs] == [(2, 4, 17, 17), (3, 4, 5, 5)]
    tuples = model(crops, return_dict=False)
    assert isinstance(tuples[0], tuple) and tuples[1][0].shape == (3, 5, 64)


def test_layout_packs_and_unpacks():
    layout = PackedLayout((2, 3), (5, 2))
    batches = [torch.arange(10.0).view(2, 5, 1), 100 + torch.arange(6.0).view(3, 2, 1)]
    packed = layout.pack(batches)
    assert packed.shape == (16, 1) and layout.group_tokens == [10, 6]
    assert all(torch.equal(a, b) for a, b in zip(layout.unpack(packed), batches))
    assert layout.sample_of_token().tolist() == [0] * 5 + [1] * 5 + [2, 2, 3, 3, 4, 4]


def test_packed_stochastic_depth_drops_whole_crops():
    layout = PackedLayout((4, 6), (3, 2))
    tokens = torch.randn(sum(layout.group_tokens), 8)
    torch.manual_seed(0)
    dropped = drop_path(tokens, 0.5, training=True, layout=layout)
    factors = (dropped / tokens).mean(-1)  # per token: 0 or 1 / keep_prob
    per_crop = factors.split([3] * 4 + [2] * 6)
    for crop in per_crop:
        assert torch.allclose(crop, crop[0].expand_as(crop))
        assert min(abs(crop[0].item()), abs(crop[0].item() - 2.0)) < 1e-5  # dropped, or kept and scaled by 1 / 0.5

    def double(x, layout):  # a token-wise residual branch: 2 x
        return 2 * x

    for rate in (0.3, 0.5):
        out = add_residual_on_subset(tokens, double, rate, layout)
        change = ((out - tokens) / tokens).mean(-1)  # per token: 0 (dropped) or 2 * B / kept
        for (batch, length), group in zip([(4, 3), (6, 2)], change.split(layout.group_tokens)):
            kept = max(int(batch * (1 - rate)), 1)
            per_crop = group.view(batch, length)
            assert (per_crop != 0).any(1).sum() == kept  # exactly `kept` whole crops get the residual
            torch.testing.assert_close(per_crop[per_crop.any(1)], torch.full((kept, length), 2 * batch / kept))


def test_activation_checkpointing_gives_the_same_gradients_with_packing_and_drop_path():
    """Per-block checkpointing recomputes the packed blocks in the backward, with the same subset drop path
    (the RNG state is replayed), so the gradients are those of the plain run."""
    model = _model(drop_path_rate=0.4).train()
    crops = [torch.randn(4, 3, 28, 28), torch.randn(6, 3, 14, 14)]
    gradients = []
    for checkpointing in (False, True):
        if checkpointing:
            model.activation_checkpointing_enable()
        torch.manual_seed(3)
        _, grads = _outputs_and_gradients(model, crops, [None, None], packed=True)
        gradients.append(grads)
    assert model.encoder.layer[0].gradient_checkpointing
    for name, grad in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], grad, rtol=1e-6, atol=1e-6, msg=name)
