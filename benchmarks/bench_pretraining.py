"""Training throughput and peak memory of DINOv2 pretraining on this machine, side by side.

    python benchmarks/bench_pretraining.py                      # tiny preset and ViT-S/14, fp32 and bf16
    python benchmarks/bench_pretraining.py --configs tiny --steps 20 --json out.json

Each (config, precision) runs in its own process, so peak RSS is that run's alone (it includes ~1 GB of
imported libraries, reported separately). A run is
`Dinov2PretrainingTrainer.train` on pre-made crops (forward of teacher and student, backward, per-module
clipping, AdamW over the DINOv2 parameter groups, EMA, centering); the first `--warmup` steps are not
timed. The multi-crop augmentation is timed separately (images/s in one process), since on a real run it
is spread over DataLoader workers.

- tiny: the `tiny` preset (ViT 96-wide, 4 blocks, patch 4): 2 x 28 px + 4 x 12 px crops, batch 64.
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
    "tiny": dict(preset="tiny", batch=64, label="tiny preset (2x28 + 4x12 px)"),
    "vits14": dict(preset="vit_small", batch=8, label="ViT-S/14 (2x224 + 8x98 px)"),
}


def run_one(config_name: str, precision: str, steps: int, warmup: int, threads: int) -> dict:
    """Runs inside the child process: build, train `warmup + steps` steps, report."""
    sys.path.insert(0, REPO)
    import torch

    torch.set_num_threads(threads)
    from torch.utils.data import Dataset
    from transformers import TrainerCallback

    from pretraining import cli
    from pretraining.collate import MultiCropCollator
    from pretraining.trainer import Dinov2PretrainingTrainer

    config = CONFIGS[config_name]
    _, model_args, data_args, training_args = cli.parse_args([
        "--preset", config["preset"], "--train_dir", REPO, "--output_dir", "/tmp/bench_pretraining",
        "--per_device_train_batch_size", str(config["batch"]), "--max_steps", str(warmup + steps),
        "--save_strategy", "no", "--logging_steps", "1000", "--disable_tqdm", "true", "--report_to", "none",
        "--bf16", str(precision == "bf16").lower(), "--warmup_steps", "1", "--dataloader_num_workers", "0",
    ])
    rss_start = _rss_mb()
    torch.manual_seed(0)
    model = cli.build_model(model_args, data_args)
    g, l, n_local = data_args.global_crops_size, data_args.local_crops_size, data_args.local_crops_number

    class Crops(Dataset):  # augmentation excluded: fixed random crops
        def __len__(self):
            return config["batch"] * (warmup + steps)

        def __getitem__(self, index):
            gen = torch.Generator().manual_seed(index)
            return {"global_crops": list(torch.randn(2, 3, g, g, generator=gen)),
                    "local_crops": list(torch.randn(n_local, 3, l, l, generator=gen)), "seed": index}

    step_times = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            step_times.append(time.perf_counter() - self.start)

    collator = MultiCropCollator(patch_size=model.config.backbone_config.patch_size, global_crops_size=g)
    trainer = Dinov2PretrainingTrainer(model=model, args=training_args, train_dataset=Crops(), data_collator=collator,
                                       callbacks=[Timer()])
    trainer.train()
    timed = step_times[warmup:]
    seconds = sum(timed) / len(timed)
    params = sum(p.numel() for p in model.student.parameters())
    return {
        "config": config_name, "label": config["label"], "precision": precision, "batch": config["batch"],
        "threads": threads, "seconds_per_step": seconds, "images_per_second": config["batch"] / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_before_model_mb": rss_start,
        "student_parameters_m": params / 1e6, "augment_images_per_second": _augmentation_speed(data_args, model_args),
    }


def _augmentation_speed(data_args, model_args, images: int = 16) -> float:
    import numpy as np
    from PIL import Image

    from pretraining import cli
    from pretraining.data import MultiCropDataset

    size = max(2 * data_args.global_crops_size, 64)
    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(images)]

    class Pictures:
        def __len__(self):
            return len(pictures)

        def __getitem__(self, index):
            return pictures[index], f"picture {index}"

    dataset = MultiCropDataset(Pictures(), cli.build_augmentation(data_args, model_args.patch_size))
    start = time.perf_counter()
    for i in range(images):
        dataset[i]
    return images / (time.perf_counter() - start)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 10 tiny, 3 ViT-S)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed first steps")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(run_one(args.child[0], args.child[1], args.steps, args.warmup, args.threads)))
        return

    results = []
    for name in args.configs:
        steps = args.steps or (10 if name == "tiny" else 3)
        for precision in args.precisions:
            print(f"running {name} {precision} ({steps} timed steps)...", file=sys.stderr, flush=True)
            command = [sys.executable, __file__, "--child", name, precision, "--steps", str(steps),
                       "--warmup", str(args.warmup), "--threads", str(args.threads)]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            results.append(json.loads(output.split("RESULT ", 1)[1]))
    load = os.getloadavg()[0]
    print(f"\nDINOv2 pretraining on this CPU ({os.cpu_count()} cores, {args.threads} torch threads, "
          f"load average {load:.1f} at the end)\n")
    print("| config | precision | batch | s/step | images/s | vs fp32 | peak RSS (MB) | peak - after imports (MB) "
          "| augmentation images/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        fp32 = next((x for x in results if x["config"] == r["config"] and x["precision"] == "fp32"), None)
        ratio = r["images_per_second"] / fp32["images_per_second"] if fp32 else float("nan")
        print(f"| {r['label']} | {r['precision']} | {r['batch']} | {r['seconds_per_step']:.3f} | "
              f"{r['images_per_second']:.2f} | {ratio:.2f}x | {r['peak_rss_mb']:.0f} | "
              f"{r['peak_rss_mb'] - r['rss_before_model_mb']:.0f} | {r['augment_images_per_second']:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
