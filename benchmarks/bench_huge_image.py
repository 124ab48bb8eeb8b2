"""Peak memory and time of a short `tiny` pretraining run on a folder holding one huge image (issue 21, item 6).

    python benchmarks/bench_huge_image.py                     # one 12000 x 12000 PNG (144 Mpx) + 63 small ones
    python benchmarks/bench_huge_image.py --side 0            # the small images alone (the baseline)

Writes the folder once (``--folder``, reused if present), then runs, in a child process,

    python -m pretraining.cli --preset tiny --train_dir FOLDER --output_dir OUT --max_steps 30 \
        --report_to none --per_device_train_batch_size 16 --save_strategy no

(the preset's batched augmentation and image cache) and prints its training time (``train_runtime``), wall
time and peak RSS (``ru_maxrss`` of the child, which includes ~1 GB of imported libraries). The huge PNG is a
smooth colour pattern, so it is small on disk (2 MB) but decodes to 144 Mpx (576 MB as a PIL RGB image).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def write_folder(folder: Path, side: int, n_small: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n_small):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / f"small_{i:03d}.png")
    if side:
        ramp = np.linspace(0, 255, side, dtype=np.float32)
        pixels = np.empty((side, side, 3), np.uint8)
        pixels[..., 0] = ramp[None, :]
        pixels[..., 1] = ramp[:, None]
        pixels[..., 2] = 128
        Image.fromarray(pixels).save(folder / "huge.png", compress_level=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=12000, help="side of the huge square PNG (0: none)")
    parser.add_argument("--n-small", type=int, default=63)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--folder", type=Path, default=None, help="default: a folder under the temp dir")
    args = parser.parse_args()
    folder = args.folder or Path(tempfile.gettempdir()) / f"bench_huge_image_{args.side}_{args.n_small}"
    if not folder.is_dir():
        write_folder(folder, args.side, args.n_small)
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "pretraining.cli", "--preset", "tiny", "--train_dir", str(folder),
                   "--output_dir", out, "--max_steps", str(args.steps), "--report_to", "none",
                   "--per_device_train_batch_size", "16", "--save_strategy", "no"]
        env = dict(os.environ, PYTHONPATH=str(REPO))
        start, load = time.perf_counter(), os.getloadavg()[0]
        subprocess.run(command, check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        train_seconds = json.loads((Path(out) / "trainer_state.json").read_text())["log_history"][-1]["train_runtime"]
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"{folder.name}: {args.steps} steps in {train_seconds:.1f} s (process {seconds:.1f} s), "
          f"peak RSS {peak_mb:.0f} MB (load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end)")


if __name__ == "__main__":
    main()
