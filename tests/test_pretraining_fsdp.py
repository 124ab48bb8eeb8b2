"""FSDP2 pretraining on 2 gloo ranks: the parameters are sharded, N steps equal the unsharded 1-rank run on the
same global batch, a sharded checkpoint resumes exactly after SIGKILL, and the final model and the exported
backbone are whole. Both launch routes (the Trainer's `--fsdp` flags and an accelerate FSDP config) shard.

The ranks run for real (`torchrun --nproc_per_node 2`). FSDP2's bf16 mixed precision (bf16 all-gather and
compute, fp32 reduction) runs on CPU too; only CPU offloading of the shards is left untested (it is a no-op on a
CPU-only machine).
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO_ROOT, TESTS_DIR
from test_pretraining_ddp import COMMON, HELPER, _pictures, _run, _torchrun

from modeling_dinov2.hardware import bf16_is_native


def _results(folder, ranks=2):
    return [torch.load(folder / f"result_rank{r}.pt") for r in range(ranks)]


def _assert_sharded(rank0, rank1):
    """Every parameter (student and teacher) is a DTensor split along dim 0 between the two ranks."""
    assert rank0["fsdp_enabled"] and rank1["fsdp_enabled"] and not rank0["wrapped_in_ddp"]
    assert rank0["shards"].keys() == rank1["shards"].keys()
    assert any(name.startswith("teacher.") for name in rank0["shards"])
    for name, (kind, whole, local0) in rank0["shards"].items():
        local1 = rank1["shards"][name][2]
        assert kind == "DTensor", name
        assert local0[1:] == local1[1:] == whole[1:] and local0[0] + local1[0] == whole[0], name
        assert local0[0] == (whole[0] + 1) // 2, name  # dim 0 split as evenly as it goes


def test_fsdp_two_ranks_shard_and_match_one_unsharded_rank(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, HELPER, "--output_dir", str(one), "--batch_size", "8", *COMMON])
    _run(_torchrun(HELPER, "--output_dir", str(two), "--batch_size", "4", "--fsdp", *COMMON))
    (single,), (rank0, rank1) = _results(one, 1), _results(two)
    _assert_sharded(rank0, rank1)

    for name in ("loss", "dino_loss", "ibot_loss", "koleo_loss"):
        expected = [e[name] for e in single["log_history"] if name in e]
        got = [e[name] for e in rank0["log_history"] if name in e]
        assert len(got) == 4 and got == pytest.approx(expected, rel=1e-5, abs=1e-6), name
    # the EMA ran on the shards: the gathered teacher equals the unsharded run's
    for part in ("teacher", "student"):
        assert rank0[part].keys() == single[part].keys()
        for key, value in single[part].items():
            # the attention key bias gets no gradient; AdamW turns its rounding noise into steps of up to lr
            atol = 4 * 5e-3 if key.endswith("key.bias") else 1e-5
            torch.testing.assert_close(rank0[part][key], value, rtol=0, atol=atol, msg=f"{part}.{key}")
    torch.testing.assert_close(rank0["dino_center"], single["dino_center"], rtol=1e-5, atol=1e-7)


def _kill_every_process_of(output_dir) -> None:
    """SIGKILL every process whose command line names ``output_dir`` (the ranks and torchrun)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                command = f.read()
        except OSError:
            continue
        if str(output_dir).encode() in command and int(entry) != os.getpid():
            try:
                os.kill(int(entry), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_sharded_checkpoint_resumes_after_sigkill_like_the_uninterrupted_run(tmp_path):
    run = ["--batch_size", "2", "--grad_accum", "2", "--num_images", "24", "--max_steps", "6", "--drop_path", "0.2",
           "--fsdp"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _run(_torchrun(HELPER, "--output_dir", str(straight), *run))

    command = _torchrun(HELPER, "--output_dir", str(killed), *run, "--save_steps", "4", "--pause_after_save", "4")
    process = subprocess.Popen(command, cwd=REPO_ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not (killed / "checkpoint-4" / "pretraining_state.json").exists():
            assert process.poll() is None and time.time() < deadline, "checkpoint-4 did not appear"
            time.sleep(0.2)
        _kill_every_process_of(killed)  # both ranks (torchrun starts them in sessions of their own), then torchrun
        process.wait(timeout=30)
    finally:
        _kill_every_process_of(killed)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert not (killed / "result_rank0.pt").exists()
    shards = sorted(p.name for p in (killed / "checkpoint-4" / "pytorch_model_fsdp_0").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]  # one shard file per rank

    _run(_torchrun(HELPER, "--output_dir", str(killed), *run, "--resume"))
    (expected, _), (resumed, _) = _results(straight), _results(killed)
    assert expected["global_step"] == resumed["global_step"] == 6
    for part in ("student", "teacher"):
        for key, value in expected[part].items():
            torch.testing.assert_close(resumed[part][key], value, rtol=0, atol=1e-6, msg=f"{part}.{key}")


@pytest.mark.skipif(not bf16_is_native(), reason="bf16 is emulated (slowly) on this CPU")
def test_fsdp_in_bf16_reduces_in_fp32_and_stays_close_to_one_rank(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, HELPER, "--output_dir", str(one), "--batch_size", "8", "--bf16", *COMMON])
    _run(_torchrun(HELPER, "--output_dir", str(two), "--batch_size", "4", "--bf16", "--fsdp", *COMMON))
    (single,), (rank0, rank1) = _results(one, 1), _results(two)
    _assert_sharded(rank0, rank1)
    assert rank0["mixed_precision"] == {"param_dtype": "torch.bfloat16", "reduce_dtype": "torch.float32"}
    losses = [[e["loss"] for e in result["log_history"] if "loss" in e] for result in (single, rank0)]
    assert losses[1] == pytest.approx(losses[0], rel=2e-2)


@pytest.mark.parametrize("route", ["trainer-flags", "accelerate-config"])
def test_cli_fsdp_routes_shard_and_export_a_whole_backbone(tmp_path, route):
    """`dinov2-pretrain` under both documented launches: sharded checkpoints, a whole `final/`, and a backbone
    that `AutoModel` loads with the teacher's weights."""
    _pictures(tmp_path / "images", 64)
    out = tmp_path / "out"
    args = ["--preset", "tiny", "--train_dir", str(tmp_path / "images"), "--max_steps", "3", "--save_steps", "2",
            "--per_device_train_batch_size", "16", "--bf16", "false", "--report_to", "none", "--disable_tqdm", "true",
            "--output_dir", str(out)]
    if route == "trainer-flags":
        _run(_torchrun("-m", "pretraining.cli", *args, "--fsdp", "true"))
    else:
        config = REPO_ROOT / "pretraining" / "accelerate_fsdp.yaml"
        _run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--num_processes", "2",
              "--mixed_precision", "no", "-m", "pretraining.cli", *args])
    checkpoint = out / "checkpoint-2"
    assert sorted(p.name for p in (checkpoint / "pytorch_model_fsdp_0").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert (checkpoint / "rng_state_1.pth").exists()  # two processes ran

    from transformers import AutoModel

    from pretraining.modeling_self_distillation import Dinov2ForSelfDistillation

    final = load_file(out / "final" / "model.safetensors")
    config = json.loads((out / "final" / "config.json").read_text())
    whole = Dinov2ForSelfDistillation(Dinov2ForSelfDistillation.config_class.from_dict(config)).state_dict()
    assert {k: tuple(v.shape) for k, v in final.items()} == {k: tuple(v.shape) for k, v in whole.items()}
    backbone = AutoModel.from_pretrained(out / "backbone", trust_remote_code=True)
    for key, value in backbone.state_dict().items():
        torch.testing.assert_close(value, final[f"teacher.backbone.{key}"], rtol=0, atol=0, msg=key)


def test_fsdp_with_one_process_is_refused(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pretraining.cli", "--preset", "tiny", "--fsdp", "true",
                             "--output_dir", str(tmp_path / "out"), "--report_to", "none", "--max_steps", "1"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "FSDP shards the model over several processes, but this is a single process" in result.stderr, result.stderr
