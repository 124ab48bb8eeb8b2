"""Pixel-thumbnail embeddings: near-copies of a real photo score near 1, other photos do not."""

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance
from skimage import data

from curation.embed import load_model
from curation.pixels import PixelThumbnails, parse_pixels_spec


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1).item()


def embed(loaded, image: Image.Image) -> torch.Tensor:
    return loaded.module(loaded.preprocessing.transform()(image.convert("RGB"))[None])


def test_copies_are_close_and_other_photos_are_not():
    loaded = load_model("pixels:16")
    assert loaded.name == "pixels:16" and loaded.preprocessing.crop == 16
    photo = Image.fromarray(data.coffee())
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=30)
    copies = [
        Image.open(buffer),  # heavy JPEG recompression
        photo.resize((photo.width // 3, photo.height // 3)),  # downscaled
        ImageEnhance.Contrast(ImageEnhance.Brightness(photo).enhance(1.3)).enhance(0.7),  # re-toned
    ]
    others = [Image.fromarray(data.astronaut()), Image.fromarray(data.rocket()), Image.fromarray(data.chelsea())]
    original = embed(loaded, photo)
    copy_scores = [cosine(original, embed(loaded, image)) for image in copies]
    other_scores = [cosine(original, embed(loaded, image)) for image in others]
    assert min(copy_scores) > 0.97, copy_scores
    assert max(other_scores) < 0.6, other_scores


def test_thumbnail_is_the_mean_centred_grey_average():
    pixels = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    out = PixelThumbnails(2)(pixels)
    grey = pixels.mean(1)  # (2, 4, 4)
    expected = grey.reshape(2, 2, 2, 2, 2).mean((2, 4)).flatten(1)  # 2x2 blocks of the 4x4 grey image
    torch.testing.assert_close(out, expected - expected.mean(1, keepdim=True))
    np.testing.assert_allclose(out.sum(1).numpy(), 0, atol=1e-5)


def test_specs():
    assert parse_pixels_spec("pixels") == 16 and parse_pixels_spec("pixels:28") == 28
    assert parse_pixels_spec("facebook/dinov2-small") is None
    with pytest.raises(ValueError, match="pixels:N"):
        parse_pixels_spec("pixels:big")
