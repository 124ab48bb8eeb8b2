"""`Dinov2PretrainingTrainer`: DINOv2 self-distillation as a `transformers.Trainer`.

What the Trainer adds to a [`Dinov2ForSelfDistillation`] forward (DINOv2 ``dinov2/train/train.py``):

- AdamW over DINOv2's parameter groups (layer-wise lr decay, patch embedding x0.2, no weight decay on
  biases / norms / LayerScale) driven by [`RecipeScheduler`]: lr warmup + cosine to `min_lr`, weight
  decay cosine 0.04 -> 0.4, last layer frozen (lr 0) for `freeze_last_layer_epochs`;
- the teacher temperature warm-up, passed to every forward;
- the EMA teacher update, once per optimizer step ([`TeacherEMACallback`], momentum cosine 0.992 -> 1);
- gradient clipping at 3.0 per student module (backbone, DINO head, iBOT head) as the original;
- every schedule value, loss part and teacher diagnostic in the logs, averaged over ranks;
- a clear [`NonFiniteLossError`] on a NaN/inf loss or gradient norm, raised on every rank *before* the
  optimizer step, so no bad weights are saved and the last good checkpoint stays intact;
- deterministic data (per-sample seeds, [`EpochRandomSampler`]) so SIGKILL + resume reproduces an
  uninterrupted run; bad images skipped, counted in the logs and listed in `skipped_images.json`.

Multi-process: `accelerate launch` / `torchrun` with DDP works unchanged (centers and Sinkhorn-Knopp
reduce over ranks; the EMA runs identically on every rank). FSDP2 (`--fsdp true`, or an accelerate FSDP
config; on CPU ranks too, `pretraining/sharding.py`): sharded checkpoints, the EMA on the shards, a whole model
in `final/` and a whole exported backbone.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from transformers import Trainer, TrainerCallback, TrainerState, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, TrainOutput

from modeling_dinov2.hardware import cpu_supports_bf16

from .data import EpochRandomSampler, SkippedImages
from .modeling_self_distillation import Dinov2ForSelfDistillation
from .optim import RecipeScheduler, build_param_groups
from .schedules import PretrainingSchedule, scaled_learning_rate
from .budget import DeadlineCallback, budgeted_max_steps
from .sharding import SHARDED_STATE_DICT, full_state_dict, unwrap, use_requested_fsdp

logger = logging.getLogger(__name__)
STATE_FILE = "pretraining_state.json"
LOSS_PARTS = ("dino_loss", "ibot_loss", "koleo_loss", "teacher_entropy", "prototype_usage")


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss or gradient norm."""


@dataclass
class Dinov2PretrainingArguments(TrainingArguments):
    """`TrainingArguments` with DINOv2's recipe (defaults: `ssl_default_config.yaml`).

    Lengths given in epochs use `epoch_length` optimizer steps per epoch: by default one pass over the data;
    the original counts 1250 iterations as an epoch whatever the dataset size.
    """

    _argument_group_name = "Training: the DINOv2 recipe and every transformers.TrainingArguments option"

    learning_rate: float = field(
        default=4e-3,
        metadata={"help": "Base learning rate for a global batch of 1024 images (DINOv2 `optim.base_lr`). The peak "
                  "lr is learning_rate * sqrt(global_batch / 1024) unless --scale_lr_with_batch_size false."},
    )
    scale_lr_with_batch_size: bool = field(
        default=True, metadata={"help": "Scale the lr with sqrt(global batch / 1024) as DINOv2 does."}
    )
    min_lr: float = field(default=1e-6, metadata={"help": "Floor of the cosine learning-rate decay."})
    warmup_epochs: float = field(
        default=10, metadata={"help": "Linear lr warm-up from 0, in epochs (ignored if --warmup_steps is set)."}
    )
    weight_decay: float = field(default=0.04, metadata={"help": "Weight decay at the start (cosine schedule)."})
    weight_decay_end: float = field(default=0.4, metadata={"help": "Weight decay at the end (cosine schedule)."})
    momentum_teacher: float = field(default=0.992, metadata={"help": "EMA momentum of the teacher at the start."})
    final_momentum_teacher: float = field(default=1.0, metadata={"help": "EMA momentum of the teacher at the end."})
    warmup_teacher_temp: float = field(default=0.04, metadata={"help": "Teacher temperature at the start."})
    teacher_temp: float = field(default=0.07, metadata={"help": "Teacher temperature after the warm-up."})
    warmup_teacher_temp_epochs: float = field(
        default=30, metadata={"help": "Length of the linear teacher-temperature warm-up, in epochs."}
    )
    freeze_last_layer_epochs: float = field(
        default=1, metadata={"help": "Epochs during which the heads' last (prototype) layer has lr 0."}
    )
    layerwise_decay: float = field(
        default=0.9, metadata={"help": "Layer-wise lr decay: block i gets decay**(L - i), the embeddings decay**(L+1)."}
    )
    patch_embed_lr_mult: float = field(default=0.2, metadata={"help": "Extra lr factor of the patch embedding."})
    epoch_length: int | None = field(
        default=None,
        metadata={"help": "Optimizer steps per 'epoch' for the *_epochs settings. Default: one pass over the data. "
                  "DINOv2 uses 1250 (its OFFICIAL_EPOCH_LENGTH)."},
    )
    clip_grad_per_module: bool = field(
        default=True,
        metadata={"help": "Clip the gradient norm of the backbone and of each head separately to max_grad_norm "
                  "(the original); false clips all student gradients together."},
    )
    max_grad_norm: float = field(default=3.0, metadata={"help": "Gradient clipping threshold (DINOv2: 3.0)."})
    # Trainer defaults that do not fit self-supervised multi-crop training
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay False: the collator reads the image column."}
    )
    dataloader_drop_last: bool = field(
        default=True, metadata={"help": "Drop the last incomplete batch (equal batches on every rank, as DINOv2)."}
    )
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "Every student parameter is used in every step, so DDP needs no search."}
    )
    logging_steps: float = field(default=10, metadata={"help": "Log every N optimizer steps."})
    time_budget_minutes: float | None = field(
        default=None,
        metadata={"help": "Train for as many steps as fit in this many minutes, counted from the start of training "
                  "(from the start of the process with dinov2-pretrain): a few steps of a throwaway copy of the run "
                  "are timed first, and the result replaces --max_steps (pretraining/budget.py); a run that turns out "
                  "slower is re-planned to end in time. A resumed run keeps its checkpoint's max_steps."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Delete an earlier run in --output_dir (its checkpoints, final, backbone, trainer_state.json) "
                  "and start over. Without it a new run refuses such a folder: a later resume could continue the "
                  "earlier run instead."},
    )

    def __post_init__(self):
        if not self.use_cpu and not _has_accelerator():
            # on a machine without GPUs, accelerate only treats a multi-process launch as distributed (gloo DDP)
            # when asked for the CPU: without it, N processes would each train on their share of the data and
            # never synchronise; bf16 autocast on CPU needs it too
            self.use_cpu = True
        if self.bf16 and (self.use_cpu or not _has_accelerator()) and not cpu_supports_bf16():
            warnings.warn(
                "bf16=True on a CPU without AVX512-BF16 or AMX: PyTorch emulates bf16 here, which is several times "
                "slower than fp32 (11x for the tiny preset on an AVX2 CPU); pass --bf16 false.",
                stacklevel=3,  # past the dataclass __init__, to the caller
            )
        if isinstance(self.fsdp, str) and self.fsdp.lower() in ("true", "1", "yes"):
            self.fsdp = True  # `--fsdp true` on the command line (the Trainer's field is a string there)
        super().__post_init__()
        if self.remove_unused_columns:
            raise ValueError("remove_unused_columns=True would drop the image column; DINOv2 pretraining needs False.")
        if self.epoch_length is not None and self.epoch_length < 1:
            raise ValueError(f"epoch_length must be >= 1, got {self.epoch_length}.")
        if self.time_budget_minutes is not None and self.time_budget_minutes <= 0:
            raise ValueError(f"time_budget_minutes must be positive, got {self.time_budget_minutes}.")
        if self.fsdp_plugin_args is not None:
            # checkpoints of a sharded run are sharded (each rank writes its shards, torch.distributed.checkpoint);
            # `final/` and the exported backbone are whole
            chosen = self.fsdp_config.get("state_dict_type", SHARDED_STATE_DICT)
            if chosen != SHARDED_STATE_DICT:
                raise ValueError(f"fsdp_config state_dict_type {chosen}: checkpoints of a sharded run are saved as "
                                 f"{SHARDED_STATE_DICT} (the final model and the backbone are saved whole).")
            self.fsdp_plugin_args["state_dict_type"] = SHARDED_STATE_DICT


def check_launch_is_distributed(args: TrainingArguments) -> None:
    """Refuse a multi-process launch (torchrun, accelerate launch) that the Trainer would not run as one
    distributed job: each process would train its own model on its share of the data and exit 0."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and args.world_size != launched:
        raise ValueError(
            f"{launched} processes were launched (WORLD_SIZE={launched}) but the Trainer set up "
            f"{args.parallel_mode.value} training with world size {args.world_size}: the processes would train "
            "separately. On a machine without GPUs pass --use_cpu true (gloo DDP); with GPUs check that every "
            "process sees one."
        )


def _has_accelerator() -> bool:
    accelerator = getattr(torch, "accelerator", None)
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()


class TeacherEMACallback(TrainerCallback):
    """teacher <- m * teacher + (1 - m) * student after every real optimizer step (never per micro-batch),
    with m from the cosine momentum schedule at that step. Every rank applies the same update, so the
    teachers stay identical under DDP."""

    def __init__(self, trainer: "Dinov2PretrainingTrainer"):
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.trainer.accelerator.optimizer_step_was_skipped:  # fp16 overflow: the student did not move
            return
        momentum = self.trainer.schedule.momentum_teacher(state.global_step)
        unwrap(self.trainer.model).update_ema(momentum)


class DataEpochCallback(TrainerCallback):
    """Tell the sampler and the dataset which epoch starts (also right after a resume), so the data order
    and the per-sample augmentation seeds follow the epoch."""

    def __init__(self, trainer: "Dinov2PretrainingTrainer"):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        batches = len(train_dataloader)
        steps_per_epoch = max(batches // args.gradient_accumulation_steps
                              + int(batches % args.gradient_accumulation_steps > 0), 1)
        self.trainer.set_data_epoch(state.global_step // steps_per_epoch)


class Dinov2PretrainingTrainer(Trainer):
    """`Trainer` for [`Dinov2ForSelfDistillation`]; see the module docstring.

    Example:
        >>> trainer = Dinov2PretrainingTrainer(model=model, args=args, train_dataset=MultiCropDataset(...),
        ...                                    data_collator=MultiCropCollator(...))
        >>> trainer.train()
        >>> trainer.export_backbone("my-dinov2")  # the teacher, as a modeling_dinov2 checkpoint
    """

    loss_is_scaled_for_ga = False  # the loss is a per-batch mean: divide by the accumulation steps

    def __init__(self, model: Dinov2ForSelfDistillation, args: Dinov2PretrainingArguments, **kwargs):
        if not isinstance(args, Dinov2PretrainingArguments):
            raise TypeError("Dinov2PretrainingTrainer needs Dinov2PretrainingArguments (it carries the recipe).")
        if not isinstance(unwrap(model), Dinov2ForSelfDistillation):
            raise TypeError(f"Expected a Dinov2ForSelfDistillation, got {type(model).__name__}.")
        check_launch_is_distributed(args)
        super().__init__(model=model, args=args, **kwargs)
        self.add_callback(TeacherEMACallback(self))
        self.add_callback(DataEpochCallback(self))
        self.schedule: PretrainingSchedule | None = None
        self.skipped_images = SkippedImages()
        self._metric_sums: dict[str, float] = {}
        self._metric_count = 0
        self.budget: dict | None = None  # what --time_budget_minutes chose, for the logs and the model card

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        # accelerate does not shard on CPU ranks by itself: without this, --fsdp there would run DDP
        self.is_fsdp_enabled = use_requested_fsdp(self.accelerator, self.args) or self.is_fsdp_enabled

    # ------------------------------------------------------------------ data
    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        self._train_sampler = EpochRandomSampler(len(dataset), seed=seed)
        return self._train_sampler

    def set_data_epoch(self, epoch: int) -> None:
        if getattr(self, "_train_sampler", None) is not None:
            self._train_sampler.set_epoch(epoch)
        if hasattr(self.train_dataset, "set_epoch"):
            self.train_dataset.set_epoch(epoch)

    def check_one_batch_fits(self) -> None:
        """Refuse a data set smaller than one global batch: the dataloader drops incomplete batches, so the run
        would take no optimizer step and end as if it had trained."""
        images, world = len(self.train_dataset), max(self.args.world_size, 1)
        needed = self.args.per_device_train_batch_size * world
        if self.args.dataloader_drop_last and images < needed:
            raise ValueError(
                f"{images} training images are fewer than one batch ({self.args.per_device_train_batch_size} per "
                f"process x {world} process(es) = {needed}); incomplete batches are dropped, so no step would be "
                f"taken. Lower --per_device_train_batch_size to at most {max(images // world, 1)}, or add images."
            )

    def steps_per_epoch(self) -> int:
        """Optimizer steps in one pass over the training data (what the Trainer calls an epoch)."""
        world = max(self.args.world_size, 1)
        batches = len(self.train_dataset) // self.args.per_device_train_batch_size
        batches = batches // world if self.args.dataloader_drop_last else math.ceil(batches / world)
        accumulation = self.args.gradient_accumulation_steps
        return max(batches // accumulation + int(batches % accumulation > 0), 1)

    # ------------------------------------------------------------------ optimizer and schedules
    def global_batch_size(self) -> int:
        args = self.args
        return args.per_device_train_batch_size * max(args.world_size, 1) * args.gradient_accumulation_steps

    def build_schedule(self, num_training_steps: int) -> PretrainingSchedule:
        """The run's schedules from the arguments (epochs converted with `epoch_length`)."""
        args = self.args
        epoch = args.epoch_length or self.steps_per_epoch()
        base_lr = args.learning_rate
        if args.scale_lr_with_batch_size:
            base_lr = scaled_learning_rate(base_lr, self.global_batch_size())
        warmup = args.get_warmup_steps(num_training_steps) if args.warmup_steps > 0 else round(args.warmup_epochs * epoch)
        return PretrainingSchedule(
            total_steps=num_training_steps,
            base_lr=base_lr,
            warmup_steps=warmup,
            min_lr=args.min_lr,
            freeze_last_layer_steps=round(args.freeze_last_layer_epochs * epoch),
            weight_decay_start=args.weight_decay,
            weight_decay_end=args.weight_decay_end,
            momentum_teacher_start=args.momentum_teacher,
            momentum_teacher_end=args.final_momentum_teacher,
            teacher_temp_start=args.warmup_teacher_temp,
            teacher_temp_end=args.teacher_temp,
            teacher_temp_warmup_steps=round(args.warmup_teacher_temp_epochs * epoch),
        )

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            target = unwrap(model if model is not None else self.model)
            groups = build_param_groups(target, "student", self.args.layerwise_decay, self.args.patch_embed_lr_mult)
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, target)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        # the teacher temperature and momentum follow the schedule even with a user-supplied lr scheduler
        self.schedule = self.build_schedule(num_training_steps)
        if self.lr_scheduler is None:
            self.lr_scheduler = RecipeScheduler(optimizer if optimizer is not None else self.optimizer, self.schedule)
            self._created_lr_scheduler = True
        return self.lr_scheduler

    # ------------------------------------------------------------------ step
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        self.skipped_images.add(inputs.pop("skipped_images", []))
        inputs["teacher_temp"] = self.schedule.teacher_temp(self.state.global_step)
        outputs = model(**inputs)
        self._stop_if_not_finite(outputs.loss, "loss", outputs)
        for name in LOSS_PARTS:
            self._metric_sums[name] = self._metric_sums.get(name, 0.0) + float(getattr(outputs, name))
        self._metric_count += 1
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def _stop_if_not_finite(self, value: torch.Tensor, what: str, outputs=None) -> None:
        """Raise NonFiniteLossError on every rank if `value` is NaN/inf on any rank (no rank is left hanging)."""
        bad = torch.tensor(0.0 if torch.isfinite(value).all() else 1.0, device=value.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(bad)
        if bad.item() == 0:
            return
        parts = ""
        if outputs is not None:
            parts = ", ".join(f"{name}={float(getattr(outputs, name)):.4g}" for name in ("dino_loss", "ibot_loss", "koleo_loss"))
            parts = f" ({parts})"
        last = last_complete_checkpoint(self.args.output_dir)
        where = f"The last good checkpoint is {last}." if last else "No checkpoint was written yet."
        raise NonFiniteLossError(
            f"Non-finite {what} at step {self.state.global_step}{parts}; training stopped before the optimizer step, "
            f"so no weight was changed. {where} Lower the learning rate, raise the warm-up, or check the data."
        )

    def _clip_grad_norm(self, model):
        """Clip the backbone's and each head's gradients separately (DINOv2 `clip_gradients`), or together."""
        if not self.args.clip_grad_per_module or self.is_deepspeed_enabled:
            norm = super()._clip_grad_norm(model)
        else:  # under FSDP2 the gradients are DTensor shards and the norms are reduced over the ranks
            norms = [
                torch.nn.utils.clip_grad_norm_([p for p in module.parameters() if p.grad is not None], self.args.max_grad_norm)
                for module in unwrap(model).student.values()
            ]
            norms = [n.full_tensor() if hasattr(n, "full_tensor") else n for n in norms]
            norm = torch.linalg.vector_norm(torch.stack(norms))  # the norm of all student gradients
        self._stop_if_not_finite(torch.as_tensor(norm), "gradient norm")
        return norm

    # ------------------------------------------------------------------ logging
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._metric_count:
            stats = torch.tensor([self._metric_sums[name] for name in LOSS_PARTS] + [self._metric_count],
                                 dtype=torch.float64, device=self.args.device)
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(stats)
            logs.update({name: float(stats[i] / stats[-1]) for i, name in enumerate(LOSS_PARTS)})
            self._metric_sums, self._metric_count = {}, 0
            logs["dino_loss_uniform"] = math.log(unwrap(self.model).config.dino_out_dim)  # ln K
            logs.update(self.schedule.values(max(self.state.global_step - 1, 0)))
            logs["learning_rate"] = logs["lr"]  # the Trainer reports group 0's lr, which carries a multiplier
            logs["skipped_images"] = len(self.skipped_images)
        super().log(logs, start_time)

    # ------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        folder = os.path.join(self._get_output_dir(trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.args.should_save:
            self._write_state(folder)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """`Trainer.save_model`; a sharded run's final save gathers the shards into one whole checkpoint (the
        same files as an unsharded run), on every rank's call."""
        if not self.is_fsdp_enabled or _internal_call:
            return super().save_model(output_dir, _internal_call)
        state_dict = full_state_dict(self.model)
        if self.args.should_save:
            unwrap(self.model).save_pretrained(output_dir or self.args.output_dir, state_dict=state_dict)

    def _write_state(self, folder: str) -> None:
        """Skipped images and the schedules, next to the Trainer's state; written last, so its presence marks
        a complete checkpoint."""
        state = {"skipped_images": self.skipped_images.records, "schedule": vars(self.schedule)}
        with open(os.path.join(folder, STATE_FILE), "w") as f:
            json.dump(state, f, indent=2)

    def train(self, resume_from_checkpoint: str | bool | None = None, budget_started_at: float | None = None, **kwargs):
        """`Trainer.train`; `resume_from_checkpoint=True` picks the newest *complete* checkpoint (a run killed
        while saving leaves an incomplete folder behind, which is skipped). With `args.time_budget_minutes`,
        the budget counts from `budget_started_at` (`time.monotonic()`; default: now)."""
        started_at = time.monotonic() if budget_started_at is None else budget_started_at
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No complete checkpoint to resume from in {self.args.output_dir}.")
        self.check_one_batch_fits()
        if self.args.time_budget_minutes is not None:
            self._apply_time_budget(resume_from_checkpoint, started_at)
        if resume_from_checkpoint:
            state_file = os.path.join(resume_from_checkpoint, STATE_FILE)
            if os.path.exists(state_file):
                with open(state_file) as f:
                    self.skipped_images.records.update(json.load(f)["skipped_images"])
            finished = self._finished_state(resume_from_checkpoint)
            if finished is not None:
                return self._load_finished_run(resume_from_checkpoint, finished)
        output = super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        self.report_skipped_images()
        return output

    def _apply_time_budget(self, checkpoint: str | None, started_at: float) -> None:
        """Set `args.max_steps` from the time budget; a resumed run continues its checkpoint's plan."""
        minutes = self.args.time_budget_minutes
        if checkpoint:
            self.args.max_steps = TrainerState.load_from_json(os.path.join(checkpoint, TRAINER_STATE_NAME)).max_steps
            self.budget = {"minutes": minutes, "max_steps": self.args.max_steps, "from": checkpoint}
            logger.info("time budget: resuming %s, which planned %d steps", checkpoint, self.args.max_steps)
            return
        self.args.max_steps, seconds_per_step = budgeted_max_steps(self, minutes, started_at)
        self.budget = {"minutes": minutes, "max_steps": self.args.max_steps, "seconds_per_step": seconds_per_step}
        self.remove_callback(DeadlineCallback)  # a second train() keeps one deadline
        self.add_callback(DeadlineCallback(self, deadline=started_at + 60 * minutes))
        warmup = self.build_schedule(self.args.max_steps).warmup_steps
        if self.args.max_steps <= warmup:
            warnings.warn(f"time_budget_minutes={minutes} leaves room for {self.args.max_steps} steps, no more than "
                          f"the {warmup} warm-up steps: the run will end before the learning rate peaks.", stacklevel=3)

    def _finished_state(self, checkpoint: str) -> TrainerState | None:
        """The checkpoint's TrainerState when it already reached --max_steps (Trainer.train would still run one
        more step when max_steps is not a multiple of the epoch length), else None."""
        path = os.path.join(checkpoint, TRAINER_STATE_NAME)
        if self.args.max_steps <= 0 or not os.path.isfile(path):
            return None
        state = TrainerState.load_from_json(path)
        return state if state.global_step >= self.args.max_steps else None

    def _load_finished_run(self, checkpoint: str, state: TrainerState) -> TrainOutput:
        """Resuming a finished run: load its weights and state, train nothing."""
        self._load_from_checkpoint(checkpoint)
        self.state = state
        logger.info("%s is at step %d of --max_steps %d: nothing left to train.", checkpoint, state.global_step,
                    self.args.max_steps)
        self.report_skipped_images()
        losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
        return TrainOutput(state.global_step, sum(losses) / len(losses) if losses else float("nan"), {})

    def report_skipped_images(self) -> None:
        """Log the bad items (gathered from every rank) and write `skipped_images.json` in the output dir."""
        records = dict(self.skipped_images.records)
        if dist.is_available() and dist.is_initialized():
            everyone = [None] * dist.get_world_size()
            dist.all_gather_object(everyone, records)
            for other in everyone:
                records.update(other)
        self.skipped_images.records = records
        if self.args.should_save:
            os.makedirs(self.args.output_dir, exist_ok=True)
            with open(os.path.join(self.args.output_dir, "skipped_images.json"), "w") as f:
                json.dump(records, f, indent=2)
        if self.is_world_process_zero():
            print(self.skipped_images.summary())

    # ------------------------------------------------------------------ export
    def export_backbone(self, output_dir: str, repo_id: str | None = None, extra_recipe: dict | None = None):
        """Save the teacher backbone (student EMA when distilling) as a `modeling_dinov2` checkpoint with a
        model card recording the recipe; push it to `repo_id` if given. Returns the exported `Dinov2Model`."""
        from modeling_dinov2 import Dinov2Model

        from .export import export_backbone, write_backbone

        recipe = recipe_from_trainer(self)
        recipe.update(extra_recipe or {})
        model = unwrap(self.model)
        if not self.is_fsdp_enabled:
            return export_backbone(model, output_dir, recipe=recipe, repo_id=repo_id) if self.args.should_save else None
        # sharded: every rank takes part in gathering the shards; the main process builds only the exported backbone
        state_dict = full_state_dict(self.model)
        if not self.args.should_save:
            return None
        branch = next(name for name, module in model.named_children() if module is model.exported_branch())
        prefix = f"{branch}.backbone."
        backbone = Dinov2Model(model.exported_branch().backbone.config)
        backbone.load_state_dict({k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)})
        return write_backbone(backbone.eval(), model.config.distillation, output_dir, recipe=recipe, repo_id=repo_id)


def recipe_from_trainer(trainer: Dinov2PretrainingTrainer) -> dict:
    """The facts a model card should record about the run."""
    model = unwrap(trainer.model)
    args = trainer.args
    schedule = trainer.schedule
    recipe = {
        "objective": "DINOv2 distillation from a frozen teacher" if model.config.distillation
        else "DINOv2 self-distillation (DINO + iBOT + KoLeo, EMA teacher)",
        "optimizer steps": trainer.state.global_step,
        "global batch size": trainer.global_batch_size(),
        "images seen": trainer.state.global_step * trainer.global_batch_size(),
        "precision": "bf16 autocast" if args.bf16 else "fp16 autocast" if args.fp16 else "fp32",
        "gradient clipping": f"{args.max_grad_norm} ({'per module' if args.clip_grad_per_module else 'global'})",
        "layer-wise lr decay": args.layerwise_decay,
        "patch embedding lr multiplier": args.patch_embed_lr_mult,
        "DINO head prototypes": model.config.dino_out_dim,
        "iBOT head": "separate" if model.config.ibot_separate_head else "shared with the DINO head",
        "teacher targets": model.config.centering,
        "loss weights (DINO / iBOT / KoLeo)": f"{model.config.dino_loss_weight} / {model.config.ibot_loss_weight} / "
        f"{model.config.koleo_loss_weight}",
        "student temperature": model.config.student_temp,
        "drop path": model.config.backbone_config.drop_path_rate,
        "seed": args.seed,
    }
    if trainer.budget is not None:
        budget = trainer.budget
        notes = [f"{budget['seconds_per_step']:.3f} s per step measured"] if "seconds_per_step" in budget else []
        replans = budget.get("replanned", [])  # DeadlineCallback: the machine's speed changed during the run
        if replans:
            steps = f"step {replans[0][0]}" if len(replans) == 1 else f"steps {replans[0][0]}-{replans[-1][0]}"
            plans = " -> ".join(str(plan) for plan in [replans[0][1]] + [new for _, _, new in replans])
            notes.append(f"re-planned at {steps}: {plans}")
        recipe["time budget"] = f"{budget['minutes']:g} min -> {budget['max_steps']} steps" + (
            f" ({'; '.join(notes)})" if notes else "")
    if schedule is not None:
        recipe.update({
            "peak learning rate": schedule.base_lr,
            "lr warm-up steps": schedule.warmup_steps,
            "min learning rate": schedule.min_lr,
            "weight decay": f"{schedule.weight_decay_start} -> {schedule.weight_decay_end} (cosine)",
            "teacher momentum": f"{schedule.momentum_teacher_start} -> {schedule.momentum_teacher_end} (cosine)",
            "teacher temperature": f"{schedule.teacher_temp_start} -> {schedule.teacher_temp_end} over "
            f"{schedule.teacher_temp_warmup_steps} steps",
            "last layer frozen for steps": schedule.freeze_last_layer_steps,
        })
    if trainer.state.log_history:
        last = [entry for entry in trainer.state.log_history if "loss" in entry]
        if last:
            recipe["final logged loss"] = round(last[-1]["loss"], 4)
    recipe["skipped images"] = len(trainer.skipped_images)
    return recipe


def end_distributed() -> None:
    """Wait for every rank, then destroy the process group (a no-op in one process). Call it once a
    multi-process run is done: leaving the gloo group to interpreter shutdown can abort a rank with
    "terminate called without an active exception" and fail an otherwise finished `torchrun` job."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def checkpoint_dirs(output_dir: str) -> list[str]:
    """The `checkpoint-N` folders in `output_dir`, complete or not, by step."""
    if not os.path.isdir(output_dir):
        return []
    names = [name for name in os.listdir(output_dir)
             if name.startswith(f"{PREFIX_CHECKPOINT_DIR}-") and name.split("-")[-1].isdigit()
             and os.path.isdir(os.path.join(output_dir, name))]
    return [os.path.join(output_dir, name) for name in sorted(names, key=lambda name: int(name.split("-")[-1]))]


def last_complete_checkpoint(output_dir: str) -> str | None:
    """Newest `checkpoint-N` folder in `output_dir` that has the pretraining state (written last)."""
    complete = [path for path in checkpoint_dirs(output_dir) if os.path.exists(os.path.join(path, STATE_FILE))]
    return complete[-1] if complete else None
