"""glibc malloc's defaults against `modeling_dinov2.hardware.reuse_freed_memory()`, side by side, for the tiny
preset's real pretraining pipeline (`bench_pretraining.py --child tiny <precision> pipeline`).

    python benchmarks/bench_allocator.py                  # 3 rounds of each, alternating
    python benchmarks/bench_allocator.py --rounds 5 --steps 40

The two settings alternate, one process per run, so a noisy (shared) host slows both alike; the table gives
each run, the medians and their ratio. Minor page faults per step are counted by the kernel
(getrusage), so they do not depend on the noise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def run(malloc: str, precision: str, steps: int, warmup: int) -> dict:
    command = [sys.executable, os.path.join(HERE, "bench_pretraining.py"), "--child", "tiny", precision, "pipeline",
               "--steps", str(steps), "--warmup", str(warmup)]
    output = subprocess.run(command, capture_output=True, text=True, check=True,
                            env={**os.environ, "DINOV2_BENCH_MALLOC": malloc}).stdout
    return json.loads(output.split("RESULT ", 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default=None,
                        help="default: bf16 where this machine computes it natively, else fp32")
    args = parser.parse_args()
    if args.precision is None:
        from modeling_dinov2.hardware import bf16_is_native

        args.precision = "bf16" if bf16_is_native("cpu") else "fp32"
    results = {"default": [], "reuse": []}
    for round_index in range(args.rounds):
        for malloc in results:
            print(f"round {round_index + 1}/{args.rounds}: {malloc} malloc...", file=sys.stderr, flush=True)
            results[malloc].append(run(malloc, args.precision, args.steps, args.warmup))
    print(f"\ntiny preset pipeline, {args.precision}, {args.steps} timed steps per run, {os.cpu_count()} cores\n")
    print("| malloc | s/step (each run) | median s/step | median images/s | minor page faults per step |")
    print("|---|---|---|---|---|")
    medians = {}
    for malloc, runs in results.items():
        seconds = [r["seconds_per_step"] for r in runs]
        medians[malloc] = statistics.median(seconds)
        faults = statistics.median(r["minor_page_faults_per_step"] for r in runs)
        print(f"| {malloc} | {', '.join(f'{x:.3f}' for x in seconds)} | {medians[malloc]:.3f} | "
              f"{runs[0]['batch'] / medians[malloc]:.0f} | {faults:.0f} |")
    print(f"\nreuse_freed_memory: {medians['default'] / medians['reuse']:.2f}x the images/s of glibc's defaults")


if __name__ == "__main__":
    main()
