"""What each of DINOv2's training-efficiency features buys at the recipe's crops, side by side (one run).

    python benchmarks/bench_training_efficiency.py                    # ViT-S/14 and ViT-B/14 (batch 8), tiny preset
    python benchmarks/bench_training_efficiency.py --configs vits14 --steps 4 --json out.json

The paper credits its "2x faster, 3x less memory than iBOT" to an efficient implementation. The features, each
a switch of `dinov2-pretrain`:

- packed forward: all crops of a step through the student in one packed sequence (`--packed_forward`);
- memory-efficient attention: SDPA instead of eager attention (`--attn_implementation`);
- efficient stochastic depth: the residual computed only on the kept crops (`--efficient_drop_path`), at the
  recipe's drop path rate (0.3 for ViT-S/B);
- bf16 autocast where the hardware computes it natively (`--bf16`);
- activation checkpointing per block (`--gradient_checkpointing`): the memory-saving configuration;
- `torch.compile` of the whole model (`--torch_compile`), which fuses the many small ops around the GEMMs.

Rows: every feature of the paper on ("all on"), one row per feature turned off, "all on" plus checkpointing
(memory), plus compile, the fastest configuration on a CPU (per-size forwards and eager attention, which measured
faster than packing and SDPA's bf16 flash kernel on a CPU without AMX, plus compile), and all off (per-size
forwards, eager attention, Bernoulli drop path, fp32, no checkpointing, no compile). Every row runs
`Dinov2PretrainingTrainer` on the real data path (256-px photos cut from scikit-image's, the preset's per-image
augmentation and collator, 2 x 224 + 8 x 98 crops) in its own process, so its peak RSS is its own.

Columns: images/s (timed steps after the warm-up, data loading included), peak memory: on a CPU peak RSS and
peak RSS minus the RSS after the imports (the run's own memory), on a GPU the CUDA peak allocated, and utilisation = model FLOPs of one step (forward and backward of
the student, forward of the teacher; `torch.utils.flop_counter.FlopCounterMode`, no checkpoint recompute) per
second / the GEMM peak of this machine in the row's precision, measured in this run (square matmuls).
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

CONFIGS = {  # batch None: the preset's
    "vits14": dict(preset="vit_small", label="ViT-S/14", steps=3, batch=8),
    "vitb14": dict(preset="vit_base", label="ViT-B/14", steps=2, batch=8),
    "tiny": dict(preset="tiny", label="tiny preset", steps=30, batch=None),
}
FEATURES = ("packed", "sdpa", "efficient_drop_path", "bf16", "checkpointing", "compile")
ROWS = {  # changes from "all on" (every feature of the paper on; no checkpointing, no compile)
    "all on": dict(),
    "- packed forward": dict(packed=False),
    "- SDPA (eager attention)": dict(sdpa=False),
    "- efficient drop path (Bernoulli)": dict(efficient_drop_path=False),
    "- bf16 (fp32)": dict(bf16=False),
    "+ checkpointing (memory)": dict(checkpointing=True),
    "+ torch.compile": dict(compile=True),
    "speed on a CPU: per-size forward, eager attention, compile": dict(compile=True, sdpa=False, packed=False),
    "all off": dict(packed=False, sdpa=False, efficient_drop_path=False, bf16=False),
}


def features_of(row: str, bf16_available: bool) -> dict[str, bool]:
    features = {name: name not in ("checkpointing", "compile") for name in FEATURES}
    features.update(ROWS[row])
    features["bf16"] = features["bf16"] and bf16_available
    return features


def cli_arguments(features: dict[str, bool]) -> list[str]:
    return ["--packed_forward", str(features["packed"]).lower(),
            "--attn_implementation", "sdpa" if features["sdpa"] else "eager",
            "--efficient_drop_path", str(features["efficient_drop_path"]).lower(),
            "--bf16", str(features["bf16"]).lower(),
            "--gradient_checkpointing", str(features["checkpointing"]).lower(),
            "--torch_compile", str(features["compile"]).lower()]


def device_name() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def gemm_peak(dtype_name: str, size: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of the best of `repeats` (size x size) @ (size x size) products in `dtype_name` (on the GPU if
    there is one; 8192 wide there)."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    size = 8192 if device_name() == "cuda" else size
    a, b = (torch.randn(size, size, dtype=dtype, device=device_name()) for _ in range(2))
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        a @ b
        synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def run_row(config_name: str, features: dict[str, bool], steps: int, warmup: int, batch: int) -> dict:
    """Inside the child process: train `warmup + steps` steps with these features; time, memory and FLOPs."""
    from modeling_dinov2.hardware import reuse_freed_memory

    reuse_freed_memory()  # as dinov2-pretrain does
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import TrainerCallback

    from bench_pretraining import _images, _rss_mb
    from pretraining import builders, cli
    from pretraining.trainer import Dinov2PretrainingTrainer

    config = CONFIGS[config_name]
    argv = ["--preset", config["preset"], "--output_dir", "/tmp/bench_training_efficiency", "--overwrite_output_dir",
            "true", "--max_steps", str(warmup + steps), "--save_strategy", "no", "--logging_steps", "1000",
            "--disable_tqdm", "true", "--report_to", "none", "--warmup_steps", "1", "--train_dir", REPO,
            *cli_arguments(features)]
    if batch:
        argv += ["--per_device_train_batch_size", str(batch)]
    _, model_args, data_args, training_args = cli.parse_args(argv)
    batch = training_args.per_device_train_batch_size
    rss_after_imports = _rss_mb()
    torch.manual_seed(0)
    model = builders.build_model(model_args, data_args)
    # Fashion-MNIST for the tiny preset, 256-px photos for the ViTs (bench_pretraining's names)
    images, data_name = _images("tiny" if config_name == "tiny" else "vits14", batch * (warmup + steps))
    dataset, collator = builders.build_data(data_args, model.config.backbone_config.patch_size, training_args.seed,
                                       images=images)
    step_ends = []

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            synchronize()
            step_ends.append(time.perf_counter())

    trainer = Dinov2PretrainingTrainer(model=model, args=training_args, train_dataset=dataset, data_collator=collator,
                                       callbacks=[Timer()])
    trainer.train()
    seconds = (step_ends[-1] - step_ends[warmup - 1]) / steps
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device_name() == "cuda":  # the GPU's memory is what limits a GPU run; no import share to subtract
        peak_rss, rss_after_imports = torch.cuda.max_memory_allocated() / 2**20, 0.0

    # model FLOPs of one step, without checkpoint recompute
    model.activation_checkpointing_disable()
    inputs = collator([dataset[i] for i in range(batch)])
    inputs = {k: v for k, v in inputs.items() if k != "skipped_images"}
    inputs = {k: v.to(device_name()) if torch.is_tensor(v) else v for k, v in inputs.items()}
    counter = FlopCounterMode(display=False)
    autocast = torch.autocast(device_name(), dtype=torch.bfloat16, enabled=features["bf16"])
    with counter:
        with autocast:
            loss = model(**inputs, teacher_temp=0.04).loss
        loss.backward()
    return {"config": config_name, "label": config["label"], "features": features, "batch": batch,
            "crops": f"2x{data_args.global_crops_size} + {data_args.local_crops_number}x{data_args.local_crops_size}",
            "data": data_name, "seconds_per_step": seconds, "images_per_second": batch / seconds,
            "peak_rss_mb": peak_rss, "rss_after_imports_mb": rss_after_imports, "flops_per_step": counter.get_total_flops()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--batch", type=int, default=None,
                        help="images per step (the global batch: one process); default 8 for ViT-S/B, the tiny preset's")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 3 ViT-S, 2 ViT-B)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps (compile rows: 2 more)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        config_name, features = json.loads(args.child)
        print("RESULT " + json.dumps(run_row(config_name, features, args.steps, args.warmup, args.batch)))
        return

    from modeling_dinov2.hardware import bf16_is_native

    bf16_available = bf16_is_native()
    load_start = os.getloadavg()[0]
    peaks = {name: gemm_peak(name) for name in ("fp32", "bf16")}
    results = []
    for config_name in args.configs:
        steps = args.steps or CONFIGS[config_name]["steps"]
        for row in args.rows:
            features = features_of(row, bf16_available)
            print(f"running {config_name}: {row} ({steps} timed steps)...", file=sys.stderr, flush=True)
            # torch.compile compiles again when the number of masked patches first changes, and once more for
            # other guards; its rows get 2 more untimed steps so that no compilation falls into the timed ones
            warmup = args.warmup + 2 if features["compile"] else args.warmup
            command = [sys.executable, __file__, "--child", json.dumps([config_name, features]), "--steps", str(steps),
                       "--warmup", str(warmup)]
            batch = args.batch or CONFIGS[config_name]["batch"]
            if batch:
                command += ["--batch", str(batch)]
            output = subprocess.run(command, capture_output=True, text=True)
            if output.returncode != 0:
                raise SystemExit(f"{config_name} {row} failed:\n{output.stderr[-3000:]}")
            result = json.loads(output.stdout.split("RESULT ", 1)[1])
            result["row"] = row
            results.append(result)
    for name in peaks:  # the best of before and after the runs
        peaks[name] = max(peaks[name], gemm_peak(name))

    import torch

    where = f"GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    memory = "CUDA peak allocated" if torch.cuda.is_available() else "peak RSS"
    print(f"\nDINOv2 training efficiency on this {where} (load average {load_start:.1f} at the "
          f"start, {os.getloadavg()[0]:.1f} at the end; GEMM peak fp32 {peaks['fp32'] / 1e12:.2f} TFLOP/s, bf16 "
          f"{peaks['bf16'] / 1e12:.2f} TFLOP/s{'' if bf16_available else ' (emulated: bf16 rows run in fp32)'})\n")
    print("| model | row | packed | SDPA | eff. drop path | bf16 | checkpointing | compile | s/step | images/s | vs all off "
          f"| {memory} (MB) | vs all off | peak - imports (MB) | GFLOP/step | utilisation |")
    print("|" + "---|" * 16)
    for r in results:
        off = next((x for x in results if x["config"] == r["config"] and x["row"] == "all off"), None)
        f = r["features"]
        peak = peaks["bf16" if f["bf16"] else "fp32"]
        utilisation = r["flops_per_step"] / r["seconds_per_step"] / peak
        marks = " | ".join("on" if f[name] else "off" for name in FEATURES)
        speed = f"{r['images_per_second'] / off['images_per_second']:.2f}x" if off else "-"
        memory = f"{r['peak_rss_mb'] / off['peak_rss_mb']:.2f}" if off else "-"
        print(f"| {r['label']} | {r['row']} | {marks} | {r['seconds_per_step']:.2f} | {r['images_per_second']:.2f} | "
              f"{speed} | {r['peak_rss_mb']:.0f} | {memory} | {r['peak_rss_mb'] - r['rss_after_imports_mb']:.0f} | "
              f"{r['flops_per_step'] / 1e9:.0f} | {100 * utilisation:.0f}% |")
    for name in dict.fromkeys(r["config"] for r in results):
        r = next(x for x in results if x["config"] == name)
        print(f"{r['label']}: crops {r['crops']}, batch {r['batch']}, data: {r['data']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gemm_peak_flops": peaks, "runs": results}, f, indent=2)


if __name__ == "__main__":
    main()
