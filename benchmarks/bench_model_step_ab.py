"""One model step (teacher forward, student forward and backward, losses) under two settings, interleaved
step by step in one process, so a noisy shared machine slows both alike; prints the ratio of the medians.

    python benchmarks/bench_model_step_ab.py --preset tiny --compare packed     # packed vs per-size forward
    python benchmarks/bench_model_step_ab.py --preset tiny --compare compile    # torch.compile vs eager
    python benchmarks/bench_model_step_ab.py --preset vit_small --batch 8 --compare packed --rounds 8

The tiny preset steps on real crops (Fashion-MNIST through its batched augmentation); the ViT presets on random
crops of the recipe's sizes (2 x 224 + 8 x 98) with ~15% of the global-crop patches masked. bf16 autocast where
the machine computes it natively (`--precision` to force one).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=["tiny", "vit_small", "vit_base"])
    parser.add_argument("--compare", default="packed", choices=["packed", "compile"])
    parser.add_argument("--batch", type=int, default=None, help="images per step (default: the preset's)")
    parser.add_argument("--rounds", type=int, default=40, help="steps per setting, interleaved")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default=None)
    args = parser.parse_args()

    import torch

    from modeling_dinov2.hardware import bf16_is_native, reuse_freed_memory
    from pretraining import builders, cli

    reuse_freed_memory()  # as dinov2-pretrain does
    bf16 = bf16_is_native() if args.precision is None else args.precision == "bf16"
    argv = ["--preset", args.preset, "--output_dir", "/tmp/bench_model_step_ab", "--max_train_samples", "8192"]
    if args.preset != "tiny":
        argv += ["--train_dir", REPO]  # not read: the ViT presets step on random crops
    _, model_args, data_args, training_args = cli.parse_args(argv)
    batch = args.batch or training_args.per_device_train_batch_size
    torch.manual_seed(0)
    model = builders.build_model(model_args, data_args).train()
    keys = ("global_crops", "local_crops", "masks", "mask_indices", "mask_weights")
    if args.preset == "tiny":
        dataset, collator = builders.build_data(data_args, model_args.patch_size, 0)
        batches = [{k: v for k, v in collator([dataset[i] for i in range(b * batch, (b + 1) * batch)]).items() if k in keys}
                   for b in range(min(8, len(dataset) // batch))]
    else:
        g, l, n_local = data_args.global_crops_size, data_args.local_crops_size, data_args.local_crops_number
        patches = (g // model_args.patch_size) ** 2
        generator = torch.Generator().manual_seed(0)
        batches = [dict(global_crops=torch.randn(2 * batch, 3, g, g, generator=generator),
                        local_crops=torch.randn(n_local * batch, 3, l, l, generator=generator),
                        masks=torch.rand(2 * batch, patches, generator=generator) < 0.15) for _ in range(2)]

    settings = {"on": model, "off": model}
    if args.compare == "compile":
        settings = {"compiled": torch.compile(model), "eager": model}
    backbone_config = model.student.backbone.config

    def step(name: str, index: int) -> float:
        if args.compare == "packed":
            backbone_config.packed_forward = name == "on"
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = settings[name](**batches[index % len(batches)], teacher_temp=0.04).loss
        loss.backward()
        return time.perf_counter() - start

    start = time.perf_counter()
    for index in range(3):  # warm-up (and compilation: once more when the masked-patch count first changes)
        for name in settings:
            step(name, index)
    warmup = time.perf_counter() - start
    times = {name: [] for name in settings}
    for index in range(args.rounds):
        for name in settings:
            times[name].append(step(name, index))
    (first, a), (second, b) = ((name, statistics.median(values)) for name, values in times.items())
    label = {"packed": "packed forward", "compile": "torch.compile"}[args.compare]
    print(f"{args.preset}, batch {batch}, {'bf16' if bf16 else 'fp32'}: {label} {first} {1000 * a:.1f} ms, {second} "
          f"{1000 * b:.1f} ms per model step (median of {args.rounds}); {first} is {b / a:.3f}x as fast; warm-up "
          f"{warmup:.0f} s; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
