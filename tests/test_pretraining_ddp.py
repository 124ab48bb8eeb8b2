"""Two gloo processes x batch b train exactly like one process x batch 2b: same per-step losses (and loss
parts), same student and teacher weights and centers, and the teachers of both ranks are identical.

Run for real with `torchrun --nproc_per_node 2`, without `--use_cpu` (the arguments must pick gloo DDP on a
CPU-only machine by themselves), in fp32 and bf16. For the equality to hold by construction the tests use
per-sample iBOT masks (`mask_sampling="sample"`; the original stratifies mask ratios over each GPU's batch, which
differs between the two layouts), the global-batch KoLeo (`koleo_distributed`; the original's per-GPU KoLeo is a
different loss for a different batch split) and no drop path (it samples per batch). Centering, Sinkhorn-Knopp,
DINO and iBOT normalisations, clipping and the EMA are exactly as in training.
"""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

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


def _torchrun(*args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]


@pytest.mark.parametrize("variant", [[], ["--sinkhorn"]], ids=["softmax-centering", "sinkhorn-separate-ibot-head"])
def test_two_ranks_match_one_rank_with_twice_the_batch(tmp_path, variant):
    """fp32 with the launch's own defaults (no --use_cpu: on a CPU-only machine the arguments pick gloo DDP)."""
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, HELPER, "--output_dir", str(one), "--batch_size", "8", *COMMON, *variant])
    _run(_torchrun(HELPER, "--output_dir", str(two), "--batch_size", "4", *COMMON, *variant))
    single = torch.load(one / "result_rank0.pt")
    rank0, rank1 = torch.load(two / "result_rank0.pt"), torch.load(two / "result_rank1.pt")
    assert single["world_size"] == 1 and rank0["world_size"] == rank1["world_size"] == 2
    assert rank0["wrapped_in_ddp"] and rank1["wrapped_in_ddp"]

    for name in ("loss", "dino_loss", "ibot_loss", "koleo_loss", "teacher_entropy"):
        expected = [e[name] for e in single["log_history"] if name in e]
        got = [e[name] for e in rank0["log_history"] if name in e]
        assert len(expected) == len(got) == 4
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-6), name

    # The attention key bias gets no gradient (softmax is invariant to it): its gradient is rounding noise, which
    # differs between the layouts, and AdamW's normalisation turns that noise into steps of up to lr (5e-3). It
    # is compared to that bound; every other weight to float rounding.
    def tolerance(key, rtol, atol):
        return dict(rtol=0, atol=4 * 5e-3) if key.endswith("key.bias") else dict(rtol=rtol, atol=atol)

    for key, value in single["teacher"].items():
        assert torch.equal(rank0["teacher"][key], rank1["teacher"][key]), key  # identical on both ranks
        torch.testing.assert_close(rank0["teacher"][key], value, msg=key, **tolerance(key, 1e-5, 1e-6))
    for key, value in single["student"].items():
        # AdamW divides by sqrt(v): parameters with small gradients turn last-bit differences of the gradient
        # sum into ~1e-5 weight differences
        torch.testing.assert_close(rank0["student"][key], value, msg=key, **tolerance(key, 1e-4, 5e-5))
        assert torch.equal(rank0["student"][key], rank1["student"][key]), key
    for center in ("dino_center", "ibot_center"):
        if single[center] is not None:  # Sinkhorn-Knopp has no center
            torch.testing.assert_close(rank0[center], single[center], rtol=1e-5, atol=1e-7)


def test_a_time_budget_gives_every_rank_the_same_step_count(tmp_path):
    """Each rank times its own steps; all must then train the same number of steps (else DDP would hang), also
    after the deadline's re-plans (`budget["replanned"]`, decided from the slowest rank's step time)."""
    _run(_torchrun(HELPER, "--output_dir", str(tmp_path), "--batch_size", "4", "--num_images", "32",
                   "--time_budget_minutes", "0.1"))
    rank0, rank1 = torch.load(tmp_path / "result_rank0.pt"), torch.load(tmp_path / "result_rank1.pt")
    assert rank0["budget"] == rank1["budget"] and rank0["budget"]["seconds_per_step"] > 0
    assert rank0["global_step"] == rank1["global_step"] == rank0["max_steps"] == rank0["budget"]["max_steps"]
    for key, value in rank0["teacher"].items():
        assert torch.equal(rank1["teacher"][key], value), key


def test_two_ranks_synchronise_in_bf16(tmp_path):
    """bf16 autocast: both ranks are wrapped in DDP and end with identical weights, close to the one-rank run
    (bf16 rounds the two layouts differently, so not to fp32 precision)."""
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, HELPER, "--output_dir", str(one), "--batch_size", "8", "--bf16", *COMMON])
    _run(_torchrun(HELPER, "--output_dir", str(two), "--batch_size", "4", "--bf16", *COMMON))
    single = torch.load(one / "result_rank0.pt")
    rank0, rank1 = torch.load(two / "result_rank0.pt"), torch.load(two / "result_rank1.pt")
    assert rank0["wrapped_in_ddp"] and rank1["wrapped_in_ddp"]
    for part in ("student", "teacher"):
        for key, value in rank0[part].items():
            assert torch.equal(rank1[part][key], value), (part, key)
    losses = [[e["loss"] for e in result["log_history"] if "loss" in e] for result in (single, rank0)]
    assert losses[1] == pytest.approx(losses[0], rel=2e-2)


def test_a_launch_the_trainer_would_not_distribute_is_refused(monkeypatch, tmp_path):
    from pretraining.trainer import Dinov2PretrainingArguments, check_launch_is_distributed

    args = Dinov2PretrainingArguments(output_dir=str(tmp_path), report_to="none")
    assert args.use_cpu  # no GPU here: the arguments ask accelerate for CPU (gloo) DDP
    assert args.world_size == 1
    check_launch_is_distributed(args)  # one process: fine
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="2 processes were launched .* would train separately"):
        check_launch_is_distributed(args)


def _pictures(folder, n):
    """n 28x28 images, every third one grey (batches mix the grey and the colour path of the augmentation)."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    for i in range(n):
        small = rng.integers(0, 256, (7, 7, 1 if i % 3 == 0 else 3), dtype=np.uint8)
        Image.fromarray(small.squeeze(-1) if i % 3 == 0 else small).resize((28, 28), Image.BILINEAR).save(
            folder / f"{i:03d}.png")


def test_cli_two_ranks_match_one_rank_with_the_batched_augmentation(tmp_path):
    """`dinov2-pretrain --preset tiny` (batched augmentation, image cache, Sinkhorn-Knopp) as 2 ranks x 16 and
    1 rank x 32 in fp32, with the two settings that make the layouts one computation: per-sample masks and the
    global-batch KoLeo. Losses and weights agree to float rounding."""
    _pictures(tmp_path / "images", 96)
    common = ["-m", "pretraining.cli", "--preset", "tiny", "--train_dir", str(tmp_path / "images"), "--max_steps", "5",
              "--bf16", "false", "--mask_sampling", "sample", "--koleo_distributed", "true", "--logging_steps", "1",
              "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true"]
    _run([sys.executable, *common, "--per_device_train_batch_size", "32", "--output_dir", str(tmp_path / "one")])
    _run(_torchrun(*common, "--per_device_train_batch_size", "16", "--output_dir", str(tmp_path / "two")))

    histories = [json.loads((tmp_path / run / "trainer_state.json").read_text())["log_history"] for run in ("one", "two")]
    for name in ("loss", "dino_loss", "ibot_loss", "koleo_loss"):
        expected, got = ([e[name] for e in history if name in e] for history in histories)
        assert len(expected) == len(got) == 5
        assert got == pytest.approx(expected, rel=1e-5), name
    one = load_file(tmp_path / "one" / "final" / "model.safetensors")
    two = load_file(tmp_path / "two" / "final" / "model.safetensors")
    assert one.keys() == two.keys()
    for key, value in one.items():
        if key.endswith("key.bias"):
            # the key bias has no gradient (softmax is invariant to it): AdamW turns the last-bit noise of its
            # gradient sum, which differs between the layouts, into steps of up to lr
            torch.testing.assert_close(two[key], value, rtol=0, atol=1e-3, msg=key)
        else:
            torch.testing.assert_close(two[key], value, rtol=0, atol=1e-5, msg=key)
