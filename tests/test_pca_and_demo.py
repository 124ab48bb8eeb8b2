"""The PCA feature picture and the README's main job (the demo)."""

import json
import os

import numpy as np
import pytest
import torch
import transformers

from evaluation import demo, pca
from examples import pca_features

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def planted_feature_maps() -> torch.Tensor:
    """8x8 maps: background patches near a vector b; a centred 4x4 object whose four 2x2 quadrants are near
    four other vectors. Foreground/background and the four parts span four directions, so a correct picture
    marks exactly the object as foreground and gives each quadrant its own, uniform colour."""
    generator = torch.Generator().manual_seed(0)
    vectors = torch.randn(5, 16, generator=generator) * 3
    maps = vectors[0].expand(2, 8, 8, 16).clone()
    for part, (row, col) in enumerate([(2, 2), (2, 4), (4, 2), (4, 4)], start=1):
        maps[:, row : row + 2, col : col + 2] = vectors[part]
    return maps + 0.01 * torch.randn(maps.shape, generator=generator)


def test_pca_picture_finds_the_planted_object_and_its_parts():
    picture = pca.pca_picture(planted_feature_maps())
    expected = np.zeros((2, 8, 8), dtype=bool)
    expected[:, 2:6, 2:6] = True
    np.testing.assert_array_equal(picture.foreground, expected)
    assert np.all(picture.rgb[~expected] == 0)  # background is black
    parts = [picture.rgb[:, r : r + 2, c : c + 2].reshape(-1, 3) for r, c in [(2, 2), (2, 4), (4, 2), (4, 4)]]
    assert max(part.std(0).max() for part in parts) < 0.05  # each part uniform
    colours = np.stack([part.mean(0) for part in parts])
    distances = np.abs(colours[:, None] - colours[None]).max(-1)
    assert distances[~np.eye(4, dtype=bool)].min() > 0.2  # and the parts distinct


def test_pca_example_writes_a_png(tmp_path):
    from conftest import tiny_config_kwargs
    from modeling_dinov2 import Dinov2Config, Dinov2Model

    Dinov2Model(Dinov2Config(**tiny_config_kwargs())).save_pretrained(tmp_path / "model")
    output = tmp_path / "pca.png"
    assert pca_features.main(["--model", str(tmp_path / "model"), "--image-size", "56", "--output", str(output)]) == 0
    assert pca_features.build_parser().parse_args(["--image_size", "56"]).image_size == 56  # both spellings
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pca_reads_any_image_mode_as_rgb_and_names_a_broken_file(tmp_path):
    from PIL import Image

    red = Image.new("RGB", (4, 4), (255, 0, 0))
    red.convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "palette.png")
    Image.new("RGBA", (4, 4), (255, 0, 0, 255)).save(tmp_path / "rgba.png")
    Image.new("LA", (4, 4), (0, 0)).save(tmp_path / "transparent.png")  # fully transparent: white
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    images = pca.read_images([str(tmp_path / n) for n in ("palette.png", "rgba.png", "transparent.png")])
    assert [np.asarray(i)[0, 0].tolist() for i in images] == [[255, 0, 0], [255, 0, 0], [255, 255, 255]]
    pixels = pca.preprocess(images[:1], 4)  # red after ImageNet normalisation, not grey palette indices
    assert torch.allclose(pixels[0, :, 0, 0], (torch.tensor([1.0, 0.0, 0.0]) - MEAN[:, 0, 0]) / STD[:, 0, 0], atol=1e-4)
    with pytest.raises(ValueError, match="broken.jpg"):
        pca.read_images([str(tmp_path / "broken.jpg")])


def test_demo_rejects_bad_limits(tmp_path):
    with pytest.raises(SystemExit, match="--train-limit must be a positive number of images, got 0"):
        demo.main(["--output-dir", str(tmp_path), "--train-limit", "0"])


def test_fast_demo_features_equal_the_example_feature_extractor(fashion_mnist_dir):
    from evaluation.data import load_fashion_mnist
    from evaluation.features import eval_transform, extract_features
    from modeling_dinov2 import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=28,
                                     patch_size=4, layerscale_value=1.0)).eval()
    dataset = load_fashion_mnist("test", limit=20)
    reference = extract_features(model, dataset, eval_transform(28, resize_size=28), n_last_blocks=2, batch_size=8)
    fast = demo.backbone_features(model, demo.as_uint8_images(dataset), torch.tensor(dataset["label"]), batch_size=8)
    assert fast.cls_tokens.shape == reference.cls_tokens.shape == (20, 2, 32)  # 4 blocks asked, the model has 2
    # the fast path runs under bf16 autocast where the CPU has bf16 instructions, the reference in fp32: compare
    # at bf16 resolution
    torch.testing.assert_close(fast.cls_tokens, reference.cls_tokens, atol=0.05, rtol=0.05)
    torch.testing.assert_close(fast.patch_mean, reference.patch_mean, atol=0.05, rtol=0.05)
    assert fast.labels.equal(reference.labels)


def test_pretraining_minutes_hand_values():
    # 15 min: 2 used, 1 for the evaluation, 20 s for the model folder -> (900 - 120 - 60 - 20) / 60
    assert demo.pretraining_minutes(15, elapsed_s=120, evaluation_s=60) == pytest.approx(700 / 60)
    assert demo.pretraining_minutes(1, elapsed_s=100, evaluation_s=10) == demo.MIN_PRETRAINING_MINUTES


def test_demo_runs_end_to_end_at_toy_size(fashion_mnist_dir, tmp_path, capsys, monkeypatch):
    """The default path: the pretraining length comes from --time-budget (here used up by the toy run's data,
    curation and baselines, so pretraining gets the minimum, shrunk for the test to ~1 s: one step)."""
    monkeypatch.setattr(demo, "MIN_PRETRAINING_MINUTES", 0.02)
    out = demo.run(demo.build_parser().parse_args(
        ["--output-dir", str(tmp_path), "--train-limit", "600", "--test-limit", "200", "--time-budget", "0.01"]))
    report = out["curated"].report
    assert len(out["curated"].dataset) < 600  # balanced sampling kept a fraction
    model_dir = out["model_dir"]
    card = (model_dir / "README.md").read_text()
    assert "pipeline_tag: image-feature-extraction" in card and "Fashion-MNIST test k-NN top-1 (k=20)" in card
    from modeling_dinov2.hardware import bf16_is_native

    state = json.loads((tmp_path / "pretrain" / "trainer_state.json").read_text())
    assert state["global_step"] == state["max_steps"] >= 1  # the step count the budget chose, all trained
    steps = f"{state['global_step']} step{'s' if state['global_step'] != 1 else ''}"
    recipe = f"{steps} (as many as fit in the demo's 0.01-minute budget), "
    assert recipe + ("bf16 autocast;" if bf16_is_native() else "fp32;") in card  # the precision it ran in
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "modeling_dinov2.py",
                 "pca_features.png", "loss_curve.png", "demo_results.json"):
        assert (model_dir / name).is_file(), name
    # AutoImageProcessor reproduces the evaluation input: the 28-px images as they are
    processor = transformers.AutoImageProcessor.from_pretrained(model_dir)
    from evaluation.data import load_fashion_mnist

    image = load_fashion_mnist("test", limit=1)[0]["image"]
    pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 3, 28, 28)
    expected = (torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).float() / 255 - MEAN) / STD
    torch.testing.assert_close(pixel_values[0], expected, atol=1e-5, rtol=1e-5)
    results = out["results"]
    assert set(results) == {"DINOv2 (this run)", "same ViT, random init", "raw pixels"}
    assert results["raw pixels"]["knn"][20] > 0.6  # raw-pixel k-NN on 600 Fashion-MNIST images: ~0.7
    printed = capsys.readouterr().out
    assert "| raw pixels |" in printed and "[6/6 share]" in printed and report
    assert "--time-budget 0.01 min:" in printed and "(the minimum: the command will overrun the budget)" in printed
    assert "--time_budget_minutes 0.02" in printed


def demo_args(out, *extra):
    return demo.build_parser().parse_args(["--output-dir", str(out), "--train-limit", "600", "--test-limit", "200",
                                           "--max-steps", "6", "--save-steps", "3", *extra])


def test_demo_resume_after_an_interruption_equals_the_uninterrupted_run(fashion_mnist_dir, tmp_path, capsys):
    import shutil

    from safetensors.torch import load_file

    straight = demo.run(demo_args(tmp_path / "straight"))
    # What a kill during step 5 leaves: the run's options, the finished curation, checkpoint-3, and a
    # checkpoint-6 whose pretraining state was never written (incomplete: skipped by the resume).
    killed = tmp_path / "killed"
    shutil.copytree(tmp_path / "straight", killed)
    for name in ("final", "backbone", "trainer_state.json"):
        path = killed / "pretrain" / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    (killed / "pretrain" / "checkpoint-6" / "pretraining_state.json").unlink()
    shutil.rmtree(killed / "model")
    checkpoint_weights = killed / "pretrain" / "checkpoint-3" / "model.safetensors"
    written = checkpoint_weights.stat().st_mtime_ns
    capsys.readouterr()

    resumed = demo.run(demo_args(killed, "--resume"))
    printed = capsys.readouterr().out
    assert "--resume: the earlier run's" in printed and "curated images" in printed  # curation was not redone
    assert f"--resume: continuing from {killed / 'pretrain' / 'checkpoint-3'}" in printed
    assert checkpoint_weights.stat().st_mtime_ns == written  # steps 1-3 were not trained again
    assert resumed["results"] == straight["results"]
    weights = [load_file(run["model_dir"] / "model.safetensors") for run in (straight, resumed)]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        torch.testing.assert_close(weights[1][name], weights[0][name], rtol=0, atol=0, msg=name)

    with pytest.raises(SystemExit, match=r"other options \(--max-steps 6 -> 7; --seed 0 -> 1\)"):
        demo.run(demo_args(killed, "--resume", "--max-steps", "7", "--seed", "1"))


def test_a_new_demo_run_deletes_only_the_earlier_runs_folders(tmp_path, capsys):
    for name in ("curated", "pretrain", "model", "my_notes"):
        (tmp_path / name).mkdir()
    assert demo.check_resumable(tmp_path, demo_args(tmp_path)) is False
    assert sorted(path.name for path in tmp_path.iterdir()) == ["demo_run.json", "my_notes"]
    assert "a new run: deleting the earlier run's curated, pretrain, model" in capsys.readouterr().out
    assert demo.check_resumable(tmp_path, demo_args(tmp_path, "--resume")) is True

    empty = tmp_path / "empty"
    empty.mkdir()
    assert demo.check_resumable(empty, demo_args(empty, "--resume")) is False
    assert "--resume: no earlier run" in capsys.readouterr().out and (empty / "demo_run.json").is_file()


def test_an_interrupted_demo_says_how_to_resume(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "run", interrupted)
    assert demo.main(["--output-dir", "runs/demo", "--seed", "1"]) == 130
    assert "`dinov2-demo --output-dir runs/demo --seed 1 --resume` continues this run" in capsys.readouterr().err
    assert demo.main(["--resume"]) == 130
    assert "`dinov2-demo --resume` continues" in capsys.readouterr().err
