"""FSDP2 for DINOv2 pretraining: the plugin a launch asks for, FSDP on CPU ranks, and whole state dicts.

A run is sharded when it is launched with the Trainer's flags (`--fsdp true --fsdp_config '{...}'`) or with an
accelerate FSDP config (`accelerate launch --config_file fsdp.yaml`). Both build accelerate's FSDP plugin;
accelerate 1.x then enters FSDP mode only on accelerator devices, so on CPU gloo ranks (a CPU cluster, this
project's tests) it would run plain DDP and exit 0 with nothing sharded. torch's `fully_shard` runs on CPU with
gloo, so `enable_fsdp_on_cpu` switches accelerate's state to FSDP there; on GPUs accelerate does it itself.
Student and teacher get the same wrap units (`Dinov2ForSelfDistillation._no_split_modules`), so their local
shards line up and the EMA runs shard by shard. `unwrap` finds the model inside the DDP / FSDP1 / compile
wrappers.
"""

from __future__ import annotations

import os

import torch
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

SHARDED_STATE_DICT = "SHARDED_STATE_DICT"


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP / FSDP(1) / compile wrappers (FSDP2 shards in place: the model itself)."""
    while hasattr(model, "module"):
        model = model.module
    return getattr(model, "_orig_mod", model)


def requested_fsdp_plugin(args) -> FullyShardedDataParallelPlugin | None:
    """The FSDP plugin the launch asks for: the Trainer's `--fsdp` flags, else an accelerate FSDP config (which
    `accelerate launch` passes as `ACCELERATE_USE_FSDP` / `FSDP_*` environment variables), else None."""
    if args.fsdp_plugin_args is not None:
        return FullyShardedDataParallelPlugin(**args.fsdp_plugin_args)
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return FullyShardedDataParallelPlugin()  # reads the FSDP_* variables
    return None


def enable_fsdp_on_cpu(accelerator, plugin: FullyShardedDataParallelPlugin) -> None:
    """Put an accelerator that set up CPU DDP (gloo) into FSDP2 mode with `plugin`.

    Mixed precision: with bf16, parameters are all-gathered and computed in bf16 and gradients reduced in fp32
    (DINOv3's policy; the original DINOv2 reduced the backbones in fp16), unless the plugin sets its own policy.
    """
    if plugin.fsdp_version != 2:
        raise ValueError("FSDP on CPU ranks needs FSDP2 (torch's fully_shard): set fsdp_config version 2 "
                         f"(got version {plugin.fsdp_version}).")
    state = accelerator.state
    if state.mixed_precision == "bf16" and plugin.mixed_precision_policy is None:
        from torch.distributed.fsdp import MixedPrecisionPolicy

        plugin.mixed_precision_policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    elif state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin


def use_requested_fsdp(accelerator, args) -> bool:
    """Make the accelerator shard when the launch asked for FSDP; True if it does. A launch that asked for FSDP
    but would run unsharded (one process, or a backend accelerate does not shard on) is refused."""
    plugin = requested_fsdp_plugin(args)
    if plugin is None:
        return False
    if getattr(accelerator.state, "fsdp_plugin", None) is not None:
        return True
    if accelerator.distributed_type == DistributedType.MULTI_CPU:
        enable_fsdp_on_cpu(accelerator, plugin)
        return True
    if accelerator.num_processes == 1:
        raise ValueError("FSDP shards the model over several processes, but this is a single process: launch N "
                         "with `torchrun --nproc_per_node N -m pretraining.cli ... --fsdp true` or `accelerate launch "
                         "--config_file pretraining/accelerate_fsdp.yaml --num_processes N -m pretraining.cli ...`.")
    raise ValueError(f"FSDP was requested, but accelerate set up {accelerator.distributed_type.value} training, "
                     "which would not shard anything; check the launch configuration.")


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole (unsharded) state dict of an FSDP2 model, in fp32 on the CPU of the main process (empty on the
    others). Every rank must call it: the shards are all-gathered."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return {key: value.clone() for key, value in get_model_state_dict(model, options=options).items()}
