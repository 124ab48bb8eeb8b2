"""DINO / iBOT projection head (DINOv2 ``dinov2/layers/dino_head.py``; DINO paper, Caron et al. 2021, §3.1).

``x -> MLP -> L2-normalise (bottleneck) -> weight-normalised Linear(bottleneck -> K, bias=False)``.
The same class serves as the iBOT head: the caller decides whether DINO and iBOT share one head
(DINOv2 default) or use two (``vitl14`` / ``vitg14`` configs).
"""

import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from .configuration_self_distillation import PROTOTYPES


class DINOHead(nn.Module):
    """Projection head mapping backbone tokens to ``out_dim`` prototype logits.

    Architecture (``n_layers=3``): ``Linear(in, hidden) -> GELU -> Linear(hidden, hidden) -> GELU ->
    Linear(hidden, bottleneck)``, L2 normalisation, then ``last_layer = weight_norm(Linear(bottleneck,
    out_dim, bias=False))``. With ``n_layers=1`` the MLP is a single ``Linear(in, bottleneck)``.

    Init as DINOv2: MLP Linear weights ``trunc_normal(std=0.02)`` and zero biases; the last layer keeps
    PyTorch's default Linear init for its direction ``v`` and its magnitude ``g`` is set to 1 and left
    trainable (unlike DINO v1's frozen ``norm_last_layer``). With ``g = 1`` the logits are cosines.

    The magnitude and direction are stored by ``torch.nn.utils.parametrizations.weight_norm`` as
    ``last_layer.parametrizations.weight.original0`` (``g``, shape ``(out_dim, 1)``) and ``original1``
    (``v``, shape ``(out_dim, bottleneck_dim)``); the legacy names are ``last_layer.weight_g/weight_v``.

    Args:
        in_dim: Backbone embedding size.
        out_dim: Number of prototypes K (`PROTOTYPES`, 65536, by default; 131072 for the L/g configs).
        hidden_dim: MLP hidden size.
        bottleneck_dim: Size of the L2-normalised bottleneck.
        n_layers: Number of MLP Linear layers (>= 1).
        mlp_bias: Whether the MLP Linear layers have a bias.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = PROTOTYPES,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        n_layers: int = 3,
        mlp_bias: bool = True,
    ):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"`n_layers` must be >= 1, got {n_layers}.")
        sizes = {"in_dim": in_dim, "out_dim": out_dim, "hidden_dim": hidden_dim, "bottleneck_dim": bottleneck_dim}
        for name, value in sizes.items():
            if value < 1:
                raise ValueError(f"`{name}` must be >= 1, got {value}.")

        dims = [in_dim] + [hidden_dim] * (n_layers - 1) + [bottleneck_dim]
        layers = []
        for i in range(n_layers):
            layers.append(nn.Linear(dims[i], dims[i + 1], bias=mlp_bias))
            if i < n_layers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """DINOv2 `DINOHead._init_weights`: MLP weights trunc_normal(0.02) and zero biases; the last layer's
        direction `v` keeps PyTorch's Linear init (kaiming-uniform, a = sqrt(5)) and its magnitude `g` is 1."""
        for module in self.mlp.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.kaiming_uniform_(self.weight_v, a=math.sqrt(5))
        nn.init.ones_(self.weight_g)

    @property
    def weight_g(self) -> nn.Parameter:
        """Per-prototype magnitude ``g`` of the weight-normalised last layer, shape ``(out_dim, 1)``."""
        return self.last_layer.parametrizations.weight.original0

    @property
    def weight_v(self) -> nn.Parameter:
        """Direction ``v`` of the weight-normalised last layer, shape ``(out_dim, bottleneck_dim)``."""
        return self.last_layer.parametrizations.weight.original1

    def forward_bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        """MLP then L2 normalisation: ``(..., in_dim) -> (..., bottleneck_dim)`` with unit norm."""
        x = self.mlp(x)
        # fp16 cannot represent 1e-12; DINOv2 uses 1e-6 there.
        eps = 1e-6 if x.dtype == torch.float16 else 1e-12
        return nn.functional.normalize(x, p=2, dim=-1, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_dim) -> (..., out_dim)`` prototype logits."""
        return self.last_layer(self.forward_bottleneck(x))
