"""`--report_to tensorboard` (the `tensorboard` extra): the DINO-specific scalars reach the event file with the
values of the run's log history."""

import json

import pytest

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from pretraining import cli  # noqa: E402
from test_pretraining_ddp import _pictures  # noqa: E402

SCALARS = ("loss", "dino_loss", "ibot_loss", "koleo_loss", "teacher_entropy", "prototype_usage", "lr", "weight_decay",
           "momentum_teacher", "teacher_temp", "last_layer_lr", "grad_norm")


def test_dino_scalars_reach_tensorboard(tmp_path):
    _pictures(tmp_path / "images", 48)
    out = tmp_path / "run"
    assert cli.main(["--preset", "tiny", "--train_dir", str(tmp_path / "images"), "--max_steps", "3",
                     "--per_device_train_batch_size", "16", "--logging_steps", "1", "--report_to", "tensorboard",
                     "--save_strategy", "no", "--disable_tqdm", "true", "--output_dir", str(out)]) == 0
    (events,) = list(out.glob("runs/*/events.out.tfevents.*"))
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    history = [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "dino_loss" in e]
    assert len(history) == 3
    for name in SCALARS:
        logged = accumulator.Scalars(f"train/{name}")
        assert [e.step for e in logged] == [1, 2, 3], name
        assert [e.value for e in logged] == pytest.approx([h[name] for h in history], rel=1e-5), name
