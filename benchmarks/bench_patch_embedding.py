"""The patch embedding as the checkpoints' stride-14 convolution vs the same map as one GEMM on flattened
patches (`patches (B, N, C*p*p) @ W.view(D, C*p*p)^T + b`), forward and weight gradient, interleaved:

    python benchmarks/bench_patch_embedding.py

Shapes are one ViT-S/14 student step's (16 global 224-px and 64 local 98-px crops of a batch of 8) and one
`tiny`-preset step's crops. The decision it informs: whether the GEMM form is worth a second code path
(figures and the answer in `docs/results.md`).
"""

from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F

PATCH = 14
SHAPES = {"ViT-S/14 global crops": ((16, 3, 224, 224), 384), "ViT-S/14 local crops": ((64, 3, 98, 98), 384),
          "tiny crops": ((128, 3, 28, 28), 64)}


def convolution(pixels, weight, bias):
    return F.conv2d(pixels, weight, bias, stride=PATCH).flatten(2).transpose(1, 2)


def one_gemm(pixels, weight, bias):
    b, c, h, w = pixels.shape
    patches = pixels.reshape(b, c, h // PATCH, PATCH, w // PATCH, PATCH).permute(0, 2, 4, 1, 3, 5)
    return F.linear(patches.reshape(b, -1, c * PATCH * PATCH), weight.flatten(1), bias)


def main(rounds: int = 20, warmup: int = 3) -> None:
    print(f"load average {os.getloadavg()[0]:.2f}, {torch.get_num_threads()} threads")
    print("| crops | precision | convolution (ms) | one GEMM (ms) | convolution / GEMM |\n|---|---|---|---|---|")
    for name, (shape, width) in SHAPES.items():
        pixels = torch.randn(shape)
        weight = torch.randn(width, shape[1], PATCH, PATCH, requires_grad=True)
        bias = torch.randn(width, requires_grad=True)
        for bf16 in (False, True):
            times = {convolution: [], one_gemm: []}
            for step in range(warmup + rounds):
                for fn in times:  # interleaved: the host's noise hits both alike
                    start = time.perf_counter()
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                        out = fn(pixels, weight, bias)
                    out.float().sum().backward()
                    if step >= warmup:
                        times[fn].append(time.perf_counter() - start)
            conv_ms, gemm_ms = (1000 * sorted(t)[len(t) // 2] for t in times.values())
            print(f"| {name} {shape} | {'bf16' if bf16 else 'fp32'} | {conv_ms:.2f} | {gemm_ms:.2f} | {conv_ms / gemm_ms:.2f} |")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
