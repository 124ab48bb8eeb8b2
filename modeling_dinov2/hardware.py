"""Which compute dtype is fast on this machine, and a C-allocator setting that small-tensor CPU training needs.

bf16 autocast pays only where the hardware multiplies bf16 natively: CUDA GPUs that support it, and CPUs with
AVX512-BF16 or AMX. Elsewhere PyTorch emulates it; on a 2-core AVX2 CPU a bf16 training step of the `tiny`
preset ran 11x slower than fp32 (`benchmarks/bench_pretraining.py`, see benchmarks/README.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import torch

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 matrix instructions (AVX512-BF16 or AMX)."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        is_supported = getattr(torch.cpu, probe, None)
        if is_supported is not None and is_supported():
            return True
    return False


def default_device() -> str:
    """"cuda" when torch sees a GPU, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def bf16_is_native(device: str | torch.device | None = None) -> bool:
    """Whether bf16 autocast runs natively on `device` (default: `default_device()`)."""
    if device is None:
        device = default_device()
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


def reuse_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Make glibc's malloc keep freed blocks for reuse instead of returning them to the OS; True if applied.

    By default glibc serves large allocations (from 128 KiB, rising with use) with mmap and gives them back
    on free, and trims the heap top beyond 128 KiB; PyTorch's CPU allocator is plain malloc, so every fresh
    activation of a few MiB is then page-faulted in again. A `tiny` pretraining step took ~7,600 minor page
    faults this way and ~1,100 with this setting: 1.4x the images/s on a 2-core VM
    (`benchmarks/bench_allocator.py`). Allocations below `mmap_threshold` (glibc's maximum: 32 MiB) come
    from the heap, and up to `trim_threshold` bytes of freed heap are kept. It affects the whole process,
    so only entry points call it (`dinov2-pretrain`, `dinov2-demo`). A no-op off Linux/glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries without mallopt
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
