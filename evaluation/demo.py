"""The main job: the whole DINOv2 story on real images, on one CPU, with one command.

1. **Data.** Fashion-MNIST (60k train / 10k test, 28-px grey product photos) as `datasets.Dataset`s, from the
   Debian package `dataset-fashion-mnist` (installed here when possible), else the Hub copy when online.
2. **Curate** (`curation.pipeline.curate`): grey-thumbnail embeddings (no trained network exists yet),
   de-duplication of the train split, decontamination against the test split (whole duplicate components,
   as the paper), hierarchical k-means and balanced sampling; removal log, report and cluster-size picture.
3. **Baselines**: the frozen features of the same ViT at random init and raw pixels, evaluated as in step 5;
   evaluating them first also measures how long the trained ViT's evaluation will take.
4. **Pretrain** a small ViT by self-distillation with `dinov2-pretrain --preset tiny` on the curated set, for as
   many steps as fit in what is left of `--time-budget` (default 15 min for the whole command) once the
   evaluation and the model folder are set aside; `--max-steps N` fixes the length instead.
5. **Evaluate** the teacher's frozen features on the test split: k-NN (official protocol: cosine, softmax
   weights with T = 0.07) and a linear probe.
6. **Share**: a Hub-ready model folder (weights, code, image-processor config) whose model card carries the
   measured numbers, with a PCA picture of patch features and the loss curve.

    dinov2-demo                                  # the README's main command (outputs/demo)
    dinov2-demo --resume                         # continue it after an interruption (Ctrl-C, a crash)
    dinov2-demo --quick --output-dir /tmp/demo   # a toy-sized run, for a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from modeling_dinov2.output_lock import replace_earlier_results

TRAINED = "DINOv2 (this run)"  # the results' name of the pretrained model
STEPS = ("data", "curate", "baselines", "pretrain", "evaluate", "share")
HUB_FASHION_MNIST = "zalando-datasets/fashion_mnist"
RUN_FILE = "demo_run.json"  # the options that define a run's results, checked by --resume
RUN_OPTIONS = ("quick", "train_limit", "test_limit", "max_steps", "time_budget", "curated_fraction", "dedup_threshold",
               "seed")
SHARE_RESERVE_S = 20  # set aside for the pretraining process's start-up, the model folder, PCA picture and plots
MIN_PRETRAINING_MINUTES = 1.0  # a budget used up before pretraining still pretrains this long
RUN_FOLDERS = ("curated", "pretrain", "model")  # what a run writes in --output-dir


def build_parser() -> argparse.ArgumentParser:
    from pretraining.presets import RECIPES

    parser = argparse.ArgumentParser(prog="dinov2-demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="outputs/demo", help="where every step writes (default: %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="toy size (2,000 train / 500 test images, 20 steps): checks the pipeline in about a minute")
    parser.add_argument("--train-limit", type=int, default=None, help="use only the first N train images")
    parser.add_argument("--test-limit", type=int, default=None, help="use only the first N test images")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="pretraining steps (default: as many as --time-budget allows)")
    parser.add_argument("--time-budget", type=float, default=15.0,
                        help="minutes for the whole command: pretraining gets what data, curation, the baselines and "
                        "the evaluation leave (default: %(default)s; 0: the tiny preset's fixed "
                        f"{RECIPES['tiny']['training']['max_steps']} steps)")
    parser.add_argument("--curated-fraction", type=float, default=0.8,
                        help="balanced sample kept after de-duplication (default: %(default)s)")
    parser.add_argument("--dedup-threshold", type=float, default=0.99,
                        help="pixel-correlation threshold for near-duplicates (default: %(default)s)")
    parser.add_argument("--save-steps", type=int, default=None,
                        help="checkpoint pretraining every N steps (default: the tiny preset's "
                        f"{RECIPES['tiny']['training']['save_steps']})")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted run in --output-dir: keep its curated set and pretrain from "
                        "its last checkpoint (the options that shape the results must be the same)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def log(step: str, message: str) -> None:
    print(f"[{STEPS.index(step) + 1}/{len(STEPS)} {step}] {message}", flush=True)


def check_resumable(out: Path, args) -> bool:
    """With --resume, True when `out` holds a run with the same options (an error names any that differ).
    Otherwise a new run: delete an earlier run's folders (so whatever --resume later finds is this run's),
    record this run's options, and return False."""
    run_file, options = out / RUN_FILE, {name: getattr(args, name) for name in RUN_OPTIONS}
    if args.resume and run_file.is_file():
        recorded = json.loads(run_file.read_text())
        changed = [f"--{name.replace('_', '-')} {recorded.get(name)!r} -> {value!r}"
                   for name, value in options.items() if recorded.get(name) != value]
        if changed:
            raise SystemExit(f"dinov2-demo: --resume: {out} holds a run with other options ({'; '.join(changed)}). "
                             "Pass the same options, or drop --resume to start over.")
        return True
    if args.resume:
        log("data", f"--resume: no earlier run in {out}; starting one")
    earlier = [out / name for name in RUN_FOLDERS if (out / name).exists()]
    if earlier:
        log("data", f"a new run: deleting the earlier run's {', '.join(path.name for path in earlier)} in {out} "
            "(--resume continues a run instead)")
    replace_earlier_results(out, earlier, overwrite=True)
    run_file.write_text(json.dumps(options, indent=2))
    return False


# ----------------------------------------------------------------------------------------------------
# 1. data
# ----------------------------------------------------------------------------------------------------
def install_fashion_mnist() -> bool:
    """Install the Debian package when this process may (root, apt-get present); True when it worked."""
    if not shutil.which("apt-get") or os.geteuid() != 0:
        return False
    for command in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "dataset-fashion-mnist"]):
        if subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode != 0:
            return False
    return True


def load_data(train_limit: int | None, test_limit: int | None):
    """(train, test) `datasets.Dataset`s with `image` and `label` columns."""
    from .data import FASHION_MNIST_DIR, FASHION_MNIST_INSTALL, load_fashion_mnist

    if not (FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").is_file() and install_fashion_mnist():
        log("data", "installed the Debian package dataset-fashion-mnist")
    if (FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").is_file():
        return load_fashion_mnist("train", limit=train_limit), load_fashion_mnist("test", limit=test_limit)
    try:  # the Hub copy, for a machine that is online but cannot install Debian packages
        import datasets

        hub = datasets.load_dataset(HUB_FASHION_MNIST)
        train, test = hub["train"], hub["test"]
    except Exception as error:
        raise SystemExit(
            f"dinov2-demo: Fashion-MNIST is not at {FASHION_MNIST_DIR} and the Hub copy ({HUB_FASHION_MNIST}) could "
            f"not be loaded ({type(error).__name__}). Install it with: {FASHION_MNIST_INSTALL}"
        ) from None
    limit = lambda ds, n: ds.select(range(min(n, len(ds)))) if n else ds  # noqa: E731
    return limit(train, train_limit), limit(test, test_limit)


# ----------------------------------------------------------------------------------------------------
# 2. curate
# ----------------------------------------------------------------------------------------------------
def curate(train, test, output_dir: Path, args, reuse: bool = False) -> object:
    """`curation.pipeline.curate` on the train split; with `reuse`, the finished result of an earlier run."""
    from curation.pipeline import CurationResult
    from curation.pipeline import curate as run_curation

    if reuse and (output_dir / "report.json").is_file():  # written last: the curation finished
        import datasets

        dataset = datasets.load_from_disk(str(output_dir / "dataset"))
        removal_log = datasets.Dataset.from_parquet(str(output_dir / "removal_log.parquet"))
        log("curate", f"--resume: the earlier run's {len(dataset):,} curated images in {output_dir}")
        return CurationResult(dataset, removal_log, json.loads((output_dir / "report.json").read_text()),
                              str(output_dir))

    n_fine = max(2, min(100, len(train) // 200))
    config = {
        # 28-px grey thumbnails: a sound copy detector at this size, and the only embedding available before
        # pretraining (the paper curates with a model trained beforehand)
        "embedding": {"model": "pixels:28", "batch_size": 512, "storage_dtype": "float32"},
        "dedup": {"threshold": args.dedup_threshold},
        "decontamination": {"threshold": args.dedup_threshold},
        "retrieval": {"mode": "none"},
        "clustering": {"n_clusters": [n_fine, max(2, n_fine // 10)], "n_resampling_steps": 5},
        "sampling": {"target_fraction": args.curated_fraction},
        "seed": args.seed,
        # the demo owns this folder (a new run has emptied it): a resumed run whose curation was interrupted while
        # writing its results replaces them; embeddings made with these settings are still reused
        "overwrite": True,
    }
    result = run_curation(pool=train, eval_sets={"test": test}, config=config, output_dir=str(output_dir))
    counts = result.report.get("accounting", {}).get("pool", result.report.get("accounting", {}))
    log("curate", f"{len(train):,} train images -> {len(result.dataset):,} curated ({counts}); "
        f"report, removal log and cluster sizes in {output_dir}")
    return result


# ----------------------------------------------------------------------------------------------------
# 3. baselines (and 5. evaluate)
# ----------------------------------------------------------------------------------------------------
def tiny_backbone_config():
    """The ViT that `dinov2-pretrain --preset tiny` trains (its config, before there are weights)."""
    from pretraining.builders import backbone_config
    from pretraining.cli import DataArguments, ModelArguments
    from pretraining.presets import preset

    values = preset("tiny")
    return backbone_config(ModelArguments(**values["model"]), DataArguments(**values["data"]))


ARCHITECTURE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "mlp_ratio", "ffn_type", "patch_size",
                     "image_size", "num_register_tokens", "layerscale_value")


def evaluate_backbone(name: str, model, images: dict, labels: dict, seed: int) -> dict:
    """`evaluate` on the frozen features of `model` for the train and test images."""
    train_features, test_features = (backbone_features(model, images[s], labels[s]) for s in ("train", "test"))
    return evaluate(name, train_features, test_features, seed)


def log_result(step: str, name: str, result: dict) -> None:
    k = 20 if 20 in result["knn"] else max(result["knn"])  # fewer than 20 training images: the largest k left
    log(step, f"{name}: k-NN@{k} {100 * result['knn'][k]:.1f}%, linear {100 * result['linear']:.1f}%")


# ----------------------------------------------------------------------------------------------------
# 4. pretrain
# ----------------------------------------------------------------------------------------------------
def pretraining_minutes(time_budget: float, elapsed_s: float, evaluation_s: float) -> float:
    """Minutes of pretraining that keep the whole command within `time_budget` minutes: what is left after
    `elapsed_s`, the trained ViT's evaluation (`evaluation_s`: as long as the random-init ViT's) and
    SHARE_RESERVE_S; at least MIN_PRETRAINING_MINUTES."""
    return max((60 * time_budget - elapsed_s - evaluation_s - SHARE_RESERVE_S) / 60, MIN_PRETRAINING_MINUTES)


def pretrain(dataset_dir: Path, output_dir: Path, args, resume: bool = False, budget_minutes: float | None = None) -> Path:
    """Run `dinov2-pretrain --preset tiny` in a child process (its own threads and memory); returns the backbone.
    With `resume`, it continues from the last complete checkpoint in `output_dir`, or starts over there. With
    `budget_minutes`, the run trains as many steps as fit (`--time_budget_minutes`; a resumed run keeps the
    step count its checkpoint planned)."""
    from pretraining.trainer import last_complete_checkpoint

    command = [sys.executable, "-m", "pretraining.cli", "--preset", "tiny", "--dataset_name", str(dataset_dir),
               "--image_column", "image", "--output_dir", str(output_dir), "--seed", str(args.seed),
               "--report_to", "none"]
    if args.max_steps:
        command += ["--max_steps", str(args.max_steps)]
    elif budget_minutes:
        command += ["--time_budget_minutes", f"{budget_minutes:.2f}"]
    if args.save_steps:
        command += ["--save_steps", str(args.save_steps)]
    checkpoint = last_complete_checkpoint(str(output_dir)) if resume else None
    if checkpoint:
        log("pretrain", f"--resume: continuing from {checkpoint}")
        command += ["--resume_from_checkpoint", "last"]
    elif resume and output_dir.exists():
        command += ["--overwrite_output_dir", "true"]  # interrupted before its first checkpoint: start over
    log("pretrain", " ".join(["dinov2-pretrain", *command[3:]]) + f" (in {pretraining_precision()})")
    environment = dict(os.environ)
    if args.threads:
        environment["OMP_NUM_THREADS"] = str(args.threads)
    if subprocess.run(command, env=environment).returncode != 0:
        raise SystemExit("dinov2-demo: pretraining failed (see its output above).")
    return output_dir / "backbone"


def trained_steps(pretrain_dir: Path) -> int | None:
    """The optimizer steps the finished pretraining run took (its trainer_state.json)."""
    path = pretrain_dir / "trainer_state.json"
    return json.loads(path.read_text())["global_step"] if path.is_file() else None


def pretraining_precision() -> str:
    """What the tiny preset computes in on this machine (bf16 only where it is native)."""
    from modeling_dinov2.hardware import bf16_is_native

    return "bf16 autocast" if bf16_is_native() else "fp32"


def loss_history(pretrain_dir: Path) -> list[dict]:
    """The Trainer's logged losses: trainer_state.json of the run, or of its last checkpoint."""
    candidates = [pretrain_dir / "trainer_state.json"]
    checkpoints = sorted(pretrain_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    candidates += [c / "trainer_state.json" for c in reversed(checkpoints)]
    for path in candidates:
        if path.is_file():
            return [row for row in json.loads(path.read_text())["log_history"] if "loss" in row]
    return []


def plot_losses(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for key in ("loss", "dino_loss", "ibot_loss", "koleo_loss"):
        points = [(row["step"], row[key]) for row in history if key in row]
        if points:
            axis.plot(*zip(*points), label=key)
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("loss")
    axis.set_title("DINOv2 self-distillation on curated Fashion-MNIST")
    if history:
        axis.legend(loc="upper right")
    else:  # a run shorter than one logging interval
        axis.text(0.5, 0.5, "no losses logged (run shorter than --logging_steps)", ha="center",
                  transform=axis.transAxes)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def evaluate(name: str, train_features, test_features, seed: int) -> dict:
    """k-NN (k = 10, 20, 100, 200) on the last CLS and the linear probe grid of DINOv2's protocol (last 1 or 4
    blocks' CLS, with or without the mean patch token, lr sweep; chosen on 10% of the train split): test top-1."""
    from modeling_dinov2.metrics.functional import knn_classify
    from .linear_probe import linear_probe_grid, split_train_val

    knn = knn_classify(train_features.cls, train_features.labels, test_features.cls, test_features.labels,
                       ks=(10, 20, 100, 200), T=0.07)
    fit, val = split_train_val(train_features, val_fraction=0.1, seed=seed)
    has_patches = train_features.patch_mean is not None
    blocks = sorted({1, train_features.cls_tokens.shape[1]})
    best, _ = linear_probe_grid(fit, val, test_features, n_last_blocks_options=blocks,
                                avgpool_options=(False, True) if has_patches else (False,), epochs=10, seed=seed)
    return {"knn": {k: v["top1"] for k, v in knn.items()}, "linear": best.test_top1, "linear_lr": best.lr,
            "linear_input": best.name}


def as_uint8_images(dataset) -> torch.Tensor:
    """All images of a same-size grey dataset as one (N, H, W) uint8 tensor (decoded once)."""
    import numpy as np

    return torch.from_numpy(np.stack([np.asarray(image.convert("L")) for image in dataset["image"]]))


@torch.inference_mode()
def backbone_features(model, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1024, n_last_blocks: int = 4):
    """Frozen features (normed CLS of the last `n_last_blocks` blocks, mean patch token of the last) of (N, H, W)
    uint8 images at their own size: the same values as `evaluation.features.extract_features` with
    `eval_transform(H, resize_size=H)` (grey -> RGB, ImageNet normalisation), without decoding and
    transforming image by image. Under bf16 autocast where the CPU computes bf16 natively, else in fp32."""
    from tqdm.auto import tqdm

    from .features import Features, autocast
    from modeling_dinov2.hardware import cpu_supports_bf16
    from modeling_dinov2.preprocessing import IMAGENET_MEAN, IMAGENET_STD

    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    cls, patch_mean = [], []
    for start in tqdm(range(0, len(images), batch_size), desc="features", unit="batch"):
        pixel_values = (images[start : start + batch_size, None].float() / 255).expand(-1, 3, -1, -1)
        with autocast("cpu", bf16=cpu_supports_bf16()):
            layers = model.get_intermediate_layers((pixel_values - mean) / std, return_class_token=True,
                                                   n=min(n_last_blocks, model.config.num_hidden_layers))
        cls.append(torch.stack([cls_token.float() for _, cls_token in layers], dim=1))  # (B, n, D), last block last
        patch_mean.append(layers[-1][0].float().mean(1))
    return Features(torch.cat(cls), labels, torch.cat(patch_mean))


# ----------------------------------------------------------------------------------------------------
# 6. share
# ----------------------------------------------------------------------------------------------------
def results_table(results: dict) -> str:
    rows = ["| features | k-NN k=10 | k=20 | k=100 | k=200 | linear |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        knn = " | ".join(f"{100 * r['knn'].get(k, float('nan')):.1f}" for k in (10, 20, 100, 200))
        rows.append(f"| {name} | {knn} | {100 * r['linear']:.1f} |")
    return "\n".join(rows)


def write_model_folder(backbone_dir: Path, model_dir: Path, results: dict, curation_report: dict, recipe: str,
                       num_test: int = 10_000) -> None:
    """The exported teacher backbone plus a model card with the measured numbers."""
    from modeling_dinov2 import Dinov2Config, write_model_card
    from modeling_dinov2.model_card import write_preprocessor_config

    if model_dir.exists():
        shutil.rmtree(model_dir)
    shutil.copytree(backbone_dir, model_dir)
    config = Dinov2Config.from_pretrained(model_dir)
    # AutoImageProcessor gives what was evaluated here: the images at their own 28 px, no crop margin
    write_preprocessor_config(model_dir, overwrite=True, crop_size=config.image_size, resize_size=config.image_size)
    pretrained = results[TRAINED]
    metrics = {f"Fashion-MNIST test k-NN top-1 (k={k})": round(100 * v, 2) for k, v in pretrained["knn"].items()}
    metrics["Fashion-MNIST test linear-probe top-1"] = round(100 * pretrained["linear"], 2)
    sections = {
        "Evaluation": f"Frozen teacher features (final-normed CLS), Fashion-MNIST test split ({num_test:,} images), "
        "k-NN bank and linear-probe training set: the train split. k-NN: cosine similarity, softmax(s / 0.07) "
        "weights over the top 200 (DINOv2's protocol), on the last block's CLS. Linear: DINOv2's probe grid (CLS "
        "of the last 1 or 4 blocks, with or without the mean patch token, standardized, an lr sweep), chosen on 10% "
        "of the train split. Accuracy in %:\n\n" + results_table(results) + "\n\n![PCA of patch features]"
        "(pca_features.png)\n\n![loss curve](loss_curve.png)",
        "Training data": "Fashion-MNIST train split curated with `curation` (pixel-thumbnail de-duplication, "
        "decontamination against the test split, hierarchical k-means balanced sampling):\n\n```json\n"
        + json.dumps({k: curation_report[k] for k in ("accounting", "removed") if k in curation_report}, indent=2,
                     default=str)[:3000] + "\n```",
        "Training recipe": recipe,
    }
    eval_results = [dict(task="image-classification", dataset="fashion_mnist", dataset_name="Fashion-MNIST",
                         split="test", metric="accuracy", name=name, value=value) for name, value in metrics.items()]
    write_model_card(model_dir, config, overwrite=True, metrics=metrics, sections=sections,
                     extra_tags=["fashion-mnist", "dinov2-demo"], datasets=["fashion_mnist"], eval_results=eval_results)


def pca_figure(model, test, image_size: int, path: Path) -> None:
    """PCA picture of the patch features of test images, upsampled 4x so that patches are visible."""
    from .pca import pca_picture, save_pca_figure
    from modeling_dinov2.preprocessing import eval_transform

    images = [test[i]["image"].resize((image_size * 4, image_size * 4)) for i in range(min(8, len(test)))]
    transform = eval_transform(image_size * 4, resize_size=image_size * 4)
    with torch.no_grad():
        maps = model.get_intermediate_layers(torch.stack([transform(i) for i in images]), n=1, reshape=True)[0]
    save_pca_figure(images, pca_picture(maps.permute(0, 2, 3, 1).float()), str(path),
                    title="PCA of patch features (first component > 0: foreground; a PCA of the foreground as RGB)")


def run(args: argparse.Namespace) -> dict:
    from .features import pixel_features
    from modeling_dinov2 import Dinov2Model

    if args.time_budget < 0:
        raise SystemExit(f"dinov2-demo: --time-budget must be >= 0 minutes (0: a fixed step count), got {args.time_budget}.")
    start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    from .data import check_limit

    try:
        check_limit(args.train_limit, "--train-limit")
        check_limit(args.test_limit, "--test-limit")
    except ValueError as error:
        raise SystemExit(f"dinov2-demo: {error}") from None
    if args.quick:
        args.train_limit, args.test_limit = args.train_limit or 2000, args.test_limit or 500
        args.max_steps = args.max_steps or 20
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    resume = check_resumable(out, args)
    timings = {}

    train, test = load_data(args.train_limit, args.test_limit)
    log("data", f"Fashion-MNIST: {len(train):,} train, {len(test):,} test images")
    timings["data"] = time.perf_counter() - start

    curated = curate(train, test, out / "curated", args, reuse=resume)
    timings["curate"] = time.perf_counter() - start - sum(timings.values())

    config = tiny_backbone_config()
    images = {"train": as_uint8_images(train), "test": as_uint8_images(test)}
    labels = {"train": torch.tensor(train["label"]), "test": torch.tensor(test["label"])}
    if images["train"].shape[-1] != config.image_size:
        raise SystemExit(f"dinov2-demo: the tiny preset trains at {config.image_size} px, the images are "
                         f"{images['train'].shape[-1]} px.")
    torch.manual_seed(args.seed)
    random_init = Dinov2Model(config).eval()
    evaluation_start = time.perf_counter()
    baselines = {"same ViT, random init": evaluate_backbone("same ViT, random init", random_init, images, labels,
                                                            args.seed)}
    evaluation_s = time.perf_counter() - evaluation_start  # what the trained ViT's evaluation will take
    baselines["raw pixels"] = evaluate("raw pixels", pixel_features(train), pixel_features(test), args.seed)
    for name, result in baselines.items():
        log_result("baselines", name, result)
    timings["baselines"] = time.perf_counter() - start - sum(timings.values())

    budget_minutes = None
    if not args.max_steps and args.time_budget:
        elapsed = time.perf_counter() - start
        budget_minutes = pretraining_minutes(args.time_budget, elapsed, evaluation_s)
        log("pretrain", f"--time-budget {args.time_budget:g} min: {elapsed / 60:.1f} used, {evaluation_s / 60:.1f} "
            f"for the evaluation and {SHARE_RESERVE_S} s for the model folder -> {budget_minutes:.1f} min of "
            "pretraining" + (" (the minimum: the command will overrun the budget)"
                             if budget_minutes == MIN_PRETRAINING_MINUTES else ""))
    backbone_dir = pretrain(out / "curated" / "dataset", out / "pretrain", args, resume=resume,
                            budget_minutes=budget_minutes)
    timings["pretrain"] = time.perf_counter() - start - sum(timings.values())

    trained = Dinov2Model.from_pretrained(backbone_dir).eval()
    changed = [key for key in ARCHITECTURE_KEYS if getattr(trained.config, key) != getattr(config, key)]
    if changed:
        raise SystemExit(f"dinov2-demo: the pretrained ViT differs from the tiny preset's in {', '.join(changed)}; "
                         "the random-init baseline would not be the same architecture.")
    image_size = config.image_size
    results = {TRAINED: evaluate_backbone(TRAINED, trained, images, labels, args.seed), **baselines}
    log_result("evaluate", TRAINED, results[TRAINED])
    timings["evaluate"] = time.perf_counter() - start - sum(timings.values())

    model_dir = out / "model"
    steps = trained_steps(out / "pretrain")
    recipe = (f"`dinov2-pretrain --preset tiny` on {len(curated.dataset):,} curated images"
              + (f", {steps} step{'s' if steps != 1 else ''}" if steps else "")
              + (f" (as many as fit in the demo's {args.time_budget:g}-minute budget)" if budget_minutes else "")
              + f", {pretraining_precision()}; see `pretraining/presets.py`.")
    write_model_folder(backbone_dir, model_dir, results, curated.report, recipe, num_test=len(test))
    pca_figure(trained, test, image_size, model_dir / "pca_features.png")
    plot_losses(loss_history(out / "pretrain"), model_dir / "loss_curve.png")
    (model_dir / "demo_results.json").write_text(json.dumps({"results": results, "timings_s": timings}, indent=2))
    timings["share"] = time.perf_counter() - start - sum(timings.values())
    log("share", f"Hub-ready model folder: {model_dir} (model card, PCA picture, loss curve); "
        f"push it with Dinov2Model.from_pretrained({str(model_dir)!r}).push_to_hub(...)")

    print("\nFashion-MNIST test accuracy (%), frozen features:\n" + results_table(results))
    print("time per step (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())
          + f"; total {sum(timings.values()) / 60:.1f} min")
    return {"results": results, "timings": timings, "model_dir": model_dir, "curated": curated}


def main(argv: list[str] | None = None) -> int:
    from modeling_dinov2.hardware import reuse_freed_memory

    args = build_parser().parse_args(argv)
    reuse_freed_memory()  # the evaluation's feature extraction allocates as pretraining does (hardware.py)
    try:
        run(args)
    except KeyboardInterrupt:
        same = " ".join(argument for argument in (argv if argv is not None else sys.argv[1:]) if argument != "--resume")
        print(f"\ndinov2-demo: interrupted. `dinov2-demo {same + ' ' if same else ''}--resume` continues this run "
              "(the finished curation and the last pretraining checkpoint are kept).", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
