"""Export the pretrained backbone (the EMA teacher, or the student EMA after distillation) as a
`modeling_dinov2` checkpoint that `AutoModel.from_pretrained` loads, with a model card that records the
training recipe; optionally push it to the Hub. `dinov2-convert to-transformers` turns the folder into
one that stock `transformers.Dinov2Model` loads.
"""

from __future__ import annotations

import os

from modeling_dinov2 import Dinov2Model, build_model_card

from .modeling_self_distillation import Dinov2ForSelfDistillation


def recipe_markdown(recipe: dict) -> str:
    """The recipe as a two-column markdown table."""
    lines = ["| setting | value |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in recipe.items()]
    return "\n".join(lines)


def extract_backbone(model: Dinov2ForSelfDistillation) -> Dinov2Model:
    """A standalone copy of the backbone users keep (teacher, or student EMA when distilling)."""
    source = model.exported_branch().backbone
    backbone = Dinov2Model(source.config)
    backbone.load_state_dict(source.state_dict())
    return backbone.eval()


def export_backbone(
    model: Dinov2ForSelfDistillation | str,
    output_dir: str | os.PathLike,
    recipe: dict | None = None,
    repo_id: str | None = None,
    commit_message: str = "Upload DINOv2 backbone pretrained with modeling_dinov2",
) -> Dinov2Model:
    """Save the backbone with `preprocessor_config.json` and a model card; push it to `repo_id` if given.

    Args:
        model: a `Dinov2ForSelfDistillation`, or the folder of one (e.g. a Trainer checkpoint).
        output_dir: where the `modeling_dinov2` checkpoint is written.
        recipe: settings to record in the card's "Training recipe" section.
        repo_id: Hub repository to upload the same files to.
    """
    if not isinstance(model, Dinov2ForSelfDistillation):
        model = Dinov2ForSelfDistillation.from_pretrained(model)
    return write_backbone(extract_backbone(model), model.config.distillation, output_dir, recipe, repo_id,
                          commit_message)


def write_backbone(backbone: Dinov2Model, distilled: bool, output_dir: str | os.PathLike, recipe: dict | None = None,
                   repo_id: str | None = None, commit_message: str = "Upload DINOv2 backbone pretrained with "
                   "modeling_dinov2") -> Dinov2Model:
    """Save an extracted backbone with its preprocessing config and model card; push it if `repo_id`."""
    branch = "student EMA (distilled)" if distilled else "EMA teacher"
    sections = {
        "Training recipe": f"The {branch} backbone of a `Dinov2ForSelfDistillation` run "
        "(DINOv2 recipe: multi-crop, DINO + iBOT + KoLeo losses, EMA teacher), trained with "
        "`dinov2-pretrain` / `pretraining.Dinov2PretrainingTrainer`.\n\n" + recipe_markdown(recipe or {}),
    }
    card = build_model_card(backbone.config, repo_id=repo_id, sections=sections, extra_tags=["dinov2-pretrain"])
    os.makedirs(output_dir, exist_ok=True)
    backbone.save_pretrained(output_dir)
    with open(os.path.join(output_dir, "README.md"), "w", encoding="utf-8") as f:
        f.write(card)
    if repo_id is not None:
        backbone.push_to_hub(repo_id, commit_message=commit_message, model_card=card)
    return backbone
