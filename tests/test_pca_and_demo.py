"""The PCA feature picture and the README's main job (the demo)."""

import os

import numpy as np
import torch

from examples import demo, pca_features


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
    picture = pca_features.pca_picture(planted_feature_maps())
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
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_runs_end_to_end(tmp_path, capsys):
    results = demo.run(demo.build_parser().parse_args(["--output-dir", str(tmp_path)]))
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md", "modeling_dinov2.py"} <= set(
        os.listdir(results["model_dir"])
    )
    assert results["cls"].shape == (4, 384)  # four scikit-image photos, ViT-S width
    assert os.path.getsize(results["figure"]) > 10_000
    assert "[4/4]" in capsys.readouterr().out
