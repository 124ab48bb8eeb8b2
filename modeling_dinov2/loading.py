"""Load a backbone from a checkpoint folder or a Hub id: the one place that checks where a checkpoint is and calls
`AutoModel.from_pretrained` (the examples, curation's embedding step and `dinov2-pretrain` use it)."""

from __future__ import annotations

import os


def looks_like_hub_id(name_or_path: str) -> bool:
    """`name` or `owner/name` (not a path: no leading `/`, `.`, `~`, at most one `/`)."""
    parts = str(name_or_path).split("/")
    return len(parts) <= 2 and all(parts) and not str(name_or_path).startswith((".", "~"))


def check_checkpoint(name_or_path: str | os.PathLike, *, ask_hub: bool = False) -> None:
    """Raise an error naming the problem unless `name_or_path` is a checkpoint folder (one with config.json) or
    may be a Hub repo id. transformers would answer a mistyped local path with an error about Hub repo ids.

    `ask_hub`: also ask the Hub that the repo exists and holds a config.json (a ValueError when it cannot be
    asked, e.g. offline), so that a long job fails before it starts rather than when it loads the model.
    Raises FileNotFoundError for a missing path, ValueError for anything else.
    """
    path = os.path.expanduser(os.fspath(name_or_path))
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ValueError(f"{name_or_path}: the folder holds no config.json; give a folder written by "
                             "save_pretrained (e.g. <output_dir>/final or <output_dir>/backbone).")
        return
    if os.path.exists(path):
        raise ValueError(f"{name_or_path} is a file; give the checkpoint's folder (the one with config.json).")
    if not looks_like_hub_id(os.fspath(name_or_path)):
        raise FileNotFoundError(f"{name_or_path}: no such folder.")
    if not ask_hub:
        return
    try:
        from huggingface_hub import file_exists

        found = file_exists(os.fspath(name_or_path), "config.json")
    except Exception as error:  # offline, no such repo, gated: say what the Hub said
        raise ValueError(f"{name_or_path}: no such local folder, and the Hub cannot be asked about a repo of that "
                         f"name ({type(error).__name__}: {str(error).splitlines()[0]}).") from None
    if not found:
        raise ValueError(f"{name_or_path}: no such local folder, and no Hub repo of that name with a config.json.")


def load_backbone(name_or_path: str | os.PathLike, device=None, **kwargs):
    """`AutoModel.from_pretrained(name_or_path, **kwargs)` in eval mode (on `device` when given).

    Loads this package's folders (a fine-tuned classifier's folder gives its backbone), transformers' own
    `dinov2` / `dinov2_with_registers` checkpoints (e.g. `facebook/dinov2-small`, as transformers' classes) and
    Hub ids when online; the errors name the problem and, offline, the alternative.
    """
    import modeling_dinov2  # noqa: F401  (registers the dinov2_ssl Auto classes)
    from transformers import AutoModel

    check_checkpoint(name_or_path)
    try:
        model = AutoModel.from_pretrained(os.path.expanduser(os.fspath(name_or_path)), **kwargs)
    except OSError as error:
        raise OSError(f"Could not load the checkpoint {name_or_path!r}: {error}\nWithout network access pass a local "
                      "folder (written by `save_pretrained`, `dinov2-pretrain` or `dinov2-convert`).") from error
    model = model.eval()
    return model.to(device) if device is not None else model
