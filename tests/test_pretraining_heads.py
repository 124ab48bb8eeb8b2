"""``pretraining.heads.DINOHead``: shapes, normalised bottleneck, weight-norm magnitude, init."""

import copy

import pytest
import torch

from pretraining.heads import DINOHead


@pytest.fixture
def head():
    torch.manual_seed(0)
    return DINOHead(in_dim=32, out_dim=128, hidden_dim=64, bottleneck_dim=16)


def test_output_shapes(head):
    assert head(torch.randn(5, 32)).shape == (5, 128)
    assert head(torch.randn(2, 7, 32)).shape == (2, 7, 128)  # token sequences work too


def test_bottleneck_is_l2_normalised_and_logits_are_cosines(head):
    x = torch.randn(6, 32) * 10
    z = head.forward_bottleneck(x)
    assert z.shape == (6, 16)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(6))
    # g = 1 and unit bottleneck -> every logit is a cosine in [-1, 1].
    assert head(x).abs().max() <= 1.0 + 1e-5


def test_weight_g_is_one_and_trainable(head):
    assert head.weight_g.shape == (128, 1)
    assert head.weight_g is head.last_layer.parametrizations.weight.original0
    torch.testing.assert_close(head.weight_g.detach(), torch.ones(128, 1))
    assert head.weight_g.requires_grad
    head(torch.randn(3, 32)).sum().backward()
    assert head.weight_g.grad is not None and head.weight_g.grad.abs().sum() > 0
    # Effective weight rows have norm g = 1.
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(128))
    assert head.last_layer.bias is None


def test_last_layer_can_be_frozen(head):
    for p in head.last_layer.parameters():
        p.requires_grad_(False)
    head(torch.randn(3, 32)).sum().backward()
    assert all(p.grad is None for p in head.last_layer.parameters())
    assert all(p.grad is not None for p in head.mlp.parameters())


def test_mlp_structure_and_init():
    torch.manual_seed(0)
    head = DINOHead(in_dim=256, out_dim=64, hidden_dim=512, bottleneck_dim=32)
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(256, 512), (512, 512), (512, 32)]
    assert sum(isinstance(m, torch.nn.GELU) for m in head.mlp) == 2
    for m in linears:
        assert torch.count_nonzero(m.bias) == 0
        assert m.weight.std().item() == pytest.approx(0.02, rel=0.05)  # trunc_normal(std=0.02)
    one_layer = DINOHead(in_dim=8, out_dim=10, bottleneck_dim=4, n_layers=1)
    assert [type(m) for m in one_layer.mlp] == [torch.nn.Linear]


def test_state_dict_keys_and_deepcopy(head):
    keys = set(head.state_dict())
    assert {"last_layer.parametrizations.weight.original0", "last_layer.parametrizations.weight.original1"} <= keys
    teacher = copy.deepcopy(head)  # how an EMA teacher is built
    x = torch.randn(4, 32)
    torch.testing.assert_close(teacher(x), head(x))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="n_layers"):
        DINOHead(in_dim=8, n_layers=0)
    with pytest.raises(ValueError, match="out_dim"):
        DINOHead(in_dim=8, out_dim=0)
