"""Multi-crop augmentation: shapes, dtype, value ranges, greyscale input, seeding and blur settings.

Value ranges are derived from the normalisation: a pixel in [0, 1] maps to [(0 - mean) / std,
(1 - mean) / std] per channel.
"""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from pretraining.augmentations import IMAGENET_MEAN, IMAGENET_STD, MultiCropAugmentation
from pretraining.collate import MultiCropCollator


def _rgb_image(h=64, w=80, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _grey_image(size=28, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8))  # mode "L"


def _check_range(t):
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    low, high = (0 - mean) / std, (1 - mean) / std
    assert (t >= low - 1e-5).all() and (t <= high + 1e-5).all()


def test_default_shapes_dtype_and_range():
    out = MultiCropAugmentation(global_crops_size=56, local_crops_size=28)(_rgb_image())
    assert set(out) == {"global_crops", "local_crops"}
    assert len(out["global_crops"]) == 2 and len(out["local_crops"]) == 8
    for t in out["global_crops"]:
        assert t.shape == (3, 56, 56) and t.dtype == torch.float32
        _check_range(t)
    for t in out["local_crops"]:
        assert t.shape == (3, 28, 28) and t.dtype == torch.float32
        _check_range(t)


def test_fashion_mnist_sized_greyscale_input():
    aug = MultiCropAugmentation(global_crops_size=28, local_crops_size=12, n_local_crops=6)
    out = aug(_grey_image())
    assert [t.shape for t in out["global_crops"]] == [(3, 28, 28)] * 2
    assert [t.shape for t in out["local_crops"]] == [(3, 12, 12)] * 6
    # A uint8 (1, H, W) tensor works as well.
    out = aug(torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8))
    assert out["global_crops"][0].shape == (3, 28, 28)
    assert len(MultiCropAugmentation(28, 12, n_local_crops=0)(_grey_image())["local_crops"]) == 0


def test_generator_makes_output_reproducible_without_touching_global_rng():
    aug = MultiCropAugmentation(global_crops_size=28, local_crops_size=12, n_local_crops=2)
    image = _grey_image()
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = aug(image, generator=torch.Generator().manual_seed(1))
    b = aug(image, generator=torch.Generator().manual_seed(1))
    c = aug(image, generator=torch.Generator().manual_seed(2))
    assert torch.equal(torch.get_rng_state(), state)
    crops_a, crops_b = a["global_crops"] + a["local_crops"], b["global_crops"] + b["local_crops"]
    assert all(torch.equal(x, y) for x, y in zip(crops_a, crops_b))
    assert not torch.equal(a["global_crops"][0], c["global_crops"][0])
    # Without a generator, torch.manual_seed controls the output.
    torch.manual_seed(3)
    d = aug(image)
    torch.manual_seed(3)
    e = aug(image)
    assert torch.equal(d["local_crops"][1], e["local_crops"][1])


def _blur_probability(compose):
    for t in compose.transforms:
        if isinstance(t, v2.RandomApply) and isinstance(t.transforms[0], v2.GaussianBlur):
            return t.p
    raise AssertionError("no blur")


def test_blur_probabilities_and_solarize_placement():
    fixed = MultiCropAugmentation(28, 12, 2)
    bug = MultiCropAugmentation(28, 12, 2, original_blur_bug=True)
    transforms = lambda a: (a.global_transform_1, a.global_transform_2, a.local_transform)  # noqa: E731
    # Nominal DINOv2 values vs the inverted ones the released models were trained with.
    assert [_blur_probability(t) for t in transforms(fixed)] == [1.0, 0.1, 0.5]
    assert [_blur_probability(t) for t in transforms(bug)] == [0.0, 0.9, 0.5]
    has_solarize = [any(isinstance(s, v2.RandomSolarize) for s in t.transforms) for t in transforms(fixed)]
    assert has_solarize == [False, True, False]
    crop = fixed.global_transform_1.transforms[0]
    assert isinstance(crop, v2.RandomResizedCrop) and crop.interpolation == v2.InterpolationMode.BICUBIC
    assert crop.scale == (0.32, 1.0) and fixed.local_transform.transforms[0].scale == (0.05, 0.32)


def test_collator_applies_transform_to_raw_items():
    aug = MultiCropAugmentation(global_crops_size=28, local_crops_size=12, n_local_crops=3)
    collator = MultiCropCollator(patch_size=4, global_crops_size=28, transform=aug, seed=0)
    items = [{"image": _grey_image(seed=i), "label": i} for i in range(4)]
    batch = collator(items)
    assert batch["global_crops"].shape == (8, 3, 28, 28)
    assert batch["local_crops"].shape == (12, 3, 12, 12)
    again = MultiCropCollator(patch_size=4, global_crops_size=28, transform=aug, seed=0)(items)
    assert torch.equal(batch["global_crops"], again["global_crops"])  # seed drives crops and masks
    tuples = collator([(_grey_image(seed=i), i) for i in range(2)])  # torchvision-style (image, label)
    assert tuples["global_crops"].shape == (4, 3, 28, 28)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="local_crops_scale"):
        MultiCropAugmentation(local_crops_scale=(0.5, 0.1))
    with pytest.raises(ValueError, match="blur_kernel_size"):
        MultiCropAugmentation(global_crops_size=28, local_crops_size=4)
    with pytest.raises(ValueError, match="PIL image"):
        MultiCropAugmentation(28, 12)(np.zeros((28, 28), dtype=np.uint8))
