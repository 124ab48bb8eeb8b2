"""Full fine-tuning of a DINOv2 backbone for image classification with `transformers.Trainer`.

The model is `modeling_dinov2.Dinov2ForImageClassification` (what `AutoModelForImageClassification`
builds for our checkpoints): a linear head on [CLS, mean patch token], as transformers' class and the
released 1-layer heads. Any modeling_dinov2 or stock transformers DINOv2 checkpoint can start it (a new
head is initialised). Training images get RandomResizedCrop (bicubic) + flip, evaluation images DINOv2's
eval transform; accuracy (top-1 / top-5) is computed offline in `compute_metrics`. The fine-tuned model,
its preprocessing config and `eval_results.json` are written to `--output_dir`.

Usage:
    python examples/finetune.py --model facebook/dinov2-small --output_dir dinov2-small-fmnist \
        --learning_rate 2e-5 --num_train_epochs 3          # online
    python examples/finetune.py --model path/to/checkpoint --image_size 28 --resize_size 28 \
        --train_limit 10000 --test_limit 2000 --output_dir finetuned --bf16   # offline, Fashion-MNIST

Every `transformers.TrainingArguments` option is accepted (see --help); the defaults here evaluate after
each epoch, log every 10 steps and save only the final model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
from transformers import EvalPrediction, HfArgumentParser, Trainer, TrainingArguments
from transformers.trainer_utils import IntervalStrategy, SaveStrategy

from evaluation.data import class_names
from evaluation.features import DEFAULT_MODEL, DatasetArguments, pil_to_uint8, train_transform
from modeling_dinov2.preprocessing import default_resize_size, eval_transform

DINOV2_MODEL_TYPES = ("dinov2_ssl", "dinov2", "dinov2_with_registers")


@dataclass
class FinetuneArguments:
    model: str = field(
        default=DEFAULT_MODEL,
        metadata={"help": "Checkpoint folder or Hub id (modeling_dinov2, stock transformers DINOv2, or any "
                  "AutoModelForImageClassification model)."},
    )
    image_size: int = field(default=224, metadata={"help": "Input side; a multiple of the patch size."})
    resize_size: Optional[int] = field(
        default=None, metadata={"help": "Eval resize before the centre crop (default image_size * 256 / 224)."}
    )
    min_crop_scale: float = field(
        default=0.08, metadata={"help": "Lower bound of RandomResizedCrop's area scale for training images."}
    )
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Re-initialise an existing head whose number of classes differs."}
    )


@dataclass
class FinetuneTrainingArguments(TrainingArguments):
    """`TrainingArguments` with defaults for this example."""

    output_dir: Optional[str] = field(default="dinov2-finetuned", metadata={"help": "Where the model is written."})
    eval_strategy: IntervalStrategy | str = field(default="epoch", metadata={"help": "When to evaluate."})
    save_strategy: SaveStrategy | str = field(default="no", metadata={"help": "When to checkpoint (final save always)."})
    logging_steps: float = field(default=10, metadata={"help": "Log the loss every N steps."})
    learning_rate: float = field(default=2e-5, metadata={"help": "Peak AdamW learning rate."})
    warmup_steps: float = field(default=0.1, metadata={"help": "Warm-up steps (or fraction of steps if < 1)."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Training batch size per device."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Evaluation batch size per device."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay False: the transforms read the raw image column."}
    )
    dataloader_pin_memory: bool = field(
        default_factory=torch.cuda.is_available, metadata={"help": "Pin host memory (default: when CUDA is there)."}
    )


def load_classifier(name_or_path: str, labels: Sequence[str], ignore_mismatched_sizes: bool = False):
    """An image classifier with len(labels) outputs, its head new unless the checkpoint has a fitting one.

    DINOv2 checkpoints (ours and transformers' `dinov2` / `dinov2_with_registers`) load into
    `modeling_dinov2.Dinov2ForImageClassification`; other model types go through
    `AutoModelForImageClassification`.
    """
    import modeling_dinov2
    from transformers import AutoConfig, AutoModelForImageClassification

    id2label = {i: name for i, name in enumerate(labels)}
    kwargs = dict(num_labels=len(labels), id2label=id2label, label2id={v: k for k, v in id2label.items()},
                  ignore_mismatched_sizes=ignore_mismatched_sizes)
    try:
        model_type = AutoConfig.from_pretrained(name_or_path).model_type
    except OSError as error:
        raise OSError(
            f"Could not load the checkpoint {name_or_path!r}: {error}\nWithout network access pass a local folder."
        ) from error
    if model_type in DINOV2_MODEL_TYPES:
        return modeling_dinov2.Dinov2ForImageClassification.from_pretrained(name_or_path, **kwargs)
    return AutoModelForImageClassification.from_pretrained(name_or_path, **kwargs)


def image_processor_for(image_size: int, resize_size: int):
    """A `BitImageProcessor` equal to the eval transform used here, saved beside the fine-tuned model."""
    from modeling_dinov2 import make_image_processor

    return make_image_processor(crop_size=image_size, resize_size=resize_size)


def with_pixel_values(dataset, transform):
    """`dataset` with `pixel_values` (transformed image) and `labels`, computed lazily per batch."""

    def apply(batch):
        return {"pixel_values": [transform(pil_to_uint8(image)).as_subclass(torch.Tensor) for image in batch["image"]],
                "labels": batch["label"]}

    return dataset.with_transform(apply)


def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.stack([r["pixel_values"] for r in rows]),
            "labels": torch.tensor([r["labels"] for r in rows])}


def compute_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
    """Top-1 / top-5 accuracy from the Trainer's logits, with this package's `evaluate` module (offline)."""
    from modeling_dinov2 import metrics

    logits = eval_prediction.predictions
    logits = logits[0] if isinstance(logits, tuple) else logits
    return metrics.load("topk_accuracy").compute(predictions=np.asarray(logits),
                                                 references=np.asarray(eval_prediction.label_ids), ks=[1, 5])


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = HfArgumentParser(
        (FinetuneArguments, DatasetArguments, FinetuneTrainingArguments), description=__doc__.split("\n\n")[0]
    )
    args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    train_set, eval_set = data_args.load_splits()
    labels = class_names(train_set)
    model = load_classifier(args.model, labels, args.ignore_mismatched_sizes)
    patch = model.config.patch_size
    if args.image_size % patch:
        raise ValueError(f"--image_size {args.image_size} is not a multiple of the patch size {patch}.")
    resize_size = args.resize_size or default_resize_size(args.image_size)
    trainer = Trainer(
        model=model,
        args=training_args,
        data_collator=collate,
        train_dataset=with_pixel_values(train_set, train_transform(args.image_size, (args.min_crop_scale, 1.0))),
        eval_dataset=with_pixel_values(eval_set, eval_transform(args.image_size, resize_size)),
        processing_class=image_processor_for(args.image_size, resize_size),
        compute_metrics=compute_metrics,
    )
    train_result = trainer.train()
    trainer.log_metrics("train", train_result.metrics)
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    trainer.save_model()
    trainer.save_state()
    if trainer.is_world_process_zero() and hasattr(model, "_new_parameter_prefixes"):  # a modeling_dinov2 model
        write_finetuned_card(training_args.output_dir, model.config, args, data_args, trainer, metrics, len(train_set))
    return metrics


def write_finetuned_card(
    output_dir, config, args: FinetuneArguments, data_args: DatasetArguments, trainer: Trainer, metrics: dict,
    num_train: int,
):
    """The model card of the fine-tuned classifier: base checkpoint, recipe and measured accuracy."""
    from modeling_dinov2 import write_model_card

    training_args, state = trainer.args, trainer.state
    recipe = (
        f"Fine-tuned from `{args.model}` on `{data_args.dataset}` ({num_train} training images, split "
        f"`{data_args.train_split}`) with `examples/finetune.py`: all weights trained, AdamW, peak lr "
        f"{training_args.learning_rate:g}, {state.global_step} steps ({state.epoch:.3g} epochs) of batch "
        f"{training_args.per_device_train_batch_size} per device, "
        f"RandomResizedCrop({args.image_size}, scale=({args.min_crop_scale:g}, 1)) + flip. Evaluated on split "
        f"`{data_args.test_split}` with DINOv2's eval transform at {args.image_size} px. Load it with "
        "`AutoModelForImageClassification.from_pretrained(folder)` after `import modeling_dinov2`."
    )
    shown = {key: value for key, value in metrics.items() if key in ("eval_top1", "eval_top5", "eval_loss")}
    write_model_card(output_dir, config, overwrite=True, metrics=shown, sections={"Fine-tuning": recipe},
                     extra_tags=["image-classification"])


if __name__ == "__main__":
    main()
