"""Inference throughput: modeling_dinov2 vs stock transformers (and timm when installed), same process.

ViT-S/14 with a 518-px position table at 224-px input (so the table is interpolated, as in real use), fp32
and bf16 autocast. Reports images/s (median over interleaved rounds, so drift hits every model alike), the
ratio to transformers' (eager) `Dinov2Model` at the same precision, and the fraction of this machine's matmul peak
(the best of a 4096^3 and a ViT-S-shaped GEMM, timed in the same run). `--compile` adds torch.compile (inductor, with weight freezing)
versions of this model and of transformers'.

    python benchmarks/bench_inference.py --batch-size 32 --rounds 5
    python benchmarks/bench_inference.py --compile
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch
import transformers

from modeling_dinov2 import Dinov2Config, Dinov2Model
from modeling_dinov2.hardware import benchmark_precisions


def matmul_peak_tflops(dtype: torch.dtype, repeats: int = 3) -> float:
    """The machine's matmul peak for `dtype`: the best TFLOP/s over `repeats` trials of a 4096^3 GEMM and of a
    ViT-S-shaped one ((8192 x 384) @ (384 x 1536), as `F.linear`), so a transient slowdown or one slow GEMM
    kernel does not understate it."""
    shapes = [(4096, 4096, 4096), (8192, 384, 1536)]  # (m, k, n)
    best = 0.0
    for m, k, n in shapes:
        a, weight = torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
        iters = max(2, int(4 * 4096**3 / (m * k * n)))
        torch.nn.functional.linear(a, weight)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(iters):
                torch.nn.functional.linear(a, weight)
            best = max(best, 2 * m * k * n * iters / (time.perf_counter() - start) / 1e12)
    return best


def vit_flops_per_image(config: Dinov2Config, image_size: int) -> float:
    """2 x multiply-adds of the blocks (linear layers + attention) and the patch embedding."""
    patches = (image_size // config.patch_size) ** 2
    tokens = patches + 1 + config.num_register_tokens
    dim, ffn = config.hidden_size, config.ffn_hidden_size
    ffn_in = 2 * ffn if config.ffn_type == "swiglu" else ffn
    linear = tokens * (4 * dim * dim + dim * ffn_in + ffn * dim)
    attention = 2 * tokens * tokens * dim
    patch = patches * config.num_channels * config.patch_size**2 * dim
    return 2 * (config.num_hidden_layers * (linear + attention) + patch)


def build_models(config: Dinov2Config, image_size: int, compile_models: bool) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    ours = Dinov2Model(config).eval()
    stock = transformers.Dinov2Model(transformers.Dinov2Config(
        hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, image_size=config.image_size, patch_size=config.patch_size,
        use_swiglu_ffn=config.ffn_type == "swiglu",
    )).eval()
    models = {"modeling_dinov2": ours, "transformers": stock}
    try:
        import timm

        arch = {384: "small", 768: "base", 1024: "large", 1536: "giant"}[config.hidden_size]
        models["timm"] = timm.create_model(f"vit_{arch}_patch14_dinov2", pretrained=False, img_size=image_size,
                                           num_classes=0).eval()
    except Exception as error:  # timm is optional
        print(f"(timm skipped: {error})")
    if compile_models:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # constant-fold and prepack the (frozen) weights for inference
        models["modeling_dinov2 compiled"] = torch.compile(ours)
        models["transformers compiled"] = torch.compile(stock)
    return models


def time_batch(model, pixel_values: torch.Tensor, bf16: bool) -> float:
    context = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    with torch.inference_mode(), context:
        start = time.perf_counter()
        model(pixel_values)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5, help="timed batches per model and precision")
    parser.add_argument("--arch", default="vit_small")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd models")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--precisions", nargs="+", default=None, choices=["fp32", "bf16"],
                        help="default: fp32, and bf16 where this machine computes it natively")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    precisions = args.precisions or benchmark_precisions("cpu")

    # size-based interpolation and LayerScale 1.0, as stock transformers, so both do the same arithmetic
    config = Dinov2Config.from_preset(args.arch, interpolate_offset=0.0, layerscale_value=1.0)
    models = build_models(config, args.image_size, args.compile)
    pixel_values = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    flops = vit_flops_per_image(config, args.image_size)
    peaks = {name == "bf16": matmul_peak_tflops(torch.bfloat16 if name == "bf16" else torch.float32)
             for name in ("fp32", "bf16") if name in precisions}  # {bf16?: TFLOP/s}
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads; "
          f"{args.arch} at {args.image_size}px, batch {args.batch_size}, {flops / 1e9:.2f} GFLOP/image")
    print("matmul peak (best GEMM): " + ", ".join(f"{'bf16' if bf16 else 'fp32'} {peak:.3f} TFLOP/s"
                                                  for bf16, peak in peaks.items()))
    print(f"{'model':<26}{'precision':<11}{'images/s':>10}{'vs transformers':>17}{'% of matmul peak':>18}")
    for bf16 in peaks:
        for model in models.values():  # warm-up: position-table caches, compilation
            time_batch(model, pixel_values, bf16)
        seconds = {name: [] for name in models}
        for _ in range(args.rounds):  # interleaved, so load changes on the machine hit all models alike
            for name, model in models.items():
                seconds[name].append(time_batch(model, pixel_values, bf16))
        rates = {name: args.batch_size / statistics.median(s) for name, s in seconds.items()}
        for name, rate in rates.items():
            print(f"{name:<26}{'bf16' if bf16 else 'fp32':<11}{rate:>10.1f}{rate / rates['transformers']:>16.2f}x"
                  f"{100 * rate * flops / (peaks[bf16] * 1e12):>17.1f}%")


if __name__ == "__main__":
    main()
