"""A tiny DINOv2 pretraining run for the resume and DDP tests (tests/test_pretraining_resume.py,
tests/test_pretraining_ddp.py); also importable for its builders.

    python tests/ddp_pretraining_helper.py --output_dir D --batch_size 8 --max_steps 6
    python -m torch.distributed.run --nproc_per_node 2 tests/ddp_pretraining_helper.py --batch_size 4 ...

Writes `<output_dir>/result_rank<R>.pt` with the final student / teacher / center weights and the log
history. `--pause_after_save N` sleeps for an hour once checkpoint-N is saved, so a test can SIGKILL the
process at a known point.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import datasets  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import TrainerCallback, set_seed  # noqa: E402

from modeling_dinov2 import Dinov2Config  # noqa: E402
from pretraining.augmentations import MultiCropAugmentation  # noqa: E402
from pretraining.collate import MultiCropCollator  # noqa: E402
from pretraining.configuration_self_distillation import Dinov2SelfDistillationConfig  # noqa: E402
from pretraining.data import MultiCropDataset  # noqa: E402
from pretraining.modeling_self_distillation import Dinov2ForSelfDistillation  # noqa: E402
from pretraining.sharding import full_state_dict  # noqa: E402
from pretraining.trainer import Dinov2PretrainingArguments, Dinov2PretrainingTrainer, end_distributed  # noqa: E402

GLOBAL, LOCAL, PATCH = 16, 8, 4


def tiny_model(drop_path_rate: float = 0.0, koleo_distributed: bool = False, layerscale_value: float = 0.1,
               **kwargs) -> Dinov2ForSelfDistillation:
    # LayerScale 0.1 rather than 1e-5: with 1e-5 the block gradients are so small that AdamW's normalisation turns
    # their last-bit rounding differences (e.g. 1 vs 2 ranks summing in another order) into visible weight changes
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=PATCH,
                            image_size=GLOBAL, drop_path_rate=drop_path_rate, layerscale_value=layerscale_value)
    config = Dinov2SelfDistillationConfig(backbone_config=backbone, dino_out_dim=32, dino_hidden_dim=32,
                                          dino_bottleneck_dim=8, koleo_distributed=koleo_distributed, **kwargs)
    return Dinov2ForSelfDistillation(config)


def synthetic_images(n: int, seed: int = 0) -> datasets.Dataset:
    """n random 24x24 RGB images (smooth blobs, so crops differ) in a datasets.Dataset image column."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        images.append(Image.fromarray(small).resize((24, 24), Image.BILINEAR))
    return datasets.Dataset.from_dict({"image": images}, features=datasets.Features({"image": datasets.Image()}))


class PauseAfterSave(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            print(f"PAUSED at {self.step}", flush=True)
            time.sleep(3600)


def unwrap_state(trainer) -> dict:
    """The whole model's state dict (gathered from the shards under FSDP: on rank 0; {} on the others)."""
    if trainer.is_fsdp_enabled:
        return full_state_dict(trainer.model)
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def mixed_precision_policy(trainer) -> dict | None:
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    policy = getattr(plugin, "mixed_precision_policy", None)
    return None if policy is None else {k: str(getattr(policy, k)) for k in ("param_dtype", "reduce_dtype")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--grad_accum", type=int, default=1)
    parser.add_argument("--max_steps", type=int, default=6)
    parser.add_argument("--num_images", type=int, default=32)
    parser.add_argument("--save_steps", type=int, default=0)
    parser.add_argument("--pause_after_save", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--drop_path", type=float, default=0.0)
    parser.add_argument("--koleo_distributed", action="store_true")
    parser.add_argument("--per_sample_masks", action="store_true")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--fsdp", action="store_true", help="FSDP2 (fully_shard) instead of DDP")
    parser.add_argument("--time_budget_minutes", type=float, default=None)
    parser.add_argument("--sinkhorn", action="store_true", help="the ViT-L/g variant: Sinkhorn-Knopp, separate iBOT head")
    options = parser.parse_args()

    torch.set_num_threads(1)
    set_seed(0)
    variant = dict(centering="sinkhorn_knopp", ibot_separate_head=True, ibot_out_dim=16) if options.sinkhorn else {}
    model = tiny_model(options.drop_path, options.koleo_distributed, **variant)
    augmentation = MultiCropAugmentation(GLOBAL, LOCAL, n_local_crops=2, blur_kernel_size=3)
    dataset = MultiCropDataset(synthetic_images(options.num_images), augmentation, seed=0)
    collator = MultiCropCollator(patch_size=PATCH, global_crops_size=GLOBAL,
                                 mask_sampling="sample" if options.per_sample_masks else "batch")
    args = Dinov2PretrainingArguments(
        output_dir=options.output_dir,
        per_device_train_batch_size=options.batch_size,
        gradient_accumulation_steps=options.grad_accum,
        max_steps=options.max_steps,
        learning_rate=5e-3,
        scale_lr_with_batch_size=False,
        warmup_steps=2,
        epoch_length=3,  # so the teacher-temperature warm-up and the last-layer freeze end inside the run
        warmup_teacher_temp_epochs=1,
        freeze_last_layer_epochs=1,
        save_strategy="steps" if options.save_steps else "no",
        save_steps=options.save_steps or 500,
        logging_steps=1,
        report_to="none",
        disable_tqdm=True,
        seed=0,
        bf16=options.bf16,  # use_cpu is left to Dinov2PretrainingArguments (a CPU-only machine: gloo DDP)
        time_budget_minutes=options.time_budget_minutes,
        fsdp=options.fsdp or None,
    )
    trainer = Dinov2PretrainingTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
    if options.pause_after_save:
        trainer.add_callback(PauseAfterSave(options.pause_after_save))
    trainer.train(resume_from_checkpoint=True if options.resume else None)
    rank = trainer.args.process_index
    state = unwrap_state(trainer)
    result = {
        "student": {k[len("student."):]: v for k, v in state.items() if k.startswith("student.")},
        "teacher": {k[len("teacher."):]: v for k, v in state.items() if k.startswith("teacher.")},
        "dino_center": state.get("dino_centering.center"),
        "ibot_center": state.get("ibot_centering.center"),
        "log_history": trainer.state.log_history,
        "world_size": trainer.args.world_size,
        "global_step": trainer.state.global_step,
        "max_steps": trainer.state.max_steps,
        "budget": trainer.budget,
        "wrapped_in_ddp": isinstance(trainer.model_wrapped, torch.nn.parallel.DistributedDataParallel),
        "fsdp_enabled": trainer.is_fsdp_enabled,
        "mixed_precision": mixed_precision_policy(trainer),
        # parameter name -> (type, whole shape, this rank's local shape)
        "shards": {name: (type(p).__name__, tuple(p.shape), tuple(p.to_local().shape) if hasattr(p, "to_local") else None)
                   for name, p in trainer.model.named_parameters()},
    }
    torch.save(result, os.path.join(options.output_dir, f"result_rank{rank}.pt"))
    end_distributed()


if __name__ == "__main__":
    main()
