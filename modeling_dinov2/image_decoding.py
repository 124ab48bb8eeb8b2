"""One image decoder for pretraining, curation and the examples: any stored image -> an upright RGB PIL image of
bounded size, or a [`BadImageError`] that says why not.

- Modes: greyscale, CMYK, YCbCr and palette images are converted; 16-bit and float images are rescaled by
  their value range (16-bit by 65535, so mid-grey stays mid-grey instead of clipping to white);
  transparency is composited on white.
- Orientation: the EXIF orientation tag is applied (a phone photo stored sideways comes out upright).
- Minimum size: an image whose shorter side is below `min_size` (a tracking pixel, a broken thumbnail) is
  refused.
- Bounded size: an image above `max_pixels` is scaled down, keeping its aspect ratio, to at most
  `max_pixels`. JPEGs are decoded directly at 1/2, 1/4 or 1/8 scale (`Image.draft`); other formats are
  decoded whole and then reduced, so one huge file costs its full decode for a moment (~0.75 GB for a
  144-Mpx RGB PNG: PIL holds RGB at 4 bytes a pixel, plus the reduction) and what is kept is at most
  `max_pixels` pixels (16.8 MB as a PIL RGB image, 12.6 MB as a uint8 tensor, at the default 2048 x 2048).
- Bombs: PIL's decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`) still applies; a file above twice
  the limit is refused with a reason instead of being decoded.
"""

from __future__ import annotations

import io
import math
import os
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

# below this side an "image" carries no usable content (a 1-px tracking pixel, a broken thumbnail)
DEFAULT_MIN_SIZE = 8
# 2048 x 2048 (12.6 MB of RGB bytes): many times the crop and resize sides of pretraining (224 px) and of the
# curation models (256 px), so bounding changes what they see only by the resampling of an already
# downsampling resize
DEFAULT_MAX_PIXELS = 2048 * 2048
ALPHA_BACKGROUND = (255, 255, 255)
# modes that resize interpolates directly; palette, bilevel and high-bit-depth images are converted first
_RESIZABLE_MODES = ("RGB", "RGBA", "L", "LA", "CMYK", "YCbCr")


class BadImageError(ValueError):
    """An item that cannot be turned into an RGB image; the message says why."""


def _high_bit_depth_to_8bit(image: Image.Image) -> Image.Image:
    """16-bit ("I;16*", "I") and float ("F") images -> 8-bit greyscale, scaled by the value range
    (`convert("L")` would clip everything above 255 to white)."""
    values = np.asarray(image, dtype=np.float32)
    if image.mode == "F":
        top = 1.0 if values.max(initial=0.0) <= 1.0 else float(values.max())
        low = min(float(values.min(initial=0.0)), 0.0)
    else:
        low, top = 0.0, 65535.0 if values.max(initial=0) > 255 else 255.0
    if top <= low:
        top = low + 1.0
    scaled = np.clip((values - low) * (255.0 / (top - low)), 0.0, 255.0)
    return Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: transparency composited on white, high bit depths rescaled, CMYK/palette/
    greyscale/YCbCr converted."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        return _high_bit_depth_to_8bit(image).convert("RGB")
    if image.mode == "P" and "transparency" in image.info or image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def bounded_size(size: tuple[int, int], max_pixels: int | None) -> tuple[int, int]:
    """`size` scaled down, aspect ratio kept, to at most `max_pixels` pixels (unchanged if it fits)."""
    width, height = size
    if max_pixels is None or width * height <= max_pixels:
        return size
    scale = math.sqrt(max_pixels / (width * height))
    new_height = max(1, int(height * scale))
    new_width = max(1, min(int(width * scale), max_pixels // new_height))
    # the min()s only act on extreme aspect ratios, where a side was raised to 1 px
    return new_width, max(1, min(new_height, max_pixels // new_width))


def _open(item: Any) -> Image.Image:
    """The (lazy) PIL image of `item`; a [`BadImageError`] for anything that is not an image."""
    if isinstance(item, dict):
        item = item.get("bytes") or item.get("path")
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, (bytes, bytearray)):
        if len(item) == 0:
            raise BadImageError("empty file")
        source = io.BytesIO(item)
    elif isinstance(item, (str, os.PathLike)):
        try:
            empty = os.path.getsize(item) == 0
        except OSError as error:
            raise BadImageError(f"cannot read the file ({error})") from None
        if empty:
            raise BadImageError("empty file")
        source = item
    elif item is None:
        raise BadImageError("no image data")
    else:
        raise BadImageError(f"unsupported item type {type(item).__name__}")
    try:
        return Image.open(source)
    except UnidentifiedImageError:
        raise BadImageError("not an image (PIL cannot identify it)") from None
    except Image.DecompressionBombError as error:
        raise BadImageError(f"too large to decode safely ({error})") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise BadImageError(f"cannot read the image ({error})") from None


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag (a copy only when there is one to apply)."""
    if image.getexif().get(ExifTags.Base.Orientation, 1) in (0, 1):
        return image
    return ImageOps.exif_transpose(image)


def _shrink(image: Image.Image, max_pixels: int | None) -> Image.Image:
    size = bounded_size(image.size, max_pixels)
    if size == image.size:
        return image
    if image.mode not in _RESIZABLE_MODES:
        image = to_rgb(image)  # palette indices cannot be interpolated; high bit depths are rescaled first
    return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)


def decode_image(
    item: Any, min_size: int = DEFAULT_MIN_SIZE, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Decode `item` (a PIL image, encoded bytes, a path, or a `datasets.Image` `{"bytes", "path"}` dict) into
    a loaded, upright RGB PIL image of at most `max_pixels` pixels (`None`: no bound); raise
    [`BadImageError`] naming the problem otherwise (see the module docstring)."""
    image = _open(item)
    stored_size = image.size
    target_size = bounded_size(stored_size, max_pixels)
    try:
        if target_size != stored_size:
            image.draft(None, target_size)  # JPEG: decode at 1/2, 1/4 or 1/8 scale, still >= the target
        image.load()  # decode now: truncated files fail here, not inside the augmentation
        image = _upright(image)
    except Image.DecompressionBombError as error:
        raise BadImageError(f"too large to decode safely ({error})") from None
    except (OSError, SyntaxError, ValueError) as error:  # truncated / corrupt data
        raise BadImageError(f"corrupt or truncated image ({error})") from None
    if min(stored_size) < min_size:
        raise BadImageError(f"too small ({stored_size[0]}x{stored_size[1]} px, minimum side {min_size})")
    mode = image.mode
    try:
        return to_rgb(_shrink(image, max_pixels))
    except (OSError, ValueError) as error:
        raise BadImageError(f"cannot convert a {mode} image to RGB ({error})") from None
