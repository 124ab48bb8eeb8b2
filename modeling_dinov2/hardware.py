"""Which compute dtype is fast on this machine.

bf16 autocast pays only where the hardware multiplies bf16 natively: CUDA GPUs that support it, and CPUs with
AVX512-BF16 or AMX. Elsewhere PyTorch emulates it; on a 2-core AVX2 CPU a bf16 training step of the `tiny`
preset ran 11x slower than fp32 (`benchmarks/bench_pretraining.py`, see benchmarks/README.md).
"""

from __future__ import annotations

import torch


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 matrix instructions (AVX512-BF16 or AMX)."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        is_supported = getattr(torch.cpu, probe, None)
        if is_supported is not None and is_supported():
            return True
    return False


def bf16_is_native(device: str | torch.device | None = None) -> bool:
    """Whether bf16 autocast runs natively on `device` (default: CUDA when present, else the CPU)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(device).type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return cpu_supports_bf16()


def benchmark_precisions(device: str | torch.device | None = None) -> list[str]:
    """What the benchmarks time by default: fp32, and bf16 only where it is native (timing emulated bf16 on
    an AVX2 CPU takes so long that it stalls the benchmark)."""
    if bf16_is_native(device):
        return ["fp32", "bf16"]
    print("bf16 skipped: no native bf16 here (pass --precisions fp32 bf16 to time the emulation)")
    return ["fp32"]
