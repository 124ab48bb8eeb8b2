"""The DINOv2 vision transformer (Oquab et al. 2023, arXiv 2304.07193) as a transformers model.

Reads top to bottom: position-table interpolation, embeddings (patches, mask token, CLS, positions,
registers), attention, LayerScale, FFNs, stochastic depth, the block, then the `PreTrainedModel`s.

Parameter names are the ones transformers writes to disk for its own `Dinov2Model`
(`attention.attention.query`, `mlp.weights_in`, ...), so the Hub's `facebook/dinov2-*` files load
here as they are and our files load in stock transformers (see `dinov2-convert to-transformers`).
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_outputs import BackboneOutput, BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_dinov2 import Dinov2Config
from .model_card import write_model_card, write_preprocessor_config
from .preprocessing import eval_crop_size


# ----------------------------------------------------------------------------------------------------
# Position embeddings
# ----------------------------------------------------------------------------------------------------
def interpolate_position_embeddings(
    position_embeddings: torch.Tensor,
    grid_height: int,
    grid_width: int,
    offset: float = 0.0,
    antialias: bool = False,
) -> torch.Tensor:
    """Resize a square position table (1, 1 + M*M, D) to a (grid_height x grid_width) patch grid.

    Bicubic, in float32 (bicubic in half precision shifts the table), CLS position kept as is.
    `offset > 0` reproduces the original's `scale_factor=((h + offset)/M, (w + offset)/M)` resize
    (a guard against floor rounding, facebookresearch/dino#8); `offset == 0` resizes to the exact size
    as transformers does. Returned unchanged when the grid is already the table's square grid.
    """
    num_positions = position_embeddings.shape[1] - 1
    side = int(math.sqrt(num_positions))
    if side * side != num_positions:
        raise ValueError(f"The position table must hold a square grid, got {num_positions} patch positions.")
    if grid_height == grid_width == side:
        return position_embeddings
    dim = position_embeddings.shape[-1]
    class_pos, patch_pos = position_embeddings[:, :1], position_embeddings[:, 1:]
    patch_pos = patch_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2)  # (1, D, M, M)
    if offset:
        resize = dict(scale_factor=((grid_height + offset) / side, (grid_width + offset) / side))
    else:
        resize = dict(size=(grid_height, grid_width))
    patch_pos = F.interpolate(
        patch_pos.float(), mode="bicubic", align_corners=False, antialias=antialias, **resize
    ).to(position_embeddings.dtype)
    if patch_pos.shape[-2:] != (grid_height, grid_width):
        raise RuntimeError(f"Interpolated grid {tuple(patch_pos.shape[-2:])} != {(grid_height, grid_width)}.")
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_height * grid_width, dim)  # (1, h*w, D)
    return torch.cat((class_pos, patch_pos), dim=1)


class Dinov2PatchEmbeddings(nn.Module):
    """Non-overlapping patch projection: (B, C, H, W) -> (B, H/p * W/p, D)."""

    def __init__(self, config: Dinov2Config):
        super().__init__()
        self.patch_size = config.patch_size
        self.num_channels = config.num_channels
        self.projection = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        check_pixel_values(pixel_values, self.num_channels, self.patch_size)
        pixel_values = pixel_values.to(self.projection.weight.dtype)
        return self.projection(pixel_values).flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, h*w, D)


def check_pixel_values(pixel_values: torch.Tensor, num_channels: int, patch_size: int) -> None:
    """Raise a `ValueError` naming the problem for inputs the patch embedding cannot take."""
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4:
        shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
        raise ValueError(f"pixel_values must be a (batch, channels, height, width) tensor, got {shape}.")
    _, channels, height, width = pixel_values.shape
    if channels != num_channels:
        raise ValueError(f"pixel_values has {channels} channels, the model expects {num_channels}.")
    if height % patch_size or width % patch_size or height == 0 or width == 0:
        raise ValueError(
            f"Image size {height}x{width} is not a multiple of the patch size {patch_size}: "
            f"resize or crop to e.g. {max(1, round(height / patch_size)) * patch_size}x"
            f"{max(1, round(width / patch_size)) * patch_size}."
        )


class Dinov2Embeddings(nn.Module):
    """Patch embeddings, mask token, CLS token, position embeddings and register tokens.

    Order as `prepare_tokens_with_masks` in the original: patches -> masked patches replaced by the mask
    token (so they still receive their position) -> CLS prepended -> positions added -> registers
    inserted after CLS (registers get no position).
    """

    def __init__(self, config: Dinov2Config):
        super().__init__()
        self.config = config
        dim = config.hidden_size
        self.patch_embeddings = Dinov2PatchEmbeddings(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim)) if config.use_mask_token else None
        self.position_embeddings = nn.Parameter(torch.zeros(1, config.num_patches + 1, dim))
        if config.num_register_tokens > 0:
            self.register_tokens = nn.Parameter(torch.zeros(1, config.num_register_tokens, dim))
        else:
            self.register_tokens = None
        # resized position tables, reused while the table is not being trained (see `position_table`)
        self._position_cache: dict[tuple, tuple[int, torch.Tensor]] = {}

    def position_table(self, grid_height: int, grid_width: int) -> torch.Tensor:
        """The position table for a grid, interpolated per the config and cached per resolution.

        The cache is used only when no gradient can flow into the table, and is invalidated by any
        in-place update of it (optimizer step, weight loading) through the tensor's version counter.
        """
        table = self.position_embeddings
        compute = lambda: interpolate_position_embeddings(  # noqa: E731
            table, grid_height, grid_width, self.config.interpolate_offset, self.config.interpolate_antialias
        )
        if (torch.is_grad_enabled() and table.requires_grad) or torch.compiler.is_compiling():
            return compute()
        key = (grid_height, grid_width, table.dtype, table.device)
        cached = self._position_cache.get(key)
        if cached is None or cached[0] != table._version:
            with torch.no_grad():
                cached = (table._version, compute())
            self._position_cache[key] = cached
        return cached[1]

    def forward(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None = None) -> torch.Tensor:
        embeddings = self.patch_embeddings(pixel_values)  # (B, N, D); checks the input's shape
        batch_size, _, height, width = pixel_values.shape
        if bool_masked_pos is not None:
            if self.mask_token is None:
                raise ValueError("bool_masked_pos was given but the config has use_mask_token=False.")
            if bool_masked_pos.shape != embeddings.shape[:2]:
                raise ValueError(
                    f"bool_masked_pos must have shape (batch, num_patches) = {tuple(embeddings.shape[:2])}, "
                    f"got {tuple(bool_masked_pos.shape)}."
                )
            mask_token = self.mask_token.to(embeddings.dtype).unsqueeze(0)  # (1, 1, D)
            embeddings = torch.where(bool_masked_pos.bool().unsqueeze(-1), mask_token, embeddings)
        cls_tokens = self.cls_token.expand(batch_size, -1, -1).to(embeddings.dtype)
        embeddings = torch.cat((cls_tokens, embeddings), dim=1)  # (B, 1 + N, D)
        patch_size = self.config.patch_size
        embeddings = embeddings + self.position_table(height // patch_size, width // patch_size)
        if self.register_tokens is not None:
            registers = self.register_tokens.expand(batch_size, -1, -1).to(embeddings.dtype)
            embeddings = torch.cat((embeddings[:, :1], registers, embeddings[:, 1:]), dim=1)  # (B, 1 + R + N, D)
        return embeddings


# ----------------------------------------------------------------------------------------------------
# Packed sequences: crop batches of several sizes as one token sequence
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PackedLayout:
    """Where crop batches of different sizes lie in one packed (T, D) token tensor: group g holds
    `batch_sizes[g]` crops of `lengths[g]` tokens each, group after group, crop after crop.

    Every op of a block but attention is token-wise, so it runs once on the packed tensor; attention is
    restricted to each crop's own tokens (the block-diagonal mask of the original's xFormers path).
    """

    batch_sizes: tuple[int, ...]
    lengths: tuple[int, ...]

    @classmethod
    def of(cls, batches: Sequence[torch.Tensor]) -> "PackedLayout":
        """The layout of (B_g, L_g, ...) tensors."""
        return cls(tuple(b.shape[0] for b in batches), tuple(b.shape[1] for b in batches))

    @property
    def group_tokens(self) -> list[int]:
        return [b * n for b, n in zip(self.batch_sizes, self.lengths)]

    def pack(self, batches: Sequence[torch.Tensor]) -> torch.Tensor:
        """[(B_g, L_g, ...)] -> (T, ...), T = sum_g B_g * L_g."""
        return torch.cat([b.flatten(0, 1) for b in batches])

    def unpack(self, packed: torch.Tensor) -> list[torch.Tensor]:
        """(T, ...) -> [(B_g, L_g, ...)] (views)."""
        parts = packed.split(self.group_tokens)
        return [part.view(b, n, *packed.shape[1:]) for part, b, n in zip(parts, self.batch_sizes, self.lengths)]

    def sample_of_token(self, device: torch.device | None = None) -> torch.Tensor:
        """(T,) long: the index of each token's crop among all sum_g B_g crops."""
        lengths = torch.tensor([n for b, n in zip(self.batch_sizes, self.lengths) for _ in range(b)], device=device)
        return torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths)


# ----------------------------------------------------------------------------------------------------
# Block components
# ----------------------------------------------------------------------------------------------------
def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T * scaling) v on (B, heads, N, head_dim); returns (B, N, heads, head_dim) and weights."""
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class Dinov2SelfAttention(nn.Module):
    """Query, key and value projections (head_dim^-0.5 scaling), named as transformers' checkpoints."""

    def __init__(self, config: Dinov2Config):
        super().__init__()
        dim = config.hidden_size
        self.query = nn.Linear(dim, dim, bias=config.qkv_bias)
        self.key = nn.Linear(dim, dim, bias=config.qkv_bias)
        self.value = nn.Linear(dim, dim, bias=config.qkv_bias)

    def qkv(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """One fused (B, N, D) -> (B, N, 3D) projection: a single GEMM instead of three."""
        weight = torch.cat((self.query.weight, self.key.weight, self.value.weight))
        bias = None
        if self.query.bias is not None:
            bias = torch.cat((self.query.bias, self.key.bias, self.value.bias))
        return F.linear(hidden_states, weight, bias)


class Dinov2SelfOutput(nn.Module):
    def __init__(self, config: Dinov2Config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)


class Dinov2Attention(nn.Module):
    """Multi-head self-attention through transformers' attention interface (SDPA, eager, flex, ...)."""

    def __init__(self, config: Dinov2Config):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.attention = Dinov2SelfAttention(config)
        self.output = Dinov2SelfOutput(config)

    def forward(
        self, hidden_states: torch.Tensor, output_attentions: bool = False, layout: PackedLayout | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, N, D) -> (B, N, D); with a `layout`, packed (T, D) -> (T, D), each crop attending to its own tokens:
        one attention call per group of equal-length crops (exact, and on CPU faster than one call over the packed
        sequence with a block-diagonal mask; flash-attention's variable-length kernel is the CUDA equivalent)."""
        qkv = self.attention.qkv(hidden_states)  # (..., 3D)
        if layout is None:
            attn_output, attn_weights = self._attend(qkv, output_attentions)
            return self.output.dense(attn_output), attn_weights
        groups = [self._attend(group)[0].flatten(0, 1) for group in layout.unpack(qkv)]  # (B_g * L_g, D) each
        return self.output.dense(torch.cat(groups)), None

    def _attend(self, qkv: torch.Tensor, output_attentions: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, N, 3D) fused projections -> (B, N, D) attention output (before the output projection), weights."""
        batch_size, seq_len, _ = qkv.shape
        # (B, N, 3D) -> 3 x (B, heads, N, head_dim) as views of the chunks: the backward then concatenates three
        # contiguous gradients, where unbinding one permuted (3, B, heads, N, head_dim) view made it gather a
        # 5-D strided copy (1.3x slower attention on CPU for the tiny preset's 17 tokens)
        query, key, value = (
            part.view(batch_size, seq_len, self.num_heads, self.head_dim).transpose(1, 2)
            for part in qkv.chunk(3, dim=-1)
        )
        implementation = self.config._attn_implementation or "sdpa"
        if output_attentions and implementation != "eager":
            implementation = "eager"  # only eager can return the weights
        attention_fn: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        if implementation == "eager":
            attention_fn = eager_attention_forward
        attn_output, attn_weights = attention_fn(
            self,
            query,
            key,
            value,
            None,
            dropout=self.config.attention_probs_dropout_prob if self.training else 0.0,
            scaling=self.scaling,
            is_causal=False,
        )
        attn_output = attn_output.reshape(batch_size, seq_len, -1)  # (B, N, heads, hd) -> (B, N, D)
        return attn_output, attn_weights if output_attentions else None


class Dinov2LayerScale(nn.Module):
    """Per-channel residual scaling gamma (Touvron et al. 2021, CaiT), initialised to `layerscale_value`."""

    def __init__(self, config: Dinov2Config):
        super().__init__()
        self.lambda1 = nn.Parameter(torch.full((config.hidden_size,), float(config.layerscale_value)))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states * self.lambda1


class Dinov2MLP(nn.Module):
    """Linear -> activation -> Linear."""

    def __init__(self, config: Dinov2Config):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.ffn_hidden_size)
        self.activation = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.ffn_hidden_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(hidden_states)))


class Dinov2SwiGLUFFN(nn.Module):
    """SwiGLU (Shazeer 2020): w3(silu(x1) * x2) with x1, x2 = w12(x).chunk(2), gate first (`SwiGLUFFNFused`)."""

    def __init__(self, config: Dinov2Config):
        super().__init__()
        hidden = config.ffn_hidden_size
        self.weights_in = nn.Linear(config.hidden_size, 2 * hidden)
        self.weights_out = nn.Linear(hidden, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        gate, up = self.weights_in(hidden_states).chunk(2, dim=-1)
        return self.weights_out(F.silu(gate) * up)


def drop_path(
    hidden_states: torch.Tensor, drop_prob: float, training: bool, layout: PackedLayout | None = None
) -> torch.Tensor:
    """Stochastic depth (Huang et al. 2016): zero whole samples with prob p, scale the rest by 1/(1-p).
    With a `layout`, the samples are the crops of the packed (T, D) tensor."""
    if drop_prob == 0.0 or not training:
        return hidden_states
    keep_prob = 1.0 - drop_prob
    if layout is not None:
        keep = hidden_states.new_empty(sum(layout.batch_sizes)).bernoulli_(keep_prob)
        keep = keep[layout.sample_of_token(hidden_states.device)].unsqueeze(-1)  # per crop -> per token (T, 1)
    else:
        shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
        keep = hidden_states.new_empty(shape).bernoulli_(keep_prob)
    return hidden_states * keep / keep_prob


def add_residual_on_subset(
    hidden_states: torch.Tensor, residual_fn: Callable[..., torch.Tensor], drop_prob: float,
    layout: PackedLayout | None = None,
) -> torch.Tensor:
    """Efficient stochastic depth of the original (`drop_add_residual_stochastic_depth`).

    Keeps exactly max(int(B * (1 - p)), 1) random samples, computes the residual branch for those only
    (saving ~p of the compute and activation memory), and adds it back scaled by B / kept; the dropped
    samples pass through unchanged. In expectation this equals `x + residual_fn(x)`. With a `layout`, each
    group of the packed (T, D) tensor keeps its own subset, and the kept crops run packed
    (`residual_fn(tokens, layout=kept_layout)`), as the original's list version.
    """
    if layout is None:
        batch_size = hidden_states.shape[0]
        keep = max(int(batch_size * (1.0 - drop_prob)), 1)
        kept = torch.randperm(batch_size, device=hidden_states.device)[:keep]
        residual = residual_fn(hidden_states.index_select(0, kept))  # backward: index_add, not index_put
        out = torch.index_add(
            hidden_states.flatten(1), 0, kept, residual.to(hidden_states.dtype).flatten(1), alpha=batch_size / keep
        )
        return out.view_as(hidden_states)
    device = hidden_states.device
    token_index, scales, kept_sizes, start = [], [], [], 0
    for batch_size, length in zip(layout.batch_sizes, layout.lengths):
        keep = max(int(batch_size * (1.0 - drop_prob)), 1)
        kept = torch.randperm(batch_size, device=device)[:keep]
        tokens = start + (kept.unsqueeze(1) * length + torch.arange(length, device=device)).flatten()  # (keep * L,)
        token_index.append(tokens)
        scales.append(torch.full((tokens.numel(), 1), batch_size / keep, device=device))
        kept_sizes.append(keep)
        start += batch_size * length
    token_index = torch.cat(token_index)
    kept_tokens = hidden_states.index_select(0, token_index)  # backward: index_add, not a serial index_put
    residual = residual_fn(kept_tokens, layout=PackedLayout(tuple(kept_sizes), layout.lengths))
    residual = residual.to(hidden_states.dtype) * torch.cat(scales).to(hidden_states.dtype)
    return torch.index_add(hidden_states, 0, token_index, residual)


class Dinov2Layer(GradientCheckpointingLayer):
    """Pre-LN block: x += LS1(Attn(LN1 x)); x += LS2(FFN(LN2 x)), each residual with stochastic depth."""

    # the original switches to the subset implementation above this rate (`Block.forward`)
    EFFICIENT_DROP_PATH_MIN_RATE = 0.1

    def __init__(self, config: Dinov2Config, drop_path_rate: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = Dinov2Attention(config)
        self.layer_scale1 = Dinov2LayerScale(config)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = Dinov2SwiGLUFFN(config) if config.ffn_type == "swiglu" else Dinov2MLP(config)
        self.layer_scale2 = Dinov2LayerScale(config)
        self.drop_path_rate = drop_path_rate
        self.efficient_drop_path = config.efficient_drop_path

    def attention_residual(self, hidden_states: torch.Tensor, layout: PackedLayout | None = None) -> torch.Tensor:
        return self.layer_scale1(self.attention(self.norm1(hidden_states), layout=layout)[0])

    def ffn_residual(self, hidden_states: torch.Tensor, layout: PackedLayout | None = None) -> torch.Tensor:
        return self.layer_scale2(self.mlp(self.norm2(hidden_states)))

    def forward(
        self, hidden_states: torch.Tensor, output_attentions: bool = False, layout: PackedLayout | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, N, D) -> (B, N, D), or packed (T, D) -> (T, D) with a `layout` (see [`PackedLayout`])."""
        rate = self.drop_path_rate if self.training else 0.0
        if rate > self.EFFICIENT_DROP_PATH_MIN_RATE and self.efficient_drop_path:
            hidden_states = add_residual_on_subset(hidden_states, self.attention_residual, rate, layout)
            hidden_states = add_residual_on_subset(hidden_states, self.ffn_residual, rate, layout)
            return hidden_states, None
        attn_output, attn_weights = self.attention(
            self.norm1(hidden_states), output_attentions=output_attentions, layout=layout
        )
        hidden_states = hidden_states + drop_path(self.layer_scale1(attn_output), rate, self.training, layout)
        hidden_states = hidden_states + drop_path(self.ffn_residual(hidden_states), rate, self.training, layout)
        return hidden_states, attn_weights


class Dinov2Encoder(nn.Module):
    def __init__(self, config: Dinov2Config):
        super().__init__()
        self.layer = nn.ModuleList(Dinov2Layer(config, rate) for rate in config.drop_path_rates())


# ----------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------
# `config.json`'s auto_map: module names are the files `save_pretrained` copies next to the weights
REMOTE_CODE_AUTO_MAP = {
    "AutoConfig": "configuration_dinov2.Dinov2Config",
    "AutoModel": "modeling_dinov2.Dinov2Model",
    "AutoModelForImageClassification": "modeling_dinov2.Dinov2ForImageClassification",
    "AutoBackbone": "modeling_dinov2.Dinov2Backbone",
}


@dataclass
class Dinov2ModelOutput(BaseModelOutputWithPooling):
    """`BaseModelOutputWithPooling` plus the normalised token groups.

    Args:
        last_hidden_state: (B, 1 + R + N, D) all tokens after the final LayerNorm.
        pooler_output: (B, D) the normalised CLS token (`x_norm_clstoken` in the original).
        hidden_states: embeddings and each block's output, before the final LayerNorm.
        attentions: per-block attention weights (eager attention only).
        patch_tokens: (B, N, D) normalised patch tokens (`x_norm_patchtokens`).
        register_tokens: (B, R, D) normalised register tokens (`x_norm_regtokens`), or None.
    """

    patch_tokens: torch.FloatTensor | None = None
    register_tokens: torch.FloatTensor | None = None


class Dinov2PreTrainedModel(PreTrainedModel):
    config_class = Dinov2Config
    config: Dinov2Config
    base_model_prefix = "dinov2"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["Dinov2Embeddings", "Dinov2Layer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True  # no graph breaks: tested with torch.compile(fullgraph=True)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Initialisation of the original `DinoVisionTransformer.init_weights`."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            # the original keeps PyTorch's default init for the patch projection
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                fan_in = module.weight[0].numel()
                init.uniform_(module.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, Dinov2Embeddings):
            init.trunc_normal_(module.position_embeddings, mean=0.0, std=std)
            init.normal_(module.cls_token, std=1e-6)  # original: nn.init.normal_(cls_token, std=1e-6)
            if module.register_tokens is not None:
                init.normal_(module.register_tokens, std=1e-6)
            if module.mask_token is not None:
                init.zeros_(module.mask_token)
        elif isinstance(module, Dinov2LayerScale):
            init.constant_(module.lambda1, self.config.layerscale_value)

    def _output_options(self, output_hidden_states, output_attentions, return_dict) -> tuple[bool, bool, bool]:
        """The forward's output switches, the config's values where not given."""
        config = self.config
        return (getattr(config, "output_hidden_states", False) if output_hidden_states is None else output_hidden_states,
                getattr(config, "output_attentions", False) if output_attentions is None else output_attentions,
                getattr(config, "return_dict", True) if return_dict is None else return_dict)

    # ------------------------------------------------------------------ loading, saving and sharing
    # parameters that may be absent from a checkpoint because they are new (task heads)
    _new_parameter_prefixes: tuple[str, ...] = ()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained`, also for transformers' `dinov2` / `dinov2_with_registers`
        checkpoints, that refuses to load half a model.

        A weight whose shape differs from the model's, or a missing backbone weight, raises a `ValueError`
        naming every such key (pass `ignore_mismatched_sizes=True` to re-initialise mismatched weights
        instead, as transformers does). Task heads (`_new_parameter_prefixes`) may be missing.
        """
        ignore_mismatched_sizes = kwargs.pop("ignore_mismatched_sizes", False)
        output_loading_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *model_args, ignore_mismatched_sizes=True, output_loading_info=True,
            **kwargs,
        )
        problems = []
        if not ignore_mismatched_sizes:
            problems += [
                f"  {key}: checkpoint {tuple(saved)} vs model {tuple(expected)}"
                for key, saved, expected in sorted(info["mismatched_keys"])
            ]
        missing = sorted(k for k in info["missing_keys"] if not k.startswith(cls._new_parameter_prefixes))
        problems += [f"  {key}: missing from the checkpoint" for key in missing]
        if problems:
            raise ValueError(
                f"Cannot load {pretrained_model_name_or_path} into {cls.__name__}: the checkpoint does not fit the "
                "config (nothing was loaded):\n" + "\n".join(problems)
            )
        return (model, info) if output_loading_info else model

    def save_pretrained(self, save_directory, *args, is_main_process: bool = True, **kwargs):
        """`PreTrainedModel.save_pretrained`, plus DINOv2's evaluation preprocessing
        (`preprocessor_config.json`, for `AutoImageProcessor`) and a model card when none is there."""
        # every Auto class this code serves, so that e.g. AutoModelForImageClassification can start from a
        # backbone checkpoint with trust_remote_code (transformers only records the saved class's own)
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **REMOTE_CODE_AUTO_MAP}
        result = super().save_pretrained(save_directory, *args, is_main_process=is_main_process, **kwargs)
        if is_main_process:
            write_preprocessor_config(save_directory, crop_size=eval_crop_size(self.config.image_size))
            write_model_card(save_directory, self.config, overwrite=False)
        return result

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str = "Upload DINOv2 model",
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        model_card: str | None = None,
        folder: str | os.PathLike | None = None,
        **save_kwargs,
    ):
        """Upload weights, config, code, preprocessing config and a model card (library `transformers`,
        pipeline `image-feature-extraction`) to `repo_id`. `model_card` replaces the card.

        Every other file of `folder` goes up too (default: the local folder this model was loaded from), so
        a folder's model card with its measured results, its pictures and result files are kept; the
        weights, config and code are this model's.
        """
        import shutil

        from huggingface_hub import HfApi

        folder = folder if folder is not None else self.name_or_path
        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as work_dir:
            if folder and os.path.isdir(folder):
                shutil.copytree(folder, work_dir, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns(".*", "*.safetensors", "*.bin", "*.index.json"))
            self.save_pretrained(work_dir, **save_kwargs)
            if model_card is not None:
                with open(os.path.join(work_dir, "README.md"), "w") as f:
                    f.write(model_card)
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=work_dir,
                commit_message=commit_message,
                revision=revision,
                create_pr=create_pr,
            )


class Dinov2Model(Dinov2PreTrainedModel):
    """The DINOv2 backbone: `last_hidden_state`, `pooler_output` (normalised CLS), `patch_tokens`,
    `register_tokens`, optional `hidden_states` / `attentions`.

    `pixel_values` may also be a list of batches of different sizes (e.g. global and local crops); the
    result is then a list with one output per batch.
    """

    def __init__(self, config: Dinov2Config):
        super().__init__(config)
        self.embeddings = Dinov2Embeddings(config)
        self.encoder = Dinov2Encoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> Dinov2PatchEmbeddings:
        return self.embeddings.patch_embeddings

    @property
    def num_prefix_tokens(self) -> int:
        """CLS + registers: the tokens before the patch tokens."""
        return 1 + self.config.num_register_tokens

    def _run_blocks(
        self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None, keep: Callable[[int], bool],
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Embed and run the blocks; returns the last sequence, the kept intermediate sequences
        (`keep(i)`, i = 0 for the embeddings, i = k after block k) and the attention weights."""
        hidden_states = self.embeddings(pixel_values, bool_masked_pos)
        kept = [hidden_states] if keep(0) else []
        attentions = []
        for index, layer in enumerate(self.encoder.layer, start=1):
            hidden_states, weights = layer(hidden_states, output_attentions)
            if keep(index):
                kept.append(hidden_states)
            if output_attentions:
                attentions.append(weights)
        return hidden_states, kept, attentions

    def forward(
        self,
        pixel_values: torch.Tensor | Sequence[torch.Tensor],
        bool_masked_pos: torch.Tensor | Sequence[torch.Tensor | None] | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> Dinov2ModelOutput | tuple | list:
        r"""
        Args:
            pixel_values: (B, C, H, W) with H and W multiples of the patch size, or a list of such batches.
            bool_masked_pos: (B, N) bool, patches to replace by the mask token (before positions are added);
                a list (entries may be None) when `pixel_values` is a list.
        """
        output_hidden_states, output_attentions, return_dict = self._output_options(
            output_hidden_states, output_attentions, return_dict)
        if isinstance(pixel_values, (list, tuple)):
            masks = bool_masked_pos if bool_masked_pos is not None else [None] * len(pixel_values)
            if len(masks) != len(pixel_values):
                raise ValueError(f"Got {len(pixel_values)} image batches but {len(masks)} masks.")
            if self.config.packed_forward and len(pixel_values) > 1 and not output_attentions:
                return self._packed_forward(pixel_values, masks, output_hidden_states, return_dict)
            return [
                self.forward(x, m, output_hidden_states, output_attentions, return_dict)
                for x, m in zip(pixel_values, masks)
            ]

        hidden_states, all_hidden, attentions = self._run_blocks(
            pixel_values, bool_masked_pos, keep=lambda i: output_hidden_states, output_attentions=output_attentions
        )
        output = self._output(self.layernorm(hidden_states), all_hidden if output_hidden_states else None,
                              attentions if output_attentions else None)
        return output if return_dict else output.to_tuple()

    def _output(self, sequence_output: torch.Tensor, hidden_states: list | None, attentions: list | None
                ) -> Dinov2ModelOutput:
        prefix = self.num_prefix_tokens
        return Dinov2ModelOutput(
            last_hidden_state=sequence_output,
            pooler_output=sequence_output[:, 0],
            hidden_states=tuple(hidden_states) if hidden_states is not None else None,
            attentions=tuple(attentions) if attentions is not None else None,
            patch_tokens=sequence_output[:, prefix:],
            register_tokens=sequence_output[:, 1:prefix] if prefix > 1 else None,
        )

    def _packed_forward(self, pixel_values: Sequence[torch.Tensor], masks: Sequence[torch.Tensor | None],
                        output_hidden_states: bool, return_dict: bool) -> list:
        """Several crop batches through the blocks as one packed sequence ([`PackedLayout`]); one output each."""
        embeddings = [self.embeddings(x, m) for x, m in zip(pixel_values, masks)]  # [(B_g, 1 + R + N_g, D)]
        layout = PackedLayout.of(embeddings)
        hidden_states = layout.pack(embeddings)  # (T, D)
        all_hidden = [embeddings] if output_hidden_states else None
        for layer in self.encoder.layer:
            hidden_states, _ = layer(hidden_states, layout=layout)
            if output_hidden_states:
                all_hidden.append(layout.unpack(hidden_states))
        outputs = []
        for group, sequence_output in enumerate(layout.unpack(self.layernorm(hidden_states))):
            per_block = [states[group] for states in all_hidden] if output_hidden_states else None
            output = self._output(sequence_output, per_block, None)
            outputs.append(output if return_dict else output.to_tuple())
        return outputs

    @torch.no_grad()
    def get_intermediate_layers(
        self,
        pixel_values: torch.Tensor,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
    ) -> tuple:
        """Patch tokens of several blocks, as the original's `get_intermediate_layers`.

        Args:
            n: the last `n` blocks, or a list of 0-based block indices.
            reshape: return (B, D, H/p, W/p) maps instead of (B, N, D) tokens.
            return_class_token: return (patch_tokens, cls_token) pairs.
            norm: apply the final LayerNorm to each block's output.
        """
        num_layers = self.config.num_hidden_layers
        indices = list(range(num_layers - n, num_layers)) if isinstance(n, int) else list(n)
        if not indices or any(not 0 <= i < num_layers for i in indices):
            raise ValueError(f"Block indices must be in [0, {num_layers}), got {indices}.")
        wanted = {i + 1 for i in indices}  # _run_blocks counts the embeddings as 0
        _, outputs, _ = self._run_blocks(pixel_values, None, keep=lambda i: i in wanted)
        # _run_blocks keeps in block order; map back to the requested order
        by_block = dict(zip(sorted(wanted), outputs))
        outputs = [by_block[i + 1] for i in indices]
        if norm:
            outputs = [self.layernorm(out) for out in outputs]
        prefix = self.num_prefix_tokens
        class_tokens = [out[:, 0] for out in outputs]
        patches = [out[:, prefix:] for out in outputs]
        if reshape:
            batch, _, height, width = pixel_values.shape
            grid = (height // self.config.patch_size, width // self.config.patch_size)
            patches = [p.reshape(batch, *grid, -1).permute(0, 3, 1, 2).contiguous() for p in patches]  # (B, D, h, w)
        if return_class_token:
            return tuple(zip(patches, class_tokens))
        return tuple(patches)


class Dinov2Backbone(BackboneMixin, Dinov2Model):
    """The ViT as a transformers backbone for dense heads (DPT, Depth Anything, Mask2Former, UperNet): the
    feature maps of the stages in `config.out_features` (`"stem"` = the embeddings, `"stage<k>"` = block k),
    each normed by the final LayerNorm (`apply_layernorm`) and reshaped to (B, C, H/p, W/p) with the CLS and
    register tokens dropped (`reshape_hidden_states`). Same weights and names as [`Dinov2Model`], so a
    `Dinov2Model` checkpoint loads into it.

    Example:
        >>> backbone = Dinov2Backbone.from_pretrained("path/to/backbone", out_indices=[3, 6, 9, 12])
        >>> [m.shape for m in backbone(pixel_values).feature_maps]  # 4 x (B, 768, H/14, W/14)
    """

    def __init__(self, config: Dinov2Config):
        super().__init__(config)
        self.num_features = [config.hidden_size] * (config.num_hidden_layers + 1)

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BackboneOutput | tuple:
        output_hidden_states, output_attentions, return_dict = self._output_options(
            output_hidden_states, output_attentions, return_dict)
        wanted = {self.stage_names.index(name) for name in self.out_features}
        _, stages, attentions = self._run_blocks(
            pixel_values, None, keep=lambda i: output_hidden_states or i in wanted, output_attentions=output_attentions
        )
        indices = range(len(self.stage_names)) if output_hidden_states else sorted(wanted)
        by_stage = dict(zip(indices, stages))
        feature_maps = tuple(self._feature_map(by_stage[i], pixel_values.shape) for i in sorted(wanted))
        output = BackboneOutput(
            feature_maps=feature_maps,
            hidden_states=tuple(stages) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
        )
        return output if return_dict else output.to_tuple()

    def _feature_map(self, hidden_state: torch.Tensor, image_shape: torch.Size) -> torch.Tensor:
        if self.config.apply_layernorm:
            hidden_state = self.layernorm(hidden_state)
        if not self.config.reshape_hidden_states:
            return hidden_state
        batch, _, height, width = image_shape
        patches = hidden_state[:, self.num_prefix_tokens:]  # CLS and registers dropped
        grid = (height // self.config.patch_size, width // self.config.patch_size)
        return patches.reshape(batch, *grid, -1).permute(0, 3, 1, 2).contiguous()  # (B, C, h, w)


class Dinov2ForImageClassification(Dinov2PreTrainedModel):
    """DINOv2 with a linear classifier on [CLS, mean of the patch tokens] (registers excluded), as
    transformers' `Dinov2ForImageClassification` and the released 1-layer linear heads."""

    _new_parameter_prefixes = ("classifier.",)

    def __init__(self, config: Dinov2Config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.dinov2 = Dinov2Model(config)
        self.classifier = (
            nn.Linear(2 * config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        )
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput | tuple:
        outputs = self.dinov2(
            pixel_values, output_hidden_states=output_hidden_states, output_attentions=output_attentions,
            return_dict=True,
        )
        features = torch.cat([outputs.pooler_output, outputs.patch_tokens.mean(dim=1)], dim=1)  # (B, 2D)
        logits = self.classifier(features)
        loss = self.loss_function(labels, logits, self.config, **kwargs) if labels is not None else None
        output = ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        if return_dict is None:
            return_dict = getattr(self.config, "return_dict", True)
        return output if return_dict else output.to_tuple()


__all__ = [
    "Dinov2Model",
    "Dinov2ForImageClassification",
    "Dinov2PreTrainedModel",
    "Dinov2ModelOutput",
    "interpolate_position_embeddings",
]

# `save_pretrained` writes an `auto_map` and copies this code, so `AutoModel.from_pretrained(path,
# trust_remote_code=True)` works where this package is not installed.
Dinov2Config.register_for_auto_class()
Dinov2Model.register_for_auto_class("AutoModel")
Dinov2ForImageClassification.register_for_auto_class("AutoModelForImageClassification")
