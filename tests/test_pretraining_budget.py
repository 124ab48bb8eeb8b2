"""--time_budget_minutes: the step count from a measured step time (hand-computed), a calibration that leaves the
run bit-identical to one given that step count directly, a resumed run that keeps its checkpoint's plan, and a
run slower than its calibration that is re-planned to end by the deadline."""

import time

import pytest
import torch
from transformers import TrainerCallback, TrainerControl, TrainerState

from ddp_pretraining_helper import GLOBAL, LOCAL, PATCH, synthetic_images, tiny_model
from pretraining import budget
from pretraining.augmentations import MultiCropAugmentation
from pretraining.collate import MultiCropCollator
from pretraining.data import MultiCropDataset
from pretraining.trainer import Dinov2PretrainingArguments, Dinov2PretrainingTrainer, recipe_from_trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_trainer(tmp_path, **overrides) -> Dinov2PretrainingTrainer:
    torch.manual_seed(0)
    values = dict(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=5, logging_steps=1, save_strategy="no",
        report_to="none", disable_tqdm=True, use_cpu=True, learning_rate=5e-3, scale_lr_with_batch_size=False,
        warmup_steps=1, epoch_length=2, warmup_teacher_temp_epochs=1,
    )
    values.update(overrides)
    dataset = MultiCropDataset(synthetic_images(16), MultiCropAugmentation(GLOBAL, LOCAL, 2, blur_kernel_size=3))
    return Dinov2PretrainingTrainer(
        model=tiny_model(), args=Dinov2PretrainingArguments(**values), train_dataset=dataset,
        data_collator=MultiCropCollator(patch_size=PATCH, global_crops_size=GLOBAL),
    )


def weights(trainer) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in trainer.model.state_dict().items()}


def test_steps_within_hand_values():
    assert budget.steps_within(60, 0.5) == 116  # floor(0.97 * 60 / 0.5) = floor(116.4)
    assert budget.steps_within(10, 0.1, safety=1.0) == 100
    assert budget.steps_within(-5, 1.0) == 1  # the budget is used up: still one step
    with pytest.raises(ValueError, match="seconds_per_step"):
        budget.steps_within(10, 0.0)


def test_budget_turns_the_measured_step_time_into_max_steps(tmp_path, monkeypatch):
    monkeypatch.setattr(budget, "measure_seconds_per_step", lambda trainer: 0.5)
    trainer = make_trainer(tmp_path, time_budget_minutes=1.0)
    trainer._apply_time_budget(None, started_at=time.monotonic() - 30)  # 30 s of the 60 already used
    # left = 60 - 30 - (a few ms) -> floor(0.97 * 29.99... / 0.5) = 58
    assert trainer.args.max_steps == 58
    assert trainer.budget == {"minutes": 1.0, "max_steps": 58, "seconds_per_step": 0.5}
    with pytest.warns(UserWarning, match="warm-up"):  # a budget used up before training: 1 step, warned
        trainer._apply_time_budget(None, started_at=time.monotonic() - 120)
    assert trainer.args.max_steps == 1


def test_calibration_leaves_the_run_unchanged(tmp_path, monkeypatch, capsys):
    """A budgeted run that lands on 5 steps equals a run told --max_steps 5: the timed copy touches nothing
    (and prints nothing: its logs would read as the run's)."""
    straight = make_trainer(tmp_path / "straight")
    straight.train()
    monkeypatch.setattr(budget, "steps_within", lambda seconds_left, seconds_per_step: 5)
    budgeted = make_trainer(tmp_path / "budgeted", max_steps=1000, time_budget_minutes=5.0)
    capsys.readouterr()
    budgeted.train()
    assert capsys.readouterr().out.count("train_runtime") == 1  # the run's summary, not the calibration's
    assert budgeted.state.global_step == budgeted.state.max_steps == 5
    assert budgeted.budget["seconds_per_step"] > 0
    assert recipe_from_trainer(budgeted)["time budget"].startswith("5 min -> 5 steps (")
    expected, got = weights(straight), weights(budgeted)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)
    assert not list((tmp_path / "budgeted").glob("dinov2-calibration-*"))


def test_a_resumed_budget_run_keeps_its_checkpoint_plan(tmp_path, monkeypatch):
    straight = make_trainer(tmp_path / "run", max_steps=6, save_strategy="steps", save_steps=3)
    straight.train()

    def no_calibration(trainer):
        raise AssertionError("a resumed run must not be re-planned")

    monkeypatch.setattr(budget, "measure_seconds_per_step", no_calibration)
    resumed = make_trainer(tmp_path / "run", max_steps=1000, time_budget_minutes=0.01)
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-3"))
    assert resumed.state.global_step == 6 and resumed.args.max_steps == 6
    assert resumed.budget["from"].endswith("checkpoint-3")
    expected, got = weights(straight), weights(resumed)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6, msg=name)


def test_time_budget_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="time_budget_minutes must be positive"):
        Dinov2PretrainingArguments(output_dir=str(tmp_path), time_budget_minutes=0, use_cpu=True)


def test_deadline_replans_a_run_slower_or_faster_than_planned(tmp_path):
    """Hand values: 100 planned steps, deadline at 100 s, a check every 100 // 20 = 5 steps."""
    trainer = make_trainer(tmp_path, max_steps=100)
    trainer.create_optimizer()
    trainer.create_scheduler(100)
    trainer.budget = {"minutes": 100 / 60, "max_steps": 100, "seconds_per_step": 0.9}
    now = [0.0]
    deadline = budget.DeadlineCallback(trainer, deadline=100.0, clock=lambda: now[0], settle_steps=0)
    state, control = TrainerState(max_steps=100, global_step=0), TrainerControl()
    deadline.on_train_begin(trainer.args, state, control)

    def run_to(step: int, seconds_per_step: float) -> None:
        while state.global_step < step:
            state.global_step += 1
            now[0] += seconds_per_step
            deadline.on_step_end(trainer.args, state, control)

    run_to(5, 0.9)  # on plan: floor(0.97 * 95.5 / 0.9) = 102 of the 95 steps left fit
    assert state.max_steps == 100 and "replanned" not in trainer.budget
    now[0], state.global_step = 0.0, 0  # the same run again, now at 2 s per step
    deadline.on_train_begin(trainer.args, state, control)
    run_to(5, 2.0)  # 2 s per step: floor(0.97 * (100 - 10) / 2.0) = 43 steps fit -> 5 + 43
    assert state.max_steps == trainer.args.max_steps == trainer.budget["max_steps"] == 48
    assert trainer.schedule.total_steps == trainer.lr_scheduler.schedule.total_steps == 48
    assert trainer.budget["replanned"] == [(5, 100, 48)]
    run_to(10, 2.0)  # still 2 s per step: floor(0.97 * 80 / 2) = 38 = the 38 steps left, no change
    assert state.max_steps == 48
    assert "re-planned at step 5: 100 -> 48" in recipe_from_trainer(trainer)["time budget"]
    run_to(15, 0.5)  # faster again: 22.5 s / 15 steps = 1.5 s per step, floor(0.97 * 77.5 / 1.5) = 50 -> 15 + 50
    assert state.max_steps == trainer.schedule.total_steps == 65 and trainer.budget["replanned"][-1] == (15, 48, 65)
    now[0] = 150.0  # past the deadline at the next check (step 20): stop after one more step
    run_to(20, 0.0)
    assert state.max_steps == 21 and trainer.budget["replanned"][-1] == (20, 65, 21)
    assert recipe_from_trainer(trainer)["time budget"] == (
        "1.66667 min -> 21 steps (0.900 s per step measured; re-planned at steps 5-20: 100 -> 48 -> 65 -> 21)")


def test_deadline_times_the_run_from_the_end_of_its_first_epoch(tmp_path):
    """The first epoch also decodes the images: its slow steps count in the elapsed time, not in the step time."""
    trainer = make_trainer(tmp_path, max_steps=100)  # 16 images, batch 4: 4 steps per epoch
    trainer.create_optimizer()
    trainer.create_scheduler(100)
    trainer.budget = {"minutes": 100 / 60, "max_steps": 100, "seconds_per_step": 0.9}
    now = [0.0]
    deadline = budget.DeadlineCallback(trainer, deadline=100.0, clock=lambda: now[0])
    state, control = TrainerState(max_steps=100, global_step=0), TrainerControl()
    deadline.on_train_begin(trainer.args, state, control)
    assert deadline.settled_step == 4  # min(one epoch, a quarter of the plan)
    for step, seconds in [(s, 2.0) for s in range(1, 5)] + [(s, 0.9) for s in range(5, 10)]:
        state.global_step = step
        now[0] += seconds
        deadline.on_step_end(trainer.args, state, control)
    # at step 9: 0.9 s per step since step 4 (not the 1.3 of the mean since 0); floor(0.97 * (100 - 12.5) / 0.9)
    # = 94 steps fit, more than the 91 left, but never more than the calibration's 100: no change
    assert state.max_steps == 100 and "replanned" not in trainer.budget


def test_a_run_slower_than_its_calibration_still_ends_in_its_budget(tmp_path):
    """Every step of the run (not of the calibration) sleeps 50 ms: the deadline shortens the run."""
    class Slow(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            time.sleep(0.05)

    minutes = 0.05
    trainer = make_trainer(tmp_path, max_steps=1000, time_budget_minutes=minutes, logging_steps=1000)
    trainer.add_callback(Slow())
    started = time.monotonic()
    trainer.train(budget_started_at=started)
    elapsed = time.monotonic() - started
    step, planned, _ = trainer.budget["replanned"][0]
    assert trainer.state.global_step == trainer.state.max_steps == trainer.budget["max_steps"] < planned
    assert elapsed < 60 * minutes + 1.0, f"the run took {elapsed:.1f} s of a {60 * minutes:.0f}-s budget"
