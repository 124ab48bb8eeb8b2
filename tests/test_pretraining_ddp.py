"""Two gloo processes x batch b train exactly like one process x batch 2b: same per-step losses (and loss
parts), same student and teacher weights and centers, and the teachers of both ranks are identical.

Run for real with `torchrun --nproc_per_node 2`. For the equality to hold by construction the test uses
per-sample iBOT masks (the original stratifies mask ratios over each GPU's batch, which differs between the
two layouts), the global-batch KoLeo (`koleo_distributed`; the original's per-GPU KoLeo is a different loss
for a different batch split) and no drop path (it samples per batch). Centering, Sinkhorn-Knopp, DINO and iBOT
normalisations, clipping and the EMA are exactly as in training.
"""

import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT, TESTS_DIR

HELPER = str(TESTS_DIR / "ddp_pretraining_helper.py")
COMMON = ["--max_steps", "4", "--num_images", "32", "--per_sample_masks", "--koleo_distributed"]


def _run(command, timeout=600):
    """Run in a new session so that on a timeout torchrun *and its workers* are killed, never orphaned."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    assert process.returncode == 0, stdout[-2000:] + stderr[-4000:]


@pytest.mark.parametrize("variant", [[], ["--sinkhorn"]], ids=["softmax-centering", "sinkhorn-separate-ibot-head"])
def test_two_ranks_match_one_rank_with_twice_the_batch(tmp_path, variant):
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, HELPER, "--output_dir", str(one), "--batch_size", "8", *COMMON, *variant])
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", HELPER,
          "--output_dir", str(two), "--batch_size", "4", *COMMON, *variant])
    single = torch.load(one / "result_rank0.pt")
    rank0, rank1 = torch.load(two / "result_rank0.pt"), torch.load(two / "result_rank1.pt")
    assert single["world_size"] == 1 and rank0["world_size"] == rank1["world_size"] == 2

    for name in ("loss", "dino_loss", "ibot_loss", "koleo_loss", "teacher_entropy"):
        expected = [e[name] for e in single["log_history"] if name in e]
        got = [e[name] for e in rank0["log_history"] if name in e]
        assert len(expected) == len(got) == 4
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-6), name

    for key, value in single["teacher"].items():
        assert torch.equal(rank0["teacher"][key], rank1["teacher"][key]), key  # identical on both ranks
        torch.testing.assert_close(rank0["teacher"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    for key, value in single["student"].items():
        # AdamW divides by sqrt(v): parameters with (near-)zero gradients, like the attention key bias (softmax
        # is invariant to it), turn last-bit differences of the gradient sum into ~1e-5 weight differences
        torch.testing.assert_close(rank0["student"][key], value, rtol=1e-4, atol=5e-5, msg=key)
        assert torch.equal(rank0["student"][key], rank1["student"][key]), key
    for center in ("dino_center", "ibot_center"):
        if single[center] is not None:  # Sinkhorn-Knopp has no center
            torch.testing.assert_close(rank0[center], single[center], rtol=1e-5, atol=1e-7)


def test_a_time_budget_gives_every_rank_the_same_step_count(tmp_path):
    """Each rank times its own steps; all must then train the same number of steps (else DDP would hang), also
    after the deadline's re-plans (`budget["replanned"]`, decided from the slowest rank's step time)."""
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", HELPER,
          "--output_dir", str(tmp_path), "--batch_size", "4", "--num_images", "32", "--time_budget_minutes", "0.1"])
    rank0, rank1 = torch.load(tmp_path / "result_rank0.pt"), torch.load(tmp_path / "result_rank1.pt")
    assert rank0["budget"] == rank1["budget"] and rank0["budget"]["seconds_per_step"] > 0
    assert rank0["global_step"] == rank1["global_step"] == rank0["max_steps"] == rank0["budget"]["max_steps"]
    for key, value in rank0["teacher"].items():
        assert torch.equal(rank1["teacher"][key], value), key
