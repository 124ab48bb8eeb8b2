"""The one image decoder (modeling_dinov2.image_decoding) shared by pretraining and curation: mode conversion,
16-bit scaling, EXIF orientation, minimum size, bounded size (JPEG draft, reduce after load), the
decompression-bomb limit and broken items; and both pipelines giving the same pixels for the same file."""

import io

import numpy as np
import pytest
import torch
from PIL import Image, JpegImagePlugin

from modeling_dinov2.image_decoding import BadImageError, bounded_size, decode_image


def encoded(image: Image.Image, format="PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **kwargs)
    return buffer.getvalue()


def photo(size=(40, 32), seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def smooth(size=(120, 80)) -> Image.Image:
    """A colour gradient: its mean survives scaling down."""
    x, y = np.meshgrid(np.linspace(0, 255, size[0]), np.linspace(0, 255, size[1]))
    return Image.fromarray(np.stack([x, y, 255 - x], axis=-1).astype(np.uint8))


def grey16(size=(12, 12)) -> Image.Image:
    """16-bit greyscale whose values span 0..65535 evenly: mean 127.5 once scaled to 8 bits."""
    values = np.linspace(0, 65535, size[0] * size[1]).reshape(size[1], size[0])
    return Image.fromarray(np.round(values).astype(np.uint16))


def halves(orientation: int) -> bytes:
    """A 40 x 20 JPEG, left half red and right half blue, with an EXIF orientation tag."""
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encoded(image, "JPEG", quality=95, exif=exif.tobytes())


def test_modes_are_converted_to_rgb():
    cmyk = decode_image(encoded(photo().convert("CMYK"), "JPEG"))
    assert cmyk.mode == "RGB" and cmyk.size == (40, 32)
    # 16-bit greyscale is rescaled by 65535, not clipped at 255 (0 -> 0, 32768 -> 128, 65535 -> 255)
    deep = Image.fromarray(np.array([[0, 32768, 65535] * 4] * 12, dtype=np.uint16))
    rgb = np.asarray(decode_image(encoded(deep)))
    assert rgb.shape == (12, 12, 3) and rgb[0, :3, 0].tolist() == [0, 128, 255]
    assert np.asarray(decode_image(encoded(grey16()))).mean() == pytest.approx(127.5, abs=0.5)
    # transparency is composited on white
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    out = np.asarray(decode_image(encoded(rgba)))
    assert out[5, 5].tolist() == [255, 255, 255] and out[0, 0].tolist() == [255, 0, 0]
    palette = decode_image(encoded(photo().convert("P")))
    assert palette.mode == "RGB"
    grey = decode_image(Image.new("L", (9, 9), 7))
    assert np.asarray(grey)[0, 0].tolist() == [7, 7, 7]
    floats = decode_image(Image.fromarray(np.full((9, 9), 0.5, dtype=np.float32)))
    assert np.asarray(floats)[0, 0, 0] == 128


@pytest.mark.parametrize("orientation, size, top_left", [
    (1, (40, 20), (255, 0, 0)),  # as stored
    (3, (40, 20), (0, 0, 255)),  # rotated 180 degrees
    (6, (20, 40), (255, 0, 0)),  # rotated 90 degrees clockwise: the red left half is now on top
    (8, (20, 40), (0, 0, 255)),  # rotated 90 degrees counter-clockwise: the blue right half is on top
])
def test_exif_orientation_is_applied(orientation, size, top_left):
    image = decode_image(halves(orientation))
    assert image.size == size
    pixels = np.asarray(image).astype(int)
    assert np.abs(pixels[2, 2] - top_left).max() < 40 and np.abs(pixels[-3, -3] - top_left).max() > 200


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"), (b"hello", "not an image"), (None, "no image data"), ({"bytes": None, "path": None}, "no image"),
    (3, "unsupported"),
])
def test_broken_items_are_refused_with_a_reason(data, reason):
    with pytest.raises(BadImageError, match=reason):
        decode_image(data)


def test_truncated_missing_and_too_small(tmp_path):
    jpeg = encoded(photo(size=(64, 64)), "JPEG")
    with pytest.raises(BadImageError, match="truncated"):
        decode_image(jpeg[: len(jpeg) // 3])
    with pytest.raises(BadImageError, match="cannot read the file"):
        decode_image(tmp_path / "missing.png")
    for size in [(1, 1), (4, 4), (100, 7)]:
        with pytest.raises(BadImageError, match=rf"too small \({size[0]}x{size[1]} px, minimum side 8\)"):
            decode_image(encoded(photo(size=size)))
    assert decode_image(encoded(photo(size=(4, 4))), min_size=1).size == (4, 4)


def test_bounded_size():
    assert bounded_size((400, 300), None) == (400, 300)
    assert bounded_size((400, 300), 120_000) == (400, 300)
    assert bounded_size((400, 300), 10_000) == (115, 86)  # 9,890 pixels, aspect ratio kept
    assert bounded_size((100_000, 2), 1_000) == (1000, 1)  # never a zero side, never over the bound
    assert bounded_size((2, 100_000), 1_000) == (1, 1000)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "I;16"])
def test_large_images_are_scaled_down_to_the_bound(mode):
    full = smooth().convert("L") if mode == "I;16" else smooth().convert(mode)
    if mode == "I;16":
        full = Image.fromarray((np.asarray(full).astype(np.uint16) * 257))
    data = encoded(full)
    reference = np.asarray(decode_image(data, max_pixels=None), dtype=float)
    small = decode_image(data, max_pixels=1200)
    assert small.mode == "RGB" and small.size == (42, 28)
    assert reference.shape == (80, 120, 3)
    assert np.abs(np.asarray(small, dtype=float).mean(axis=(0, 1)) - reference.mean(axis=(0, 1))).max() < 3


def test_jpeg_is_decoded_at_a_reduced_scale(monkeypatch):
    scales = []
    draft = JpegImagePlugin.JpegImageFile.draft

    def recording_draft(self, mode, size):
        result = draft(self, mode, size)
        scales.append(self.decoderconfig[0])
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", recording_draft)
    data = encoded(smooth((800, 600)), "JPEG", quality=95)
    image = decode_image(data, max_pixels=100 * 75)
    assert scales == [8] and image.size == (100, 75)  # decoded at 1/8 scale, never at 800 x 600
    reference = np.asarray(decode_image(data, max_pixels=None).resize((100, 75), Image.Resampling.BOX), dtype=float)
    assert np.abs(np.asarray(image, dtype=float) - reference).mean() < 4
    scales.clear()
    assert decode_image(data).size == (800, 600) and scales == []  # within the bound: decoded as is


def test_decompression_bombs_are_refused(monkeypatch):
    data = encoded(Image.new("RGB", (100, 100)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)  # 10,000 pixels: over twice the limit
    with pytest.raises(BadImageError, match="too large to decode safely"):
        decode_image(data)
    with pytest.raises(BadImageError, match="too large to decode safely"):
        decode_image(data, max_pixels=100)  # the bound does not lift the bomb limit


def test_pretraining_and_curation_decode_the_same_pixels(tmp_path):
    """Issue 21 item 8: the same files give the same pixels, or the same skip reason, in both pipelines."""
    from curation.embed import _DecodedImages
    from curation.inputs import load_image_set
    from pretraining.batched_augmentations import to_uint8_image
    from pretraining.data import MultiCropDataset

    folder = tmp_path / "images"
    folder.mkdir()
    grey16((40, 30)).save(folder / "a_deep16.png")
    (folder / "b_rotated.jpg").write_bytes(halves(6))
    Image.new("RGBA", (20, 20), (255, 0, 0, 64)).save(folder / "c_rgba.png")
    photo().convert("P").save(folder / "d_palette.png")
    photo(size=(1, 1)).save(folder / "e_pixel.png")
    photo(seed=3).save(folder / "f_photo.png")
    photo().convert("CMYK").save(folder / "g_cmyk.jpg")

    pretraining = MultiCropDataset(folder, to_uint8_image)
    names = [path.name for path in pretraining.source.files]
    pretraining_out = {}
    for index, name in enumerate(names):
        sample = pretraining[index]
        skipped = {position: reason for position, _, reason in sample["skipped"]}
        pretraining_out[name] = skipped[index] if index in skipped else sample["image"]
    image_set = load_image_set(str(folder), "pool")
    curation = _DecodedImages(image_set, lambda image: torch.from_numpy(np.array(image)).permute(2, 0, 1))
    curation_out = {}
    for row in range(len(image_set)):
        _, pixels, error = curation[row]
        curation_out[image_set.source_of(row).rsplit("/", 1)[-1]] = error if error is not None else pixels

    assert sorted(curation_out) == names
    for name in names:
        if name == "e_pixel.png":
            assert "too small (1x1 px" in pretraining_out[name] and "too small (1x1 px" in curation_out[name]
        else:
            assert torch.equal(pretraining_out[name], curation_out[name]), name
    assert pretraining_out["a_deep16.png"].float().mean().item() == pytest.approx(127.5, abs=0.5)
    assert tuple(pretraining_out["b_rotated.jpg"].shape) == (3, 40, 20)
