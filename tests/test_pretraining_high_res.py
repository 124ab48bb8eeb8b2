"""The high-resolution phase (`--high_res_steps N --high_res_global_crops_size S`): the last N steps see S-px
global crops, the schedules run on through the switch, and a run resumed before or after the switch ends with
the weights of the uninterrupted run."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from pretraining import cli
from pretraining.modeling_self_distillation import Dinov2ForSelfDistillation
from test_pretraining_ddp import _pictures

RUN = ["--preset", "tiny", "--max_steps", "6", "--high_res_steps", "2", "--high_res_global_crop_size", "56",
       "--per_device_train_batch_size", "16", "--save_steps", "1", "--save_total_limit", "10", "--logging_steps", "1",
       "--bf16", "false", "--report_to", "none", "--disable_tqdm", "true"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("high_res") / "images"
    _pictures(folder, 64)
    return folder


def _pretrain(images, output_dir, *extra):
    assert cli.main([*RUN, "--train_dir", str(images), "--output_dir", str(output_dir), *extra]) == 0


def test_the_last_steps_see_larger_global_crops_and_the_schedules_continue(images, tmp_path, monkeypatch):
    sides = []
    forward = Dinov2ForSelfDistillation.forward

    def recording_forward(self, global_crops, *args, **kwargs):
        if self.training:
            sides.append(global_crops.shape[-1])
        return forward(self, global_crops, *args, **kwargs)

    monkeypatch.setattr(Dinov2ForSelfDistillation, "forward", recording_forward)
    _pretrain(images, tmp_path / "run")
    assert sides[-6:] == [28, 28, 28, 28, 56, 56]
    history = json.loads((tmp_path / "run" / "trainer_state.json").read_text())["log_history"]
    steps = [e for e in history if "lr" in e]
    assert [e["step"] for e in steps] == [1, 2, 3, 4, 5, 6]
    # the schedules are those of one 6-step run: lr, weight decay and teacher momentum keep their monotone course
    for name, rising in (("weight_decay", True), ("momentum_teacher", True)):
        values = [e[name] for e in steps]
        assert values == sorted(values, reverse=not rising) and len(set(values)) > 1, name
    card = (tmp_path / "run" / "backbone" / "README.md").read_text()
    assert "the last 2 steps with 56-px global crops" in card


@pytest.mark.parametrize("killed_after", [2, 5], ids=["before-the-switch", "after-the-switch"])
def test_a_run_resumed_on_either_side_of_the_switch_ends_like_the_uninterrupted_one(images, tmp_path, killed_after):
    _pretrain(images, tmp_path / "straight")
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    # what a run killed after saving checkpoint-<killed_after> leaves behind
    shutil.copytree(tmp_path / "straight" / f"checkpoint-{killed_after}", resumed / f"checkpoint-{killed_after}")
    _pretrain(images, resumed, "--resume_from_checkpoint", "last")
    expected = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    got = load_file(resumed / "final" / "model.safetensors")
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=1e-6, msg=key)


@pytest.mark.parametrize("extra, message", [
    (["--high_res_global_crop_size", "30"], "must be a multiple of the patch size (7) larger than --global_crops_size"),
    (["--high_res_steps", "6"], "--high_res_steps must be between 1 and --max_steps - 1 (5)"),
    (["--time_budget_minutes", "1"], "does not combine with --time_budget_minutes"),
])
def test_bad_high_res_settings_are_refused(images, tmp_path, extra, message):
    with pytest.raises(SystemExit, match=message.replace("(", r"\(").replace(")", r"\)")):
        cli.parse_args([*RUN, "--train_dir", str(images), "--output_dir", str(tmp_path), *extra])
