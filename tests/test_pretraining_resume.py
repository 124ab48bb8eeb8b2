"""SIGKILL + resume reproduces an uninterrupted run: same student, teacher and centers within 1e-6 (fp32, CPU).

The run uses gradient accumulation and drop path 0.2 (the efficient subset drop path draws from the global
RNG, restored from the checkpoint), and is killed mid-way through its second epoch, so the resume has to
restore the data order, the per-sample augmentation and mask seeds, the RNG, the optimizer, the schedules
and the centers. A half-written newer checkpoint is left behind and must be ignored.
"""

import os
import signal
import subprocess
import sys
import time

import torch
from transformers import set_seed

from conftest import REPO_ROOT, TESTS_DIR
from ddp_pretraining_helper import tiny_model

HELPER = str(TESTS_DIR / "ddp_pretraining_helper.py")
# 24 images, batch 2 x 2 accumulation: 6 optimizer steps per epoch; 9 steps in all; killed after step 7
RUN = ["--batch_size", "2", "--grad_accum", "2", "--num_images", "24", "--max_steps", "9", "--drop_path", "0.2"]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _run(args, timeout=300):
    result = subprocess.run([sys.executable, HELPER, *args], cwd=REPO_ROOT, env=_env(), capture_output=True,
                            text=True, timeout=timeout)  # a single process: killed on timeout
    assert result.returncode == 0, result.stderr[-3000:]


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _run(["--output_dir", str(straight), *RUN])

    process = subprocess.Popen(
        [sys.executable, HELPER, "--output_dir", str(killed), *RUN, "--save_steps", "7", "--pause_after_save", "7"],
        cwd=REPO_ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.time() + 300
        checkpoint = killed / "checkpoint-7"
        while not (checkpoint / "pretraining_state.json").exists():
            assert process.poll() is None, f"the run ended before checkpoint-7: {process.stdout.read()[-3000:]}"
            assert time.time() < deadline, "checkpoint-7 did not appear"
            time.sleep(0.2)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "result_rank0.pt").exists()  # it really died mid-run

    # a crash while saving leaves an incomplete folder: resuming must skip it
    (killed / "checkpoint-8").mkdir()
    (killed / "checkpoint-8" / "model.safetensors").write_bytes(b"partial")
    _run(["--output_dir", str(killed), *RUN, "--resume"])

    expected = torch.load(straight / "result_rank0.pt")
    resumed = torch.load(killed / "result_rank0.pt")
    assert expected["global_step"] == resumed["global_step"] == 9
    for branch in ("student", "teacher"):
        for key, value in expected[branch].items():
            torch.testing.assert_close(resumed[branch][key], value, rtol=0, atol=1e-6, msg=f"{branch}.{key}")
    for center in ("dino_center", "ibot_center"):
        torch.testing.assert_close(resumed[center], expected[center], rtol=0, atol=1e-6)
    # the losses of the resumed steps are those of the uninterrupted run
    losses = {e["step"]: e["loss"] for e in expected["log_history"] if "loss" in e}
    for entry in resumed["log_history"]:
        if "loss" in entry and entry["step"] > 7:
            assert abs(entry["loss"] - losses[entry["step"]]) < 1e-5
    # and training did move the weights away from their initialisation (the helper seeds with 0)
    set_seed(0)
    initial = tiny_model(drop_path_rate=0.2).student.state_dict()
    moved = [(resumed["student"][k] - v).abs().max().item() for k, v in initial.items()]
    assert max(moved) > 1e-2
