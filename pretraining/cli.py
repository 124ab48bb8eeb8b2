"""`dinov2-pretrain`: DINOv2 self-supervised pretraining (or distillation) from the command line.

    dinov2-pretrain --output_dir runs/tiny                           # tiny ViT on Fashion-MNIST, CPU, minutes
    dinov2-pretrain --preset vit_small --train_dir photos/ --output_dir runs/vits14 --bf16 true
    accelerate launch -m pretraining.cli --preset vit_large --dataset_name my/images --output_dir runs/vitl
    dinov2-pretrain --preset vit_small --model_name_or_path facebook/dinov2-small ...   # continued pretraining
    dinov2-pretrain --preset vit_small --distill_from runs/vitl/final --output_dir runs/distilled
    dinov2-pretrain --output_dir runs/tiny --resume_from_checkpoint last                # after a crash
    dinov2-pretrain --output_dir runs/tiny --overwrite_output_dir true                  # start that run over
    dinov2-pretrain --output_dir runs/tiny --time_budget_minutes 10                     # as many steps as fit

Every option of `transformers.TrainingArguments` works too (run with --help).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace

from transformers import HfArgumentParser, set_seed

from modeling_dinov2 import PRESETS as ARCHITECTURES
from modeling_dinov2.hardware import reuse_freed_memory
from modeling_dinov2.output_lock import EarlierResultsError, OutputDirBusyError, hold_output_dir, replace_earlier_results

from .configuration_self_distillation import PROTOTYPES
from .data import DEFAULT_MAX_PIXELS, DEFAULT_MIN_IMAGE_SIZE
from .builders import build_data, build_model
from .high_res import check_high_res_size, switch_step, train_with_high_res_phase
from .modeling_self_distillation import Dinov2ForSelfDistillation
from .presets import RECIPES, TINY_DEFAULT_DATA, preset
from .trainer import (
    Dinov2PretrainingArguments,
    Dinov2PretrainingTrainer,
    NonFiniteLossError,
    checkpoint_dirs,
    end_distributed,
    last_complete_checkpoint,
)

logger = logging.getLogger("dinov2-pretrain")

DESCRIPTION = """\
Pretrain a DINOv2 vision transformer on your own images with self-distillation (DINO + iBOT + KoLeo losses,
EMA teacher), or distil a small student from a trained big one. Runs on one CPU or many GPUs
(`accelerate launch` / `torchrun`). At the end the teacher backbone is exported as a modeling_dinov2 checkpoint
(`AutoModel.from_pretrained(<output_dir>/backbone, trust_remote_code=True)`) with a model card recording the recipe.

Start with a preset; every option below overrides it:
  tiny        4-block 128-wide ViT, patch 7, 28/14-px crops, 2900 steps: ~10.5 min on 2 CPU cores (the default;
              without --train_dir or --dataset_name it trains on the Fashion-MNIST train split, Debian package)
  vit_small   ViT-S/14, ssl_default_config.yaml: 2x224 + 8x98 crops, 65536 prototypes, 125k steps
  vit_base    ViT-B/14, same recipe
  vit_large   ViT-L/14, vitl14.yaml: SwiGLU, separate iBOT head, Sinkhorn-Knopp, 625k steps
  vit_giant2  ViT-g/14, vitg14.yaml

Data: --train_dir FOLDER (images in any sub-folder), or --dataset_name (a `datasets` Hub name, a folder saved with
`save_to_disk`, or `fashion_mnist` from the Debian package) with --image_column. Unreadable images are skipped,
counted in the logs and listed in <output_dir>/skipped_images.json.
"""

EPILOG = """\
DINOv2 recipe options (in the last group, with all of transformers.TrainingArguments):
  --learning_rate (per 1024 images, scaled by sqrt(batch/1024)), --min_lr, --warmup_epochs, --epoch_length,
  --weight_decay / --weight_decay_end, --momentum_teacher / --final_momentum_teacher, --warmup_teacher_temp /
  --teacher_temp / --warmup_teacher_temp_epochs, --freeze_last_layer_epochs, --layerwise_decay,
  --patch_embed_lr_mult, --max_grad_norm, --per_device_train_batch_size, --max_steps, --bf16, --save_steps

examples:
  dinov2-pretrain --output_dir runs/tiny
  dinov2-pretrain --preset vit_small --train_dir photos/ --output_dir runs/vits14 --bf16 true --max_steps 20000
  torchrun --nproc_per_node 8 -m pretraining.cli --preset vit_large --train_dir /data/images --output_dir runs/vitl
  dinov2-pretrain --output_dir runs/tiny --resume_from_checkpoint last   # continue the run in runs/tiny
  dinov2-pretrain --output_dir runs/tiny --overwrite_output_dir true      # delete it and start over

The logs show the total loss and its parts (dino_loss, ibot_loss, koleo_loss), every schedule value (lr,
last_layer_lr, weight_decay, momentum, teacher_temp) and two collapse indicators: teacher_entropy (ln K =
dino_loss_uniform means uniform, uninformative targets) and prototype_usage.
"""


@dataclass
class ModelArguments:
    _argument_group_name = "Model"

    arch: str = field(
        default="tiny",
        metadata={"help": f"Backbone size: {', '.join(sorted(ARCHITECTURES))}, or 'tiny' (the sizes given by "
                  "--hidden_size/--num_hidden_layers/--num_attention_heads, which the tiny preset sets).",
                  "choices": sorted(ARCHITECTURES) + ["tiny"]},
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Continue pretraining from a backbone checkpoint (modeling_dinov2 or stock transformers "
                  "dinov2, folder or Hub id; new heads) or from a Dinov2ForSelfDistillation checkpoint."},
    )
    distill_from: str | None = field(
        default=None,
        metadata={"help": "Distil the student from this frozen Dinov2ForSelfDistillation checkpoint (its teacher "
                  "backbone and heads). Turns off student masking and drop path (DINOv2 paper, Sec. 5)."},
    )
    hidden_size: int | None = field(default=None, metadata={"help": "Override the width of the arch."})
    num_hidden_layers: int | None = field(default=None, metadata={"help": "Override the depth of the arch."})
    num_attention_heads: int | None = field(default=None, metadata={"help": "Override the heads of the arch."})
    ffn_type: str | None = field(default=None, metadata={"help": "'mlp' or 'swiglu' (default: the arch's)."})
    mlp_ratio: float | None = field(default=None, metadata={"help": "Override the FFN width / hidden size (4)."})
    patch_size: int = field(default=14, metadata={"help": "Patch size; crop sizes must be multiples of it."})
    num_register_tokens: int = field(default=0, metadata={"help": "Register tokens (4 for the _reg4 models)."})
    drop_path_rate: float = field(default=0.3, metadata={"help": "Stochastic depth of the student (uniform)."})
    layerscale_value: float = field(default=1e-5, metadata={"help": "Initial LayerScale (1e-5 for pretraining)."})
    packed_forward: bool = field(
        default=False,
        metadata={"help": "Run the student's global and local crops through the blocks as one packed token sequence "
                  "(attention per crop), as the original does on GPUs; false (faster on CPU): one forward per crop "
                  "size. Same result."},
    )
    efficient_drop_path: bool = field(
        default=True,
        metadata={"help": "Stochastic depth above 0.1 computes each residual only on the kept crops (the original's "
                  "efficient version); false: Bernoulli drop path on the whole batch."},
    )
    dino_out_dim: int = field(default=PROTOTYPES, metadata={"help": "Prototypes K of the DINO head."})
    dino_hidden_dim: int = field(default=2048, metadata={"help": "Hidden width of the head MLPs."})
    dino_bottleneck_dim: int = field(default=256, metadata={"help": "L2-normalised bottleneck of the DINO head."})
    ibot_separate_head: bool = field(default=False, metadata={"help": "Separate iBOT head instead of a shared one."})
    ibot_out_dim: int = field(default=PROTOTYPES, metadata={"help": "Prototypes of a separate iBOT head."})
    ibot_bottleneck_dim: int = field(default=256, metadata={"help": "Bottleneck of a separate iBOT head."})
    centering: str = field(default="softmax_centering", metadata={
        "help": "Teacher targets: softmax of the logits minus an EMA center, or Sinkhorn-Knopp (ViT-L/g).",
        "choices": ["softmax_centering", "sinkhorn_knopp"]})
    student_temp: float = field(default=0.1, metadata={"help": "Student temperature."})
    dino_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the DINO loss."})
    ibot_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the iBOT loss."})
    koleo_loss_weight: float = field(default=0.1, metadata={"help": "Weight of the KoLeo regulariser."})
    koleo_distributed: bool = field(
        default=False, metadata={"help": "KoLeo over the global batch of all ranks (the original: per GPU)."}
    )
    attn_implementation: str = field(
        default="sdpa",
        metadata={"help": "Attention kernel of student and teacher: sdpa, eager, ... (the tiny preset uses eager: with "
                  "17-token sequences and bf16 on CPU it makes the whole step 1.6x faster than sdpa).",
                  "choices": ["sdpa", "eager", "flash_attention_2", "flex_attention"]},
    )


@dataclass
class DataArguments:
    _argument_group_name = "Data and augmentation"

    train_dir: str | None = field(default=None, metadata={"help": "Folder of training images (searched recursively)."})
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "`datasets` Hub name, a `save_to_disk` folder, or 'fashion_mnist' (Debian package)."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Config name of the dataset."})
    dataset_split: str = field(default="train", metadata={"help": "Split to train on."})
    image_column: str = field(default="image", metadata={"help": "Column holding the images."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N images."})
    global_crops_size: int = field(default=224, metadata={"help": "Side of the 2 global crops (and the position table)."})
    local_crops_size: int = field(default=98, metadata={"help": "Side of the local crops (a multiple of the patch)."})
    local_crops_number: int = field(default=8, metadata={"help": "Local crops per image (0 disables them)."})
    global_crops_scale: list[float] = field(default_factory=lambda: [0.32, 1.0], metadata={"help": "Area range."})
    local_crops_scale: list[float] = field(default_factory=lambda: [0.05, 0.32], metadata={"help": "Area range."})
    mask_ratio_min_max: list[float] = field(default_factory=lambda: [0.1, 0.5], metadata={"help": "iBOT mask ratios."})
    mask_probability: float = field(default=0.5, metadata={"help": "Fraction of global crops that are masked."})
    mask_sampling: str = field(
        default="batch",
        metadata={"help": "'batch': mask ratios stratified over each process's batch (the original); 'sample': each "
                  "global crop's mask drawn from its own sample's seed, so N processes x batch b mask exactly as one "
                  "process x batch N*b.", "choices": ["batch", "sample"]},
    )
    original_blur_bug: bool = field(
        default=False,
        metadata={"help": "Blur with the inverted probabilities the released models used (0 / 0.9 / 0.5) instead "
                  "of the nominal 1 / 0.1 / 0.5."},
    )
    blur_probabilities: list[float] | None = field(
        default=None,
        metadata={"help": "Gaussian-blur probabilities of global crop 1, global crop 2 and the local crops (default: "
                  "the original's 1.0 0.1 0.5, or 0.0 0.9 0.5 with --original_blur_bug); 0 0 0 turns blur off."},
    )
    colour_jitter_probability: float = field(default=0.8, metadata={"help": "Probability of the colour jitter."})
    solarize_probability: float = field(default=0.2, metadata={"help": "Probability of solarizing global crop 2."})
    min_image_size: int = field(default=DEFAULT_MIN_IMAGE_SIZE, metadata={"help": "Skip images smaller than this."})
    max_image_pixels: int = field(
        default=DEFAULT_MAX_PIXELS,
        metadata={"help": "Decode larger images scaled down to this many pixels (aspect ratio kept; JPEGs at a reduced "
                  "scale), so one huge file costs tens of MB once decoded; 0 keeps every image at full size."},
    )
    cache_images: bool = field(
        default=False,
        metadata={"help": "Keep the decoded images in memory, so each is decoded once per run, not once per epoch "
                  "(for data sets that fit in RAM; the tiny preset turns it on)."},
    )
    high_res_steps: int = field(
        default=0,
        metadata={"help": "Train the last N steps on larger global crops (--high_res_global_crops_size): the original's "
                  "high-resolution phase (518 px for the final 10k iterations). The schedules continue through the "
                  "switch, which is a checkpoint (checkpoint-<max_steps - N>); resuming on either side of it is exact."},
    )
    high_res_global_crops_size: int | None = field(
        default=None,
        metadata={"help": "Side of the global crops in the high-resolution phase (a multiple of the patch size).",
                  "aliases": ["--high_res_global_crop_size"]},
    )
    batched_augmentation: bool = field(
        default=False,
        metadata={"help": "Make the crops of a whole batch at once in the collator (uint8 tensors, bilinear resampling; "
                  "~20x faster for small images such as 28-px Fashion-MNIST, where per-image torchvision transforms "
                  "cost as much as the training step). The tiny preset turns it on."},
    )


@dataclass
class ExportArguments:
    _argument_group_name = "Preset and export"

    preset: str = field(default="tiny", metadata={"help": f"Recipe to start from: {', '.join(RECIPES)}."})
    export_dir: str | None = field(
        default=None, metadata={"help": "Where the teacher backbone is saved (default: <output_dir>/backbone)."}
    )
    export_transformers_dir: str | None = field(
        default=None, metadata={"help": "Also write a copy that stock transformers.Dinov2Model loads."}
    )
    export_hub_repo_id: str | None = field(
        default=None, metadata={"help": "Push the exported backbone and its model card to this Hub repo."}
    )
    export_only: bool = field(
        default=False,
        metadata={"help": "Do not train: export the backbone of --model_name_or_path (a Dinov2ForSelfDistillation "
                  "checkpoint such as <output_dir>/checkpoint-N)."},
    )


def build_parser(preset_name: str) -> HfArgumentParser:
    parser = HfArgumentParser(
        (ExportArguments, ModelArguments, DataArguments, Dinov2PretrainingArguments),
        prog="dinov2-pretrain",
        usage="dinov2-pretrain [--preset NAME] (--train_dir DIR | --dataset_name NAME) [--output_dir DIR] [options]",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    values = preset(preset_name)
    parser.set_defaults(preset=preset_name, output_dir=os.path.join("runs", f"dinov2-{preset_name}"),
                        **values["model"], **values["data"], **values["training"])
    return parser


def parse_args(argv: list[str] | None = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default="tiny")
    known, _ = pre.parse_known_args(argv)
    if known.preset not in RECIPES:
        raise SystemExit(f"dinov2-pretrain: error: unknown --preset {known.preset!r}; choose one of {sorted(RECIPES)}")
    export_args, model_args, data_args, training_args = build_parser(known.preset).parse_args_into_dataclasses(argv)
    if data_args.high_res_steps:
        if training_args.time_budget_minutes is not None:
            raise SystemExit("dinov2-pretrain: error: --high_res_steps counts from the end of a fixed --max_steps; "
                             "it does not combine with --time_budget_minutes.")
        try:
            switch_step(training_args.max_steps, data_args.high_res_steps)
            check_high_res_size(data_args.high_res_global_crops_size, data_args.global_crops_size, model_args.patch_size)
        except ValueError as error:
            raise SystemExit(f"dinov2-pretrain: error: {error}") from None
    if known.preset == "tiny" and not data_args.train_dir and not data_args.dataset_name:
        data_args.dataset_name = TINY_DEFAULT_DATA["dataset_name"]
        data_args.max_train_samples = data_args.max_train_samples or TINY_DEFAULT_DATA["max_train_samples"]
    return export_args, model_args, data_args, training_args


def export(model, export_args: ExportArguments, output_dir: str, trainer: Dinov2PretrainingTrainer | None, recipe: dict):
    from modeling_dinov2.convert import to_transformers

    from .export import export_backbone

    export_dir = export_args.export_dir or os.path.join(output_dir, "backbone")
    if trainer is not None:
        trainer.export_backbone(export_dir, repo_id=export_args.export_hub_repo_id, extra_recipe=recipe)
        if not trainer.args.should_save:  # other ranks: the main process writes the files
            return export_dir
    else:
        export_backbone(model, export_dir, recipe=recipe, repo_id=export_args.export_hub_repo_id)
    logger.info("Exported the backbone to %s (AutoModel.from_pretrained(%r, trust_remote_code=True))", export_dir, export_dir)
    if export_args.export_transformers_dir:
        to_transformers(export_dir, export_args.export_transformers_dir)
        logger.info("Wrote a stock transformers copy to %s", export_args.export_transformers_dir)
    if export_args.export_hub_repo_id:
        logger.info("Pushed the backbone to %s", export_args.export_hub_repo_id)
    return export_dir


def earlier_run_outputs(output_dir: str) -> list[str]:
    """What a training run of this CLI left in `output_dir`: checkpoints, `final`, the exported `backbone`,
    `trainer_state.json`."""
    named = [os.path.join(output_dir, name) for name in ("final", "backbone", "trainer_state.json")]
    return checkpoint_dirs(output_dir) + [path for path in named if os.path.exists(path)]


def prepare_output_dir(training_args: Dinov2PretrainingArguments) -> str | None:
    """The checkpoint to resume from, or None for a new run. A new run refuses an output dir that holds an
    earlier run (resuming it later could continue the earlier run's newest checkpoint instead), unless
    --overwrite_output_dir deletes that run first."""
    output_dir, resume = training_args.output_dir, training_args.resume_from_checkpoint
    if resume and training_args.overwrite_output_dir:
        raise ValueError("--resume_from_checkpoint continues the run in --output_dir; --overwrite_output_dir "
                         "deletes it. Pass one of them.")
    if resume in ("last", "true", "True"):
        resume = last_complete_checkpoint(output_dir)
        if resume is None:
            raise ValueError(f"--resume_from_checkpoint last: no complete checkpoint in {output_dir}.")
    if resume:
        return resume
    replace_earlier_results(
        output_dir, earlier_run_outputs(output_dir), overwrite=training_args.overwrite_output_dir,
        how_to_overwrite="Pass --resume_from_checkpoint last to continue it, --overwrite_output_dir true to delete it "
        "and start over, or another --output_dir.",
        delete=training_args.should_save,  # the main process deletes; the others do not read them
    )
    return None


def train_and_export(export_args: ExportArguments, model_args: ModelArguments, data_args: DataArguments,
                     training_args: Dinov2PretrainingArguments, started_at: float) -> None:
    """The run: prepare the output dir, train (or resume), save `final/`, export the teacher backbone."""
    resume = prepare_output_dir(training_args)
    set_seed(training_args.seed)
    model = build_model(model_args, data_args)
    patch_size = model.config.backbone_config.patch_size
    dataset, collator = build_data(data_args, patch_size, training_args.seed)
    trainer = Dinov2PretrainingTrainer(model=model, args=training_args, train_dataset=dataset, data_collator=collator)
    switch = switch_step(training_args.max_steps, data_args.high_res_steps)
    if switch is None:
        trainer.train(resume_from_checkpoint=resume, budget_started_at=started_at)
    else:
        high_res = replace(data_args, global_crops_size=data_args.high_res_global_crops_size)
        train_with_high_res_phase(trainer, resume, switch, lambda: build_data(high_res, patch_size, training_args.seed))
    if trainer.state.global_step == 0:
        raise ValueError("the run took no optimizer step, so there is no trained model to save or export "
                         f"(--max_steps {training_args.max_steps}).")
    trainer.save_state()  # trainer_state.json (the log history: loss curves) in the output dir
    final_dir = os.path.join(training_args.output_dir, "final")
    trainer.save_model(final_dir)  # student + teacher + heads + centers: continue or distil from here
    source = data_args.train_dir or data_args.dataset_name
    recipe = {"preset": export_args.preset, "data": f"{source} ({len(dataset)} images)",
              "crops": f"2 x {data_args.global_crops_size} px + {data_args.local_crops_number} x "
              f"{data_args.local_crops_size} px"}
    if data_args.high_res_steps:
        recipe["high-resolution phase"] = (f"the last {data_args.high_res_steps} steps with "
                                           f"{data_args.high_res_global_crops_size}-px global crops")
    export(model, export_args, training_args.output_dir, trainer, recipe)


def main(argv: list[str] | None = None) -> int:
    started_at = time.monotonic()  # --time_budget_minutes counts from here
    reuse_freed_memory()  # fewer page faults for the many freshly allocated activations (hardware.py)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    export_args, model_args, data_args, training_args = parse_args(argv)
    try:
        if export_args.export_only:
            if not model_args.model_name_or_path:
                raise ValueError("--export_only needs --model_name_or_path (a Dinov2ForSelfDistillation checkpoint).")
            model = Dinov2ForSelfDistillation.from_pretrained(model_args.model_name_or_path)
            recipe = {"exported from": model_args.model_name_or_path}
            export(model, export_args, training_args.output_dir, None, recipe)
            return 0
        # one job per output dir: the main process holds it (a second job is refused, naming this one's PID)
        holds_output_dir = training_args.process_index == 0
        with hold_output_dir(training_args.output_dir, "dinov2-pretrain") if holds_output_dir else nullcontext():
            train_and_export(export_args, model_args, data_args, training_args, started_at)
    except (ValueError, FileNotFoundError, OutputDirBusyError, EarlierResultsError) as error:
        print(f"dinov2-pretrain: error: {error}", file=sys.stderr)
        return 1
    except NonFiniteLossError as error:
        print(f"dinov2-pretrain: training stopped: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        checkpoint = last_complete_checkpoint(training_args.output_dir)
        where = (f"--resume_from_checkpoint last continues from {checkpoint}" if checkpoint
                 else "no checkpoint was written yet (every --save_steps steps)")
        print(f"\ndinov2-pretrain: interrupted; {where}.", file=sys.stderr)
        return 130
    end_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
