"""Inference throughput: modeling_dinov2 vs stock transformers (and timm when installed), same process.

ViT-S/14 with a 518-px position table at 224 px input (so the table is interpolated, as in real use),
fp32 and bf16 autocast. Reports images/s, the ratio to transformers' `Dinov2Model`, and the fraction of
this machine's bf16 / fp32 matmul peak (a large GEMM timed in the same run).

    python benchmarks/bench_inference.py --batch-size 32 --iters 5
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import torch
import transformers

from modeling_dinov2 import Dinov2Config, Dinov2Model


def matmul_peak_tflops(dtype: torch.dtype, size: int = 4096, iters: int = 5) -> float:
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    return 2 * size**3 * iters / (time.perf_counter() - start) / 1e12


def vit_flops_per_image(config: Dinov2Config, image_size: int) -> float:
    """Multiply-adds x 2 of the transformer blocks (linear layers + attention), patch embedding included."""
    tokens = (image_size // config.patch_size) ** 2 + 1 + config.num_register_tokens
    dim, ffn = config.hidden_size, config.ffn_hidden_size
    ffn_in = 2 * ffn if config.ffn_type == "swiglu" else ffn
    linear = tokens * (4 * dim * dim + dim * ffn_in + ffn * dim)
    attention = 2 * tokens * tokens * dim
    patch = (tokens - 1 - config.num_register_tokens) * 3 * config.patch_size**2 * dim
    return 2 * (config.num_hidden_layers * (linear + attention) + patch)


def images_per_second(model, pixel_values: torch.Tensor, bf16: bool, iters: int) -> float:
    context = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    with torch.inference_mode(), context:
        model(pixel_values)  # warm-up (and position-table cache)
        start = time.perf_counter()
        for _ in range(iters):
            model(pixel_values)
        elapsed = time.perf_counter() - start
    return pixel_values.shape[0] * iters / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--arch", default="vit_small")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    config = Dinov2Config.from_preset(args.arch, interpolate_offset=0.0, layerscale_value=1.0)
    ours = Dinov2Model(config).eval()
    stock_config = transformers.Dinov2Config(
        hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, image_size=config.image_size, patch_size=config.patch_size,
        use_swiglu_ffn=config.ffn_type == "swiglu",
    )
    stock = transformers.Dinov2Model(stock_config).eval()
    models = {"modeling_dinov2": ours, "transformers": stock}
    try:
        import timm

        models["timm"] = timm.create_model(
            f"{args.arch}_patch14_dinov2", pretrained=False, img_size=args.image_size, num_classes=0
        ).eval()
    except Exception as error:  # timm is optional
        print(f"(timm skipped: {error})")

    pixel_values = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    flops = vit_flops_per_image(config, args.image_size)
    peaks = {False: matmul_peak_tflops(torch.float32), True: matmul_peak_tflops(torch.bfloat16)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.arch} at {args.image_size}px, "
          f"batch {args.batch_size}, {flops / 1e9:.2f} GFLOP/image")
    print(f"matmul peak: fp32 {peaks[False]:.3f} TFLOP/s, bf16 {peaks[True]:.3f} TFLOP/s")
    print(f"{'model':<18}{'precision':<11}{'images/s':>10}{'vs transformers':>17}{'% of matmul peak':>18}")
    for bf16 in (False, True):
        results = {name: images_per_second(model, pixel_values, bf16, args.iters) for name, model in models.items()}
        for name, ips in results.items():
            peak_fraction = ips * flops / (peaks[bf16] * 1e12)
            print(f"{name:<18}{'bf16' if bf16 else 'fp32':<11}{ips:>10.1f}{ips / results['transformers']:>16.2f}x"
                  f"{100 * peak_fraction:>17.1f}%")


if __name__ == "__main__":
    main()
