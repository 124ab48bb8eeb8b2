"""Training throughput and peak memory of DINOv2 pretraining on this machine, side by side.

    python benchmarks/bench_pretraining.py                      # tiny preset and ViT-S/14, fp32 and bf16
    python benchmarks/bench_pretraining.py --configs tiny --steps 20 --json out.json

Each (config, precision, mode) runs in its own process, so peak RSS is that run's alone (it includes ~1 GB
of imported libraries, reported separately). Modes:

- ``pipeline``: what `dinov2-pretrain --preset NAME` does per step, end to end: real images (the
  Fashion-MNIST train split for `tiny`, 256-px photos made from scikit-image's for ViT-S/14) through the
  preset's dataset, augmentation and collator (DataLoader settings of the preset), then
  `Dinov2PretrainingTrainer` (teacher and student forward, backward, per-module clipping, AdamW over the
  DINOv2 parameter groups, EMA, centering, logging). images/s = timed steps x batch / wall time from the end
  of the warm-up steps to the end of the last step, so data loading counts.
- ``step``: the same Trainer on pre-made random crops: the model's share alone.

The augmentation alone is also timed in the parent (one process): the per-image torchvision
`MultiCropAugmentation` and, for small images, the `BatchedMultiCropAugmentation` the tiny preset uses.

- tiny: the `tiny` preset (its crops, batch and DataLoader settings); tiny_ffn4: the same with the x4 FFN it
  had before (the preset's FFN ratio is 1); tiny_heads8: the same with 8 heads of 16 instead of 2 of 64.
- vits14: the `vit_small` preset (ViT-S/14, 65536 prototypes, drop path 0.3): 2 x 224 + 8 x 98 crops, batch 8.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {
    "tiny": dict(preset="tiny", batch=None, label="tiny preset"),
    "tiny_ffn4": dict(preset="tiny", batch=None, label="tiny preset with the x4 FFN of before", args=["--mlp_ratio", "4"]),
    "tiny_heads8": dict(preset="tiny", batch=None, label="tiny preset with 8 heads of 16", args=["--num_attention_heads", "8"]),
    "vits14": dict(preset="vit_small", batch=8, label="ViT-S/14 (2x224 + 8x98 px)"),
}


def _small_images(config_name: str) -> bool:
    """Configs of the tiny preset train on 28-px Fashion-MNIST images."""
    return CONFIGS[config_name]["preset"] == "tiny"


def _parse(config: dict, precision: str, steps: int, warmup: int, workers: int | None):
    from pretraining import builders, cli

    argv = ["--preset", config["preset"], "--output_dir", "/tmp/bench_pretraining", "--max_steps", str(warmup + steps),
            "--save_strategy", "no", "--logging_steps", "1000", "--disable_tqdm", "true", "--report_to", "none",
            "--bf16", str(precision == "bf16").lower(), "--warmup_steps", "1", "--train_dir", REPO]
    if config["batch"]:
        argv += ["--per_device_train_batch_size", str(config["batch"])]
    argv += config.get("args", [])
    if workers is not None:
        argv += ["--dataloader_num_workers", str(workers)]
        if workers == 0:  # persistent workers need workers
            argv += ["--dataloader_persistent_workers", "false"]
    export_args, model_args, data_args, training_args = cli.parse_args(argv)
    data_args.train_dir = None  # the data is chosen per mode below
    return model_args, data_args, training_args


def _images(config_name: str, count: int):
    """Real images for the pipeline mode: Fashion-MNIST (tiny) or photos cut from scikit-image's (ViT-S)."""
    import datasets
    import numpy as np
    from PIL import Image

    if _small_images(config_name):
        from pretraining.fashion_mnist import FASHION_MNIST_DIR, load_fashion_mnist

        if FASHION_MNIST_DIR.exists():
            return load_fashion_mnist("train", limit=count), "Fashion-MNIST train"
        rng = np.random.default_rng(0)  # fallback: random 28-px grey images
        pictures = [Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)) for _ in range(count)]
        return datasets.Dataset.from_dict({"image": pictures}, features=datasets.Features({"image": datasets.Image()})), "random 28 px"
    from skimage import data as skdata

    rng = np.random.default_rng(0)
    sources = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket()]
    pictures = []
    for i in range(count):
        photo = sources[i % len(sources)]
        top, left = rng.integers(0, photo.shape[0] - 256), rng.integers(0, photo.shape[1] - 256)
        pictures.append(Image.fromarray(np.ascontiguousarray(photo[top:top + 256, left:left + 256])))
    return datasets.Dataset.from_dict({"image": pictures}, features=datasets.Features({"image": datasets.Image()})), "256-px photos"


def run_one(config_name: str, precision: str, mode: str, steps: int, warmup: int, threads: int,
            workers: int | None) -> dict:
    """Runs inside the child process: build, train `warmup + steps` steps, report. With the environment
    variable DINOV2_BENCH_MALLOC=reuse, `reuse_freed_memory()` first (`benchmarks/bench_allocator.py`)."""
    malloc = os.environ.get("DINOV2_BENCH_MALLOC", "default")
    if malloc == "reuse":
        from modeling_dinov2.hardware import reuse_freed_memory

        if not reuse_freed_memory():
            raise SystemExit("reuse_freed_memory() is not available here (Linux with glibc only).")
    import torch

    torch.set_num_threads(threads)
    from torch.utils.data import Dataset
    from transformers import TrainerCallback

    from pretraining import builders, cli
    from pretraining.collate import MultiCropCollator
    from pretraining.trainer import Dinov2PretrainingTrainer

    config = CONFIGS[config_name]
    model_args, data_args, training_args = _parse(config, precision, steps, warmup, workers)
    batch = training_args.per_device_train_batch_size
    rss_start = _rss_mb()
    torch.manual_seed(0)
    model = builders.build_model(model_args, data_args)
    patch = model.config.backbone_config.patch_size
    g, l, n_local = data_args.global_crops_size, data_args.local_crops_size, data_args.local_crops_number

    if mode == "pipeline":
        images, data_name = _images(config_name, batch * (warmup + steps))
        dataset, collator = builders.build_data(data_args, patch, training_args.seed, images=images)
    else:
        data_name = "pre-made random crops"

        class Crops(Dataset):  # augmentation excluded: fixed random crops
            def __len__(self):
                return batch * (warmup + steps)

            def __getitem__(self, index):
                gen = torch.Generator().manual_seed(index)
                return {"global_crops": list(torch.randn(2, 3, g, g, generator=gen)),
                        "local_crops": list(torch.randn(n_local, 3, l, l, generator=gen)), "seed": index}

        dataset, collator = Crops(), MultiCropCollator(patch_size=patch, global_crops_size=g)

    step_ends, step_faults = [], []

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            step_ends.append(time.perf_counter())
            step_faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)

    trainer = Dinov2PretrainingTrainer(model=model, args=training_args, train_dataset=dataset, data_collator=collator,
                                       callbacks=[Timer()])
    trainer.train()
    seconds = (step_ends[-1] - step_ends[warmup - 1]) / steps
    return {
        "malloc": malloc, "minor_page_faults_per_step": (step_faults[-1] - step_faults[warmup - 1]) / steps,
        "config": config_name, "label": config["label"], "precision": precision, "mode": mode, "data": data_name,
        "batch": batch, "crops": f"2x{g} + {n_local}x{l}", "threads": threads,
        "workers": training_args.dataloader_num_workers, "augmentation": type(collator.batch_transform).__name__
        if getattr(collator, "batch_transform", None) is not None else "per-image" if mode == "pipeline" else "none",
        "seconds_per_step": seconds, "images_per_second": batch / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_before_model_mb": rss_start,
        "student_parameters_m": sum(p.numel() for p in model.student.parameters()) / 1e6,
    }


def augmentation_speed(config_name: str, threads: int, images: int = 256) -> dict[str, float]:
    """images/s of the per-image and (tiny only) the batched augmentation of the preset, in this process."""
    import torch

    from pretraining import builders, cli
    from pretraining.batched_augmentations import BatchedMultiCropAugmentation

    torch.set_num_threads(threads)
    model_args, data_args, training_args = _parse(CONFIGS[config_name], "fp32", 1, 1, None)
    small = _small_images(config_name)
    dataset_images, _ = _images(config_name, images if small else 8)
    pictures = [row["image"].convert("RGB") for row in dataset_images]
    data_args.batched_augmentation = False
    per_image = builders.build_augmentation(data_args, model_args.patch_size)
    start = time.perf_counter()
    for picture in pictures:
        per_image(picture)
    result = {"per-image (torchvision v2)": len(pictures) / (time.perf_counter() - start)}
    if small:
        data_args.batched_augmentation = True
        batched: BatchedMultiCropAugmentation = builders.build_augmentation(data_args, model_args.patch_size)
        batch = torch.stack([torch.from_numpy(__import__("numpy").array(p)).permute(2, 0, 1) for p in pictures])
        batched(batch[:training_args.per_device_train_batch_size])  # warm-up
        start = time.perf_counter()
        for chunk in batch.split(training_args.per_device_train_batch_size):
            batched(chunk)
        result["batched (BatchedMultiCropAugmentation)"] = len(pictures) / (time.perf_counter() - start)
    return result


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--precisions", nargs="+", default=None, choices=["fp32", "bf16"],
                        help="default: fp32, and bf16 where this machine computes it natively")
    parser.add_argument("--modes", nargs="+", default=["pipeline", "step"], choices=["pipeline", "step"])
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 20 tiny, 3 ViT-S)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the preset's)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = run_one(*args.child, args.steps, args.warmup, args.threads, args.workers)
        print("RESULT " + json.dumps(result))
        return

    if args.precisions is None:
        from modeling_dinov2.hardware import benchmark_precisions

        args.precisions = benchmark_precisions()
    start_load = os.getloadavg()[0]
    results = []
    for name in args.configs:
        steps = args.steps or (20 if _small_images(name) else 3)
        for precision in args.precisions:
            for mode in args.modes:
                print(f"running {name} {precision} {mode} ({steps} timed steps)...", file=sys.stderr, flush=True)
                command = [sys.executable, __file__, "--child", name, precision, mode, "--steps", str(steps),
                           "--warmup", str(args.warmup), "--threads", str(args.threads)]
                if args.workers is not None:
                    command += ["--workers", str(args.workers)]
                output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
                results.append(json.loads(output.split("RESULT ", 1)[1]))
    augmentation = {name: augmentation_speed(name, args.threads) for name in args.configs}
    print(f"\nDINOv2 pretraining on this CPU ({os.cpu_count()} cores, {args.threads} torch threads, load average "
          f"{start_load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end)\n")
    print("| config | crops | batch | precision | mode | augmentation | workers | s/step | images/s | vs fp32 "
          "| peak RSS (MB) | peak - after imports (MB) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        fp32 = next((x for x in results if (x["config"], x["mode"], x["precision"]) == (r["config"], r["mode"], "fp32")), None)
        ratio = r["images_per_second"] / fp32["images_per_second"] if fp32 else float("nan")
        print(f"| {r['label']} | {r['crops']} | {r['batch']} | {r['precision']} | {r['mode']} ({r['data']}) | "
              f"{r['augmentation']} | {r['workers']} | {r['seconds_per_step']:.3f} | {r['images_per_second']:.1f} | "
              f"{ratio:.2f}x | {r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] - r['rss_before_model_mb']:.0f} |")
    print("\n| config | augmentation alone (1 process) | images/s |\n|---|---|---|")
    for name, speeds in augmentation.items():
        for kind, speed in speeds.items():
            print(f"| {CONFIGS[name]['label']} | {kind} | {speed:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": results, "augmentation": augmentation}, f, indent=2)


if __name__ == "__main__":
    main()
