"""The bf16-or-fp32 choice: native bf16 only (AVX512-BF16 / AMX CPUs, CUDA), since emulated bf16 on an AVX2 CPU
is far slower than fp32; the tiny preset and the demo follow it, and asking for bf16 without it warns. And the
malloc setting the entry points apply (`reuse_freed_memory`)."""

import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from conftest import REPO_ROOT
from modeling_dinov2 import hardware
from pretraining.presets import preset
from pretraining.trainer import Dinov2PretrainingArguments


@pytest.fixture(params=[(False, False), (True, False), (False, True)], ids=["avx2", "avx512_bf16", "amx"])
def cpu(request, monkeypatch):
    """A CPU with (avx512_bf16, amx) as given, and no CUDA."""
    avx512_bf16, amx = request.param
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return avx512_bf16 or amx


def test_bf16_is_native_only_with_bf16_instructions(cpu):
    assert hardware.cpu_supports_bf16() is cpu
    assert hardware.bf16_is_native() is cpu
    assert hardware.bf16_is_native("cpu") is cpu
    assert hardware.benchmark_precisions() == (["fp32", "bf16"] if cpu else ["fp32"])


def test_older_torch_without_the_probes_means_no_native_bf16(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert hardware.cpu_supports_bf16() is False


def test_cuda_device_asks_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert hardware.bf16_is_native() is True and hardware.bf16_is_native("cuda:0") is True
    assert hardware.bf16_is_native("cpu") is False


def test_tiny_preset_uses_bf16_exactly_when_native(cpu):
    assert preset("tiny")["training"]["bf16"] is cpu
    assert "bf16" not in preset("vit_small")["training"]  # the GPU recipes leave the choice to --bf16


def test_bf16_on_a_cpu_without_bf16_instructions_warns(cpu, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        args = Dinov2PretrainingArguments(output_dir=str(tmp_path), bf16=True, report_to="none")
    emulated = [w for w in caught if "emulates bf16" in str(w.message)]
    assert args.use_cpu and args.bf16
    assert len(emulated) == (0 if cpu else 1)
    if emulated:
        assert "--bf16 false" in str(emulated[0].message)


def test_examples_autocast_warns_only_where_bf16_is_emulated(cpu):
    from evaluation.features import autocast

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with autocast("cpu", bf16=True):
            assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
        with autocast("cpu", bf16=False):
            assert not torch.is_autocast_enabled("cpu")
    assert len([w for w in caught if "emulated" in str(w.message)]) == (0 if cpu else 1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_reuse_freed_memory_stops_page_faulting_fresh_tensors():
    """Activations are allocated in bursts and freed together (a step's forward, then its backward). Under glibc's
    defaults the freed top of the heap beyond the trim threshold can go back to the OS (whether it does depends
    on the heap's layout), and the next burst page-faults every page in again; after reuse_freed_memory() the
    freed blocks are always kept. Counted by the kernel, in fresh processes."""
    code = textwrap.dedent("""
        import resource, sys, torch
        from modeling_dinov2.hardware import reuse_freed_memory
        if sys.argv[1] == "reuse":
            assert reuse_freed_memory()
        def burst():
            alive = [torch.ones(1 << 20) for _ in range(8)]  # 8 x 4 MiB written, alive at once, then freed
            del alive
        for _ in range(3):
            burst()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(20):
            burst()
        print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """)
    faults = {mode: int(subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, check=True,
                                       cwd=REPO_ROOT).stdout) for mode in ("default", "reuse")}
    pages_written = 20 * 8 * 1024  # 4-KiB pages
    assert faults["reuse"] < pages_written / 100
    assert faults["default"] >= faults["reuse"]  # defaults: 163,200 of the 163,840 in one process here, 1,024 in another
