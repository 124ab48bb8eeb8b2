"""Dinov2PretrainingTrainer mechanics on a tiny model: the EMA once per real optimizer step (gradient
accumulation), the last-layer freeze, logged schedule values and loss parts, per-module gradient clipping,
NaN/inf stops that keep the last good checkpoint, and bf16 autocast on CPU."""

import math
import os

import pytest
import torch

from ddp_pretraining_helper import GLOBAL, LOCAL, PATCH, synthetic_images, tiny_model
from pretraining.augmentations import MultiCropAugmentation
from pretraining.collate import MultiCropCollator
from pretraining.data import MultiCropDataset
from pretraining.modeling_self_distillation import Dinov2ForSelfDistillation
from pretraining.trainer import (
    Dinov2PretrainingArguments,
    Dinov2PretrainingTrainer,
    NonFiniteLossError,
    last_complete_checkpoint,
)

LOGGED = ("loss", "grad_norm", "dino_loss", "ibot_loss", "koleo_loss", "teacher_entropy", "prototype_usage", "lr",
          "last_layer_lr", "weight_decay", "momentum_teacher", "teacher_temp", "skipped_images", "dino_loss_uniform")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_trainer(tmp_path, model=None, **overrides) -> Dinov2PretrainingTrainer:
    torch.manual_seed(0)
    values = dict(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, max_steps=4, logging_steps=1,
        save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True, learning_rate=5e-3,
        scale_lr_with_batch_size=False, warmup_steps=1, epoch_length=2, warmup_teacher_temp_epochs=1,
    )
    values.update(overrides)
    dataset = MultiCropDataset(synthetic_images(16), MultiCropAugmentation(GLOBAL, LOCAL, 2, blur_kernel_size=3))
    return Dinov2PretrainingTrainer(
        model=model or tiny_model(), args=Dinov2PretrainingArguments(**values), train_dataset=dataset,
        data_collator=MultiCropCollator(patch_size=PATCH, global_crops_size=GLOBAL),
    )


def test_ema_runs_once_per_optimizer_step_with_gradient_accumulation(tmp_path):
    trainer = make_trainer(tmp_path, gradient_accumulation_steps=2, max_steps=3)
    model = trainer.model
    initial_teacher = [p.detach().clone() for p in model.teacher.parameters()]
    calls = []
    original = model.update_ema

    def spy(momentum):
        calls.append((momentum, [p.detach().clone() for p in model.student.parameters()]))
        original(momentum)

    model.update_ema = spy
    forwards = []
    model.register_forward_hook(lambda *args: forwards.append(1))
    trainer.train()
    assert len(forwards) == 6 and len(calls) == 3  # 3 optimizer steps of 2 micro-batches
    assert [m for m, _ in calls] == pytest.approx([trainer.schedule.momentum_teacher(step) for step in range(3)])
    # the teacher is exactly the EMA of the student snapshots taken after each optimizer step
    expected = initial_teacher
    for momentum, student in calls:
        expected = [momentum * t + (1 - momentum) * s for t, s in zip(expected, student)]
    for got, want in zip(model.teacher.parameters(), expected):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_last_layer_frozen_then_trained_and_schedules_logged(tmp_path):
    trainer = make_trainer(tmp_path, freeze_last_layer_epochs=1, max_steps=4)  # epoch_length 2: frozen 2 steps
    last = trainer.model.student.dino_head.last_layer.parametrizations.weight
    snapshots = [last.original1.detach().clone()]
    from transformers import TrainerCallback

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            snapshots.append(last.original1.detach().clone())

    trainer.add_callback(Snapshot())
    trainer.train()
    assert torch.equal(snapshots[0], snapshots[1]) and torch.equal(snapshots[1], snapshots[2])  # steps 0, 1
    assert not torch.equal(snapshots[2], snapshots[3])  # trained from step 2 on
    assert not torch.equal(trainer.model.student.backbone.embeddings.position_embeddings,
                           trainer.model.teacher.backbone.embeddings.position_embeddings)

    logs = [entry for entry in trainer.state.log_history if "dino_loss" in entry]
    assert len(logs) == 4
    for entry in logs:
        assert set(LOGGED) <= set(entry), set(LOGGED) - set(entry)
        step = entry["step"] - 1
        for name, value in trainer.schedule.values(step).items():
            assert entry[name] == pytest.approx(value), name
        assert entry["dino_loss_uniform"] == pytest.approx(math.log(32))
    assert logs[0]["last_layer_lr"] == 0 and logs[2]["last_layer_lr"] > 0
    assert logs[0]["teacher_temp"] == pytest.approx(0.04) and logs[-1]["teacher_temp"] == pytest.approx(0.07)
    total = [e["loss"] for e in logs]
    parts = [e["dino_loss"] + e["ibot_loss"] + 0.1 * e["koleo_loss"] for e in logs]
    assert total == pytest.approx(parts, rel=1e-5)


def test_gradient_clipping_per_module(tmp_path):
    trainer = make_trainer(tmp_path)
    model = trainer.model
    for name, module in model.student.items():
        params = list(module.parameters())
        target = {"backbone": 10.0, "dino_head": 1.0}[name]
        for p in params:
            p.grad = torch.ones_like(p)
        scale = target / math.sqrt(sum(p.numel() for p in params))
        for p in params:
            p.grad.mul_(scale)
    norm = trainer._clip_grad_norm(model)
    assert float(norm) == pytest.approx(math.sqrt(10.0**2 + 1.0**2), rel=1e-5)  # pre-clip norm, for the logs

    def module_norm(module):
        return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in module.parameters()]))

    assert float(module_norm(model.student.backbone)) == pytest.approx(3.0, rel=1e-5)  # clipped to max_grad_norm
    assert float(module_norm(model.student.dino_head)) == pytest.approx(1.0, rel=1e-5)  # below: untouched


@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_non_finite_loss_or_gradient_stops_and_keeps_the_last_good_checkpoint(tmp_path, kind):
    trainer = make_trainer(tmp_path, max_steps=6, save_strategy="steps", save_steps=2)
    model = trainer.model
    head = model.student.dino_head
    if kind == "loss":
        head.register_forward_hook(
            lambda m, i, out: out * float("nan") if trainer.state.global_step == 3 else out)
    else:
        param = model.student.backbone.layernorm.weight
        param.register_hook(lambda g: g * float("inf") if trainer.state.global_step == 3 else g)
    with pytest.raises(NonFiniteLossError, match=rf"Non-finite {kind}.* at step 3.*checkpoint-2"):
        trainer.train()
    run = tmp_path / "run"
    assert sorted(os.listdir(run)) == ["checkpoint-2"]
    assert last_complete_checkpoint(str(run)) == str(run / "checkpoint-2")
    saved = Dinov2ForSelfDistillation.from_pretrained(run / "checkpoint-2")
    assert all(torch.isfinite(p).all() for p in saved.parameters())
    assert all(torch.isfinite(p).all() for p in model.parameters())  # stopped before the optimizer step


@pytest.mark.filterwarnings("ignore:bf16=True on a CPU without")  # asked on purpose, also on AVX2 machines
def test_bf16_autocast_on_cpu(tmp_path):
    trainer = make_trainer(tmp_path, bf16=True, max_steps=2)
    dtypes = []
    fc1 = trainer.model.student.backbone.encoder.layer[0].mlp.fc1  # Linear layers run in bf16 under autocast
    fc1.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    trainer.train()
    assert dtypes and all(d == torch.bfloat16 for d in dtypes)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # fp32 master weights
    assert all(math.isfinite(e["loss"]) for e in trainer.state.log_history if "loss" in e)


def test_arguments_validation(tmp_path):
    with pytest.raises(ValueError, match="remove_unused_columns"):
        Dinov2PretrainingArguments(output_dir=str(tmp_path), remove_unused_columns=True)
    with pytest.raises(TypeError, match="Dinov2PretrainingArguments"):
        from transformers import TrainingArguments

        Dinov2PretrainingTrainer(model=tiny_model(), args=TrainingArguments(output_dir=str(tmp_path)))
    args = Dinov2PretrainingArguments(output_dir=str(tmp_path))
    # the DINOv2 defaults, not transformers'
    assert (args.max_grad_norm, args.weight_decay, args.learning_rate, args.dataloader_drop_last) == (3.0, 0.04, 4e-3, True)
