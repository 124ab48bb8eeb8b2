"""Configuration of the DINOv2 vision transformer (Oquab et al. 2023, arXiv 2304.07193).

`Dinov2Config` describes every size and switch of the original `DinoVisionTransformer`
(facebookresearch/dinov2) and reads the configs of transformers' own `dinov2` and
`dinov2_with_registers` checkpoints, so their weights load into this package unchanged.
"""

from __future__ import annotations

import copy
from typing import Any

from transformers import PretrainedConfig
from transformers.backbone_utils import BackboneConfigMixin

# transformers owns "dinov2" and "dinov2_with_registers"; a model type of our own keeps AutoModel
# from silently building transformers' class for our checkpoints (and vice versa).
MODEL_TYPE = "dinov2_ssl"
STOCK_MODEL_TYPES = ("dinov2", "dinov2_with_registers")

FFN_TYPES = ("mlp", "swiglu")

# Sizes of the released backbones (dinov2/models/vision_transformer.py). All have head dim 64,
# patch 14 and a 37x37 position table (img_size 518), as the torch-hub and Hub weights.
_ARCHS: dict[str, dict[str, Any]] = {
    "vit_small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, ffn_type="mlp"),
    "vit_base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, ffn_type="mlp"),
    "vit_large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, ffn_type="mlp"),
    "vit_giant2": dict(hidden_size=1536, num_hidden_layers=40, num_attention_heads=24, ffn_type="swiglu"),
}
# Register models were released with size-based, antialiased interpolation; the others with the
# 0.1-offset scale-factor interpolation (hub/backbones.py).
_NO_REGISTERS = dict(num_register_tokens=0, interpolate_offset=0.1, interpolate_antialias=False)
_REG4 = dict(num_register_tokens=4, interpolate_offset=0.0, interpolate_antialias=True)

PRESETS: dict[str, dict[str, Any]] = {}
for _name, _arch in _ARCHS.items():
    PRESETS[_name] = dict(_arch, image_size=518, patch_size=14, **_NO_REGISTERS)
    PRESETS[f"{_name}_reg4"] = dict(_arch, image_size=518, patch_size=14, **_REG4)

# Keys of transformers' Dinov2Config that describe its Backbone API (not the network); stage_names is derived
BACKBONE_KEYS = ("out_features", "out_indices", "apply_layernorm", "reshape_hidden_states")
_STOCK_ONLY_KEYS = ("stage_names",)


def swiglu_hidden_size(hidden_size: int, mlp_ratio: float) -> int:
    """Hidden width of the SwiGLU FFN: 2/3 of the MLP width, rounded up to a multiple of 8.

    Matches `SwiGLUFFNFused` in the original (4096 for ViT-g's 1536 channels).
    """
    return (int(int(hidden_size * mlp_ratio) * 2 / 3) + 7) // 8 * 8


class Dinov2Config(BackboneConfigMixin, PretrainedConfig):
    r"""Configuration of a DINOv2 ViT ([`Dinov2Model`]).

    Defaults are the ViT-B/14 training setup of the original repository (LayerScale 1e-5, 224-px
    position table); use [`Dinov2Config.from_preset`] for the released sizes.

    Args:
        hidden_size (`int`, defaults to 768): width of the token embeddings.
        num_hidden_layers (`int`, defaults to 12): number of transformer blocks.
        num_attention_heads (`int`, defaults to 12): attention heads per block; must divide `hidden_size`.
        mlp_ratio (`float`, defaults to 4.0): FFN width / `hidden_size` (SwiGLU keeps 2/3 of it, see
            [`swiglu_hidden_size`]).
        ffn_type (`str`, defaults to `"mlp"`): `"mlp"` (Linear-GELU-Linear) or `"swiglu"` (ViT-g).
        hidden_act (`str`, defaults to `"gelu"`): activation of the MLP FFN.
        patch_size (`int`, defaults to 14): side of the square patches.
        image_size (`int`, defaults to 224): side of the square image the position table is built for;
            other sizes are interpolated. Released weights use 518 (a 37x37 table).
        num_channels (`int`, defaults to 3): input channels.
        num_register_tokens (`int`, defaults to 0): register tokens (Darcet et al. 2024), inserted after
            the CLS token, without position embedding.
        use_mask_token (`bool`, defaults to `True`): learn a mask token for masked-image modelling (iBOT).
        layerscale_value (`float`, defaults to 1e-5): initial LayerScale value. The original trains with 1e-5;
            1.0 (transformers' default) is unstable from scratch.
        drop_path_rate (`float`, defaults to 0.0): stochastic-depth rate.
        drop_path_uniform (`bool`, defaults to `True`): the same rate in every block (the original's
            setting); `False` ramps it linearly from 0 to `drop_path_rate`.
        efficient_drop_path (`bool`, defaults to `True`): for rates above 0.1, compute each residual only on
            the kept subset of the batch and rescale by B/kept, as the original's training does.
        packed_forward (`bool`, defaults to `False`): a list of crop batches of different sizes runs through the
            blocks as one packed token sequence (one call per token-wise op, attention per crop), as the
            original's training does on GPUs; `False` runs one forward per batch, which measured faster on CPU
            (`benchmarks/bench_model_step_ab.py`). Same outputs either way.
        qkv_bias (`bool`, defaults to `True`): bias in the query/key/value projections.
        layer_norm_eps (`float`, defaults to 1e-6): LayerNorm epsilon.
        interpolate_offset (`float`, defaults to 0.1): position-table interpolation. A non-zero value uses the
            original's `scale_factor=(n + offset)/M` kludge (non-register releases); 0 resizes to the exact
            target size, as transformers and the register releases do.
        interpolate_antialias (`bool`, defaults to `False`): antialiasing in the bicubic resize (register
            releases and transformers' `dinov2_with_registers` use it).
        initializer_range (`float`, defaults to 0.02): std of the truncated-normal init of Linear weights and
            the position table.
        hidden_dropout_prob, attention_probs_dropout_prob (`float`, default 0.0): dropout, unused by DINOv2
            but kept for transformers compatibility.
        out_features, out_indices (`list`, optional): the stages [`Dinov2Backbone`] returns feature maps of
            (`"stem"`: the embeddings, `"stage<k>"`: block k; default the last block), as transformers'
            backbones. They, `apply_layernorm` and `reshape_hidden_states` only concern the backbone's
            outputs, not the network.
        apply_layernorm (`bool`, defaults to `True`): apply the final LayerNorm to each returned stage.
        reshape_hidden_states (`bool`, defaults to `True`): return (B, C, H/p, W/p) maps (CLS and registers
            dropped) instead of (B, tokens, C) sequences.

    Example:
        >>> from modeling_dinov2 import Dinov2Config, Dinov2Model
        >>> config = Dinov2Config.from_preset("vit_small")
        >>> model = Dinov2Model(config)
    """

    model_type = MODEL_TYPE

    def __init__(
        self,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        mlp_ratio: float = 4.0,
        ffn_type: str = "mlp",
        hidden_act: str = "gelu",
        patch_size: int = 14,
        image_size: int = 224,
        num_channels: int = 3,
        num_register_tokens: int = 0,
        use_mask_token: bool = True,
        layerscale_value: float = 1e-5,
        drop_path_rate: float = 0.0,
        drop_path_uniform: bool = True,
        efficient_drop_path: bool = True,
        packed_forward: bool = False,
        qkv_bias: bool = True,
        layer_norm_eps: float = 1e-6,
        interpolate_offset: float = 0.1,
        interpolate_antialias: bool = False,
        initializer_range: float = 0.02,
        hidden_dropout_prob: float = 0.0,
        attention_probs_dropout_prob: float = 0.0,
        out_features: list[str] | None = None,
        out_indices: list[int] | None = None,
        apply_layernorm: bool = True,
        reshape_hidden_states: bool = True,
        **kwargs,
    ):
        # transformers' configs say `use_swiglu_ffn`; accept it so their dicts load as they are.
        use_swiglu_ffn = kwargs.pop("use_swiglu_ffn", None)
        if use_swiglu_ffn is not None:
            ffn_type = "swiglu" if use_swiglu_ffn else "mlp"
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.mlp_ratio = mlp_ratio
        self.ffn_type = ffn_type
        self.hidden_act = hidden_act
        self.patch_size = patch_size
        self.image_size = image_size
        self.num_channels = num_channels
        self.num_register_tokens = num_register_tokens
        self.use_mask_token = use_mask_token
        self.layerscale_value = layerscale_value
        self.drop_path_rate = drop_path_rate
        self.drop_path_uniform = drop_path_uniform
        self.efficient_drop_path = efficient_drop_path
        self.packed_forward = packed_forward
        self.qkv_bias = qkv_bias
        self.layer_norm_eps = layer_norm_eps
        self.interpolate_offset = interpolate_offset
        self.interpolate_antialias = interpolate_antialias
        self.initializer_range = initializer_range
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        # before PretrainedConfig's own checks, which read derived sizes such as `head_dim`
        self.validate_architecture()
        self.apply_layernorm = apply_layernorm
        self.reshape_hidden_states = reshape_hidden_states
        kwargs.pop("stage_names", None)  # derived from the depth
        self.stage_names = ["stem"] + [f"stage{index}" for index in range(1, num_hidden_layers + 1)]
        self.set_output_features_output_indices(out_features=out_features, out_indices=out_indices)
        super().__init__(**kwargs)

    def validate_architecture(self) -> None:
        """Raise a `ValueError` naming the problem for sizes that cannot build a DINOv2 ViT."""

        def fail(message: str) -> None:
            raise ValueError(f"Invalid Dinov2Config: {message}")

        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "patch_size", "image_size",
                     "num_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                fail(f"`{name}` must be a positive integer, got {value!r}.")
        if self.hidden_size % self.num_attention_heads != 0:
            fail(
                f"`hidden_size` ({self.hidden_size}) must be divisible by `num_attention_heads` "
                f"({self.num_attention_heads})."
            )
        if self.image_size % self.patch_size != 0:
            fail(f"`image_size` ({self.image_size}) must be a multiple of `patch_size` ({self.patch_size}).")
        if self.ffn_type not in FFN_TYPES:
            fail(f"`ffn_type` must be one of {FFN_TYPES}, got {self.ffn_type!r}.")
        if not self.mlp_ratio > 0:
            fail(f"`mlp_ratio` must be positive, got {self.mlp_ratio!r}.")
        if not isinstance(self.num_register_tokens, int) or self.num_register_tokens < 0:
            fail(f"`num_register_tokens` must be a non-negative integer, got {self.num_register_tokens!r}.")
        if not 0.0 <= self.drop_path_rate < 1.0:
            fail(f"`drop_path_rate` must be in [0, 1), got {self.drop_path_rate!r}.")
        if self.interpolate_offset < 0:
            fail(f"`interpolate_offset` must be >= 0, got {self.interpolate_offset!r}.")
        if self.layer_norm_eps <= 0:
            fail(f"`layer_norm_eps` must be positive, got {self.layer_norm_eps!r}.")

    # ------------------------------------------------------------------ derived sizes
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_patches(self) -> int:
        """Patches of the image the position table is built for."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def ffn_hidden_size(self) -> int:
        if self.ffn_type == "swiglu":
            return swiglu_hidden_size(self.hidden_size, self.mlp_ratio)
        return int(self.hidden_size * self.mlp_ratio)

    def drop_path_rates(self) -> list[float]:
        """Per-block stochastic-depth rates: uniform, or linear from 0 (`drop_path_uniform=False`)."""
        n = self.num_hidden_layers
        if self.drop_path_uniform or n == 1:
            return [self.drop_path_rate] * n
        return [self.drop_path_rate * i / (n - 1) for i in range(n)]

    # ------------------------------------------------------------------ presets
    @classmethod
    def from_preset(cls, name: str, **overrides) -> "Dinov2Config":
        """Config of a released architecture: `vit_small`, `vit_base`, `vit_large`, `vit_giant2`, or their
        `_reg4` variants (4 registers). Keyword arguments override preset values, e.g.
        `from_preset("vit_small", image_size=224, drop_path_rate=0.3)` for pretraining."""
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
        return cls(**{**PRESETS[name], **overrides})

    # ------------------------------------------------------------------ stock transformers interchange
    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs) -> "Dinov2Config":
        """Also accepts the config of transformers' `dinov2` / `dinov2_with_registers` checkpoints."""
        if config_dict.get("model_type") in STOCK_MODEL_TYPES:
            config_dict = stock_to_config_dict(config_dict)
        return super().from_dict(config_dict, **kwargs)

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if config_dict.get("model_type") in STOCK_MODEL_TYPES:
            # translated here so `from_pretrained` does not warn about a foreign model type
            config_dict = stock_to_config_dict(config_dict)
        return config_dict, kwargs


def stock_to_config_dict(stock: dict[str, Any]) -> dict[str, Any]:
    """Translate a transformers `dinov2`/`dinov2_with_registers` config dict into ours.

    The interpolation modes are the ones transformers implements: size-based without antialias for
    `dinov2`, size-based with antialias for `dinov2_with_registers`.
    """
    out = copy.deepcopy(stock)
    with_registers = out["model_type"] == "dinov2_with_registers"
    out["model_type"] = MODEL_TYPE
    for key in _STOCK_ONLY_KEYS:
        out.pop(key, None)
    out["ffn_type"] = "swiglu" if out.pop("use_swiglu_ffn", False) else "mlp"
    out["interpolate_offset"] = 0.0
    out["interpolate_antialias"] = with_registers
    out["num_register_tokens"] = out.get("num_register_tokens", 4 if with_registers else 0)
    if with_registers:
        out["use_mask_token"] = True  # Dinov2WithRegisters always has a mask token
    # the stock class defaults; a config.json written by transformers carries the real values
    out.setdefault("layerscale_value", 1.0)
    out.setdefault("patch_size", 16 if with_registers else 14)
    out.setdefault("use_mask_token", True)
    out.pop("architectures", None)
    return out


def config_to_stock_dict(config: Dinov2Config) -> tuple[dict[str, Any], list[str]]:
    """Translate our config into a transformers `dinov2` / `dinov2_with_registers` config dict.

    Returns the dict and a list of warnings for settings that stock transformers cannot reproduce
    (outputs then differ whenever the position table is interpolated).
    """
    warnings: list[str] = []
    if not float(config.mlp_ratio).is_integer():
        raise ValueError(f"mlp_ratio={config.mlp_ratio}: transformers' Dinov2Config only takes whole-number ratios.")
    registers = config.num_register_tokens > 0
    # Dinov2WithRegisters interpolates with antialias, Dinov2 without; a model without registers but with
    # antialiased interpolation maps exactly onto Dinov2WithRegisters with 0 registers.
    use_registers_class = registers or config.interpolate_antialias
    model_type = "dinov2_with_registers" if use_registers_class else "dinov2"
    if config.interpolate_offset != 0:
        warnings.append(
            f"interpolate_offset={config.interpolate_offset} (the original's scale-factor interpolation) has no "
            "equivalent in transformers, which resizes the position table to the exact size: outputs are "
            "identical at the native resolution "
            f"({config.image_size}px) and differ slightly at other input sizes."
        )
    if registers and not config.interpolate_antialias:
        warnings.append(
            "transformers' Dinov2WithRegisters always interpolates with antialias=True, this model does not: "
            f"outputs differ at input sizes other than {config.image_size}px."
        )
    if registers and not config.use_mask_token:
        warnings.append("transformers' Dinov2WithRegisters always has a mask token; it will be initialised to 0.")
    stock = dict(
        model_type=model_type,
        architectures=["Dinov2WithRegistersModel" if use_registers_class else "Dinov2Model"],
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        mlp_ratio=int(config.mlp_ratio),
        hidden_act=config.hidden_act,
        hidden_dropout_prob=config.hidden_dropout_prob,
        attention_probs_dropout_prob=config.attention_probs_dropout_prob,
        initializer_range=config.initializer_range,
        layer_norm_eps=config.layer_norm_eps,
        image_size=config.image_size,
        patch_size=config.patch_size,
        num_channels=config.num_channels,
        qkv_bias=config.qkv_bias,
        layerscale_value=config.layerscale_value,
        drop_path_rate=config.drop_path_rate,
        use_swiglu_ffn=config.ffn_type == "swiglu",
    )
    if use_registers_class:
        stock["num_register_tokens"] = config.num_register_tokens
    else:
        stock["use_mask_token"] = config.use_mask_token
    if not config.drop_path_uniform and config.drop_path_rate > 0:
        warnings.append("transformers applies one drop-path rate to every block; the linear ramp is lost.")
    for key in ("id2label", "label2id", *BACKBONE_KEYS):
        if getattr(config, key, None) is not None:
            stock[key] = getattr(config, key)
    return stock, warnings
