"""Batched multi-crop augmentation: each operation against torchvision's own functional ops, the crop-box
sampler against `RandomResizedCrop.make_params`, the per-crop probabilities, and the statistics of whole
crops against the per-image `MultiCropAugmentation`; collator integration (crop-major order, seeding)."""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from pretraining.augmentations import IMAGENET_MEAN, IMAGENET_STD, MultiCropAugmentation
from pretraining.batched_augmentations import (
    BatchedMultiCropAugmentation,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    gaussian_blur,
    grayscale,
    resized_crops,
    CROP_ATTEMPTS,
    crop_boxes,
    solarize,
    to_uint8_image,
)
from pretraining.collate import MultiCropCollator
from pretraining.data import MultiCropDataset

FACTORS = torch.tensor([0.6, 0.85, 1.0, 1.2, 1.4])
HUES = torch.tensor([-0.1, -0.04, 0.0, 0.05, 0.1])


def _colour_images(n=5, size=16, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _garment(size=28, seed=0):
    """A Fashion-MNIST-like grey image: a bright, left-heavy shape on black (asymmetric, so flips show)."""
    rng = np.random.default_rng(seed)
    image = np.zeros((size, size), np.uint8)
    image[4:24, 6:16] = 220
    image[8:20, 16:22] = 120
    image = np.clip(image + rng.integers(0, 30, image.shape), 0, 255).astype(np.uint8)
    return image


@pytest.mark.parametrize("ours, reference, factors", [
    (adjust_brightness, TF.adjust_brightness, FACTORS),
    (adjust_contrast, TF.adjust_contrast, FACTORS),
    (adjust_saturation, TF.adjust_saturation, FACTORS),
    (adjust_hue, TF.adjust_hue, HUES),
])
def test_colour_operations_match_torchvision_per_image(ours, reference, factors):
    x = _colour_images()
    expected = torch.stack([reference(x[i], float(factors[i])) for i in range(len(x))])
    torch.testing.assert_close(ours(x.clone(), factors), expected, atol=2e-6, rtol=0)


def test_grayscale_blur_and_solarize_match_torchvision():
    x = _colour_images()
    torch.testing.assert_close(grayscale(x), TF.rgb_to_grayscale(x), atol=1e-6, rtol=0)
    sigma = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0])
    expected = torch.stack([TF.gaussian_blur(x[i], [9, 9], [float(sigma[i])] * 2) for i in range(len(x))])
    torch.testing.assert_close(gaussian_blur(x, sigma, 9), expected, atol=1e-6, rtol=0)
    uint8 = (x * 255).round().to(torch.uint8)
    torch.testing.assert_close(solarize(uint8.float() / 255), TF.solarize(uint8, 128).float() / 255)


def test_grey_images_are_unchanged_by_saturation_hue_and_grayscale():
    # (up to the luma weights summing to 0.9999, as torchvision's)
    grey = torch.rand(4, 1, 8, 8).expand(4, 3, 8, 8).contiguous()
    factors = torch.tensor([0.8, 1.2, 0.9, 1.1])
    torch.testing.assert_close(adjust_saturation(grey.clone(), factors), grey, atol=1e-4, rtol=0)
    torch.testing.assert_close(adjust_hue(grey.clone(), torch.tensor([-0.1, 0.1, 0.05, 0.0])), grey, atol=1e-6, rtol=0)
    torch.testing.assert_close(grayscale(grey).expand_as(grey), grey, atol=1e-4, rtol=0)


def test_resized_crops_are_exact_for_unscaled_boxes_and_interpolate_otherwise():
    images = torch.rand(2, 1, 28, 28)
    boxes = torch.tensor([[0, 0, 28, 28], [3, 5, 14, 14]])
    full = resized_crops(images, torch.tensor([0, 1]), boxes, 28)
    torch.testing.assert_close(full[0], images[0])  # the whole image at its own size is the image
    same = resized_crops(images, torch.tensor([0, 1]), boxes, 14)
    torch.testing.assert_close(same[1], images[1, :, 3:17, 5:19])  # a 14-px box at 14 px is the box
    # a constant region stays constant whatever the scale; a horizontal ramp stays a ramp
    ramp = torch.arange(28.0).view(1, 1, 1, 28).expand(1, 1, 28, 28).contiguous()
    up = resized_crops(ramp, torch.tensor([0]), torch.tensor([[0, 4, 10, 10]]), 20)[0, 0]
    assert torch.all(up[:, 1:] >= up[:, :-1]) and torch.allclose(up[0], up[-1])
    assert 3.5 <= up.min() and up.max() <= 13.5  # half-pixel sampling of the box [4, 14)


def _crop_uniforms(n: int) -> torch.Tensor:
    """The (n, 2 * attempts + 2) uniforms `crop_boxes` turns into boxes."""
    return torch.rand(n, 2 * CROP_ATTEMPTS + 2, generator=torch.Generator().manual_seed(0))


def test_crop_boxes_follow_random_resized_crop_statistics():
    n, height, width, scale = 4000, 28, 28, (0.1, 0.4)
    boxes = crop_boxes(_crop_uniforms(n), height, width, scale)
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
    torch.manual_seed(0)
    reference = v2.RandomResizedCrop(12, scale=scale)
    ref = [reference.make_params([torch.zeros(1, height, width)]) for _ in range(n)]
    ref_area = torch.tensor([p["height"] * p["width"] / (height * width) for p in ref])
    ref_log_ratio = torch.tensor([math.log(p["width"] / p["height"]) for p in ref])
    ref_top = torch.tensor([p["top"] / (height - p["height"] + 1) for p in ref])
    area = (h * w).float() / (height * width)
    log_ratio = torch.log(w.float() / h.float())
    rel_top = top.float() / (height - h + 1).float()
    # same distribution: means and quartiles agree within sampling noise (sd of a mean ~ 0.003 here)
    for ours, theirs, tol in [(area, ref_area, 0.01), (log_ratio, ref_log_ratio, 0.02), (rel_top, ref_top, 0.03)]:
        assert abs(ours.mean() - theirs.mean()) < tol
        q = torch.tensor([0.25, 0.5, 0.75])
        assert (torch.quantile(ours, q) - torch.quantile(theirs, q)).abs().max() < 2 * tol
    # rounding aside, areas stay in the scale range
    assert area.min() > scale[0] * 0.8 and area.max() < scale[1] * 1.2


def test_crop_boxes_fall_back_to_the_centre_crop_like_torchvision():
    # a 10 x 40 image with scale (1, 1): no box of the image's area fits, so the centre crop of ratio 4/3 is used
    boxes = crop_boxes(_crop_uniforms(5), 10, 40, (1.0, 1.0))
    ref = v2.RandomResizedCrop(8, scale=(1.0, 1.0)).make_params([torch.zeros(1, 10, 40)])
    expected = torch.tensor([ref["top"], ref["left"], ref["height"], ref["width"]])
    assert (boxes == expected).all(), (boxes, expected)


def _spy_parameters(aug):
    calls = []
    original = aug.sample_parameters

    def spy(uniforms, height, width, scale, blur_probability, solarize_probability):
        params = original(uniforms, height, width, scale, blur_probability, solarize_probability)
        calls.append((scale, params))
        return params

    aug.sample_parameters = spy
    return calls


@pytest.mark.parametrize("original_blur_bug, blur", [(False, (1.0, 0.1, 0.5)), (True, (0.0, 0.9, 0.5))])
def test_per_crop_probabilities_are_the_originals(original_blur_bug, blur):
    aug = BatchedMultiCropAugmentation(28, 12, 4, (0.4, 1.0), (0.1, 0.4), original_blur_bug=original_blur_bug)
    calls = _spy_parameters(aug)
    aug(torch.zeros(3000, 1, 28, 28, dtype=torch.uint8), generator=torch.Generator().manual_seed(0))
    (scale_1, first), (scale_2, second), (scale_local, local) = calls
    assert scale_1 == scale_2 == (0.4, 1.0) and scale_local == (0.1, 0.4) and len(local.flip) == 4 * 3000

    def rate(flags):
        return flags.float().mean().item()

    for params, blur_p, solarize_p in [(first, blur[0], 0.0), (second, blur[1], 0.2), (local, blur[2], 0.0)]:
        assert abs(rate(params.flip) - 0.5) < 0.03
        assert abs(rate(params.jitter) - 0.8) < 0.03
        assert abs(rate(params.gray) - 0.2) < 0.03
        assert abs(rate(params.blur) - blur_p) < 0.03
        assert abs(rate(params.solarize) - solarize_p) < 0.03
        assert (params.blur_sigma >= 0.1).all() and (params.blur_sigma <= 2.0).all()
        assert (params.jitter_factors[:, :2] >= 0.6).all() and (params.jitter_factors[:, :2] <= 1.4).all()
        assert (params.jitter_factors[:, 2] >= 0.8).all() and (params.jitter_factors[:, 2] <= 1.2).all()
        assert params.jitter_factors[:, 3].abs().max() <= 0.1
        assert (params.jitter_order.sort(1).values == torch.arange(4)).all()  # permutations
        first_op = torch.bincount(params.jitter_order[:, 0], minlength=4).float() / len(params.jitter_order)
        assert (first_op - 0.25).abs().max() < 0.04  # every order is equally likely


def _range(t):
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return bool(((t >= (0 - mean) / std - 1e-5) & (t <= (1 - mean) / std + 1e-5)).all())


def test_output_shapes_order_range_and_seeding():
    aug = BatchedMultiCropAugmentation(28, 12, 3, (0.4, 1.0), (0.1, 0.4))
    images = torch.from_numpy(np.stack([_garment(seed=i) for i in range(4)]))[:, None]  # (4, 1, 28, 28)
    out = aug(images, generator=torch.Generator().manual_seed(0))
    assert out["global_crops"].shape == (8, 3, 28, 28) and out["local_crops"].shape == (12, 3, 12, 12)
    assert out["global_crops"].dtype == torch.float32 and _range(out["global_crops"]) and _range(out["local_crops"])
    again = aug(images, generator=torch.Generator().manual_seed(0))
    other = aug(images, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out["local_crops"], again["local_crops"])
    assert not torch.equal(out["global_crops"], other["global_crops"])
    # greyscale stored as RGB gives exactly the one-channel result; colour images work too
    rgb = aug(images.expand(4, 3, 28, 28), generator=torch.Generator().manual_seed(0))
    assert torch.equal(rgb["global_crops"], out["global_crops"])
    colour = aug((torch.rand(4, 3, 20, 24) * 255).to(torch.uint8), generator=torch.Generator().manual_seed(0))
    assert colour["global_crops"].shape == (8, 3, 28, 28) and _range(colour["global_crops"])
    assert not torch.equal(colour["global_crops"][:, 0], colour["global_crops"][:, 1])
    # crop-major: with every colour op off and whole-image crops, crop rows j * B + i show image i
    plain = BatchedMultiCropAugmentation(28, 12, 2, (1.0, 1.0), (1.0, 1.0))
    plain.colour_jitter_probability = plain.grayscale_probability = plain.solarize_probability = 0.0
    plain.blur_probabilities = (0.0, 0.0, 0.0)
    constant = torch.tensor([10, 60, 200], dtype=torch.uint8).view(3, 1, 1, 1).expand(3, 1, 28, 28)
    crops = plain(constant.contiguous(), generator=torch.Generator().manual_seed(0))
    levels = (crops["global_crops"][:, 0, 14, 14] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255
    torch.testing.assert_close(levels, torch.tensor([10.0, 60, 200] * 2), atol=1e-3, rtol=0)
    levels = (crops["local_crops"][:, 0, 6, 6] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255
    torch.testing.assert_close(levels, torch.tensor([10.0, 60, 200] * 2), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="uint8 batch"):
        aug(torch.zeros(2, 28, 28))


def test_crop_statistics_match_the_per_image_augmentation():
    """Same image, many crops: the pixel statistics and the flip rate of both pipelines agree."""
    image = _garment()
    n = 400
    batched = BatchedMultiCropAugmentation(28, 12, 2, (0.4, 1.0), (0.1, 0.4))
    ours = batched(torch.from_numpy(image)[None, None].expand(n, 1, 28, 28).contiguous(),
                   generator=torch.Generator().manual_seed(0))
    per_image = MultiCropAugmentation(28, 12, 2, (0.4, 1.0), (0.1, 0.4), blur_kernel_size=9)
    pil = Image.fromarray(image, mode="L")
    theirs = [per_image(pil, generator=torch.Generator().manual_seed(i)) for i in range(n)]
    reference = {
        "global_crops": torch.cat([torch.stack([t["global_crops"][j] for t in theirs]) for j in range(2)]),
        "local_crops": torch.cat([torch.stack([t["local_crops"][j] for t in theirs]) for j in range(2)]),
    }
    def same_mean(x, y):  # per-crop values x, y: means within 4 standard errors of their difference
        standard_error = (x.var() / len(x) + y.var() / len(y)).sqrt()
        return abs(x.mean() - y.mean()) < 4 * standard_error + 0.01

    for key in ("global_crops", "local_crops"):
        a, b = ours[key][:, 0], reference[key][:, 0]
        assert same_mean(a.mean((1, 2)), b.mean((1, 2))), (key, a.mean(), b.mean())
        assert same_mean(a.std((1, 2)), b.std((1, 2))), (key, a.std(), b.std())
        # the share of bright (object) pixels tracks the crop scales
        assert same_mean((a > 0).float().mean((1, 2)), (b > 0).float().mean((1, 2)))
        # flips: the bright half of the garment is on the left in unflipped crops
        left, right = a[..., : a.shape[-1] // 2].mean((1, 2)), a[..., a.shape[-1] // 2:].mean((1, 2))
        ref_left, ref_right = b[..., : b.shape[-1] // 2].mean((1, 2)), b[..., b.shape[-1] // 2:].mean((1, 2))
        assert abs((left > right).float().mean() - (ref_left > ref_right).float().mean()) < 0.08


def test_collator_batches_uint8_samples_reproducibly(tmp_path):
    for i in range(6):
        Image.fromarray(_garment(seed=i), mode="L").save(tmp_path / f"{i}.png")
    aug = BatchedMultiCropAugmentation(28, 12, 2, (0.4, 1.0), (0.1, 0.4))
    dataset = MultiCropDataset(str(tmp_path), to_uint8_image, seed=3)
    sample = dataset[0]
    assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, 28, 28)
    collator = MultiCropCollator(patch_size=4, global_crops_size=28, batch_transform=aug)
    batch = collator([dataset[i] for i in range(4)])
    assert batch["global_crops"].shape == (8, 3, 28, 28) and batch["local_crops"].shape == (8, 3, 12, 12)
    assert batch["masks"].shape == (8, 49) and batch["mask_weights"].numel() == batch["mask_indices"].numel()
    again = collator([dataset[i] for i in range(4)])
    for key in ("global_crops", "local_crops", "masks"):
        assert torch.equal(batch[key], again[key]), key  # a function of the samples' seeds only
    dataset.set_epoch(1)
    assert not torch.equal(collator([dataset[i] for i in range(4)])["global_crops"], batch["global_crops"])
    # raw items (PIL images) and mixed sizes work, one image at a time
    mixed = [Image.fromarray(_garment(seed=1), mode="L"), Image.fromarray(np.zeros((40, 30, 3), np.uint8))]
    out = MultiCropCollator(patch_size=4, global_crops_size=28, batch_transform=aug, seed=0)(mixed)
    assert out["global_crops"].shape == (4, 3, 28, 28) and out["local_crops"].shape == (4, 3, 12, 12)
    with pytest.raises(ValueError, match="not crops"):
        collator([{"global_crops": [torch.zeros(3, 28, 28)] * 2, "seed": 0}])


def test_blur_solarize_and_jitter_options_in_both_augmentations():
    options = dict(blur_probabilities=(0.0, 0.0, 0.0), colour_jitter_probability=0.5, solarize_probability=0.0)
    batched = BatchedMultiCropAugmentation(28, 12, 2, **options)
    assert batched.blur_probabilities == (0.0, 0.0, 0.0) and batched.colour_jitter_probability == 0.5
    calls = _spy_parameters(batched)
    batched(torch.zeros(2000, 1, 28, 28, dtype=torch.uint8), generator=torch.Generator().manual_seed(0))
    assert not any(params.blur.any() or params.solarize.any() for _, params in calls)
    assert abs(calls[0][1].jitter.float().mean() - 0.5) < 0.04
    per_image = MultiCropAugmentation(28, 12, 2, **options)
    assert per_image.blur_probabilities == (0.0, 0.0, 0.0)
    jitter = next(t for t in per_image.global_transform_2.transforms
                  if isinstance(t, v2.RandomApply) and isinstance(t.transforms[0], v2.ColorJitter))
    solarize = next(t for t in per_image.global_transform_2.transforms if isinstance(t, v2.RandomSolarize))
    assert jitter.p == 0.5 and solarize.p == 0.0
    # explicit probabilities win over original_blur_bug; bad values are named
    assert BatchedMultiCropAugmentation(28, 12, 2, original_blur_bug=True,
                                        blur_probabilities=(0.5, 0.5, 0.5)).blur_probabilities == (0.5, 0.5, 0.5)
    for cls in (BatchedMultiCropAugmentation, MultiCropAugmentation):
        with pytest.raises(ValueError, match="3 values"):
            cls(28, 12, 2, blur_probabilities=(0.5, 0.5))
        with pytest.raises(ValueError, match="solarize probability"):
            cls(28, 12, 2, solarize_probability=1.5)


def test_a_samples_crops_and_masks_do_not_depend_on_its_batch(tmp_path):
    """With per-sample seeds (MultiCropDataset), the crops and the per-sample masks of a sample are the same in a
    batch of 6 as in batches of 2 and 4 (what N processes x b == 1 process x N*b needs), grey and colour mixed."""
    rng = np.random.default_rng(0)
    for i in range(6):
        pixels = _garment(seed=i) if i % 2 else rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
    dataset = MultiCropDataset(str(tmp_path), to_uint8_image, seed=5)
    collator = MultiCropCollator(patch_size=4, global_crops_size=28, mask_sampling="sample",
                                 batch_transform=BatchedMultiCropAugmentation(28, 12, 3, (0.4, 1.0), (0.1, 0.4)))
    samples = [dataset[i] for i in range(6)]
    whole, parts = collator(samples), [collator(samples[:2]), collator(samples[2:])]

    def per_sample(batch, key, size):  # crop-major rows -> (sample, crop, ...)
        return batch[key].unflatten(0, (-1, size)).transpose(0, 1)

    for key in ("global_crops", "local_crops", "masks"):
        split = torch.cat([per_sample(parts[0], key, 2), per_sample(parts[1], key, 4)])
        assert torch.equal(split, per_sample(whole, key, 6)), key
    # the stratified default masks do depend on the batch
    stratified = MultiCropCollator(patch_size=4, global_crops_size=28, batch_transform=collator.batch_transform)
    assert not torch.equal(stratified(samples)["masks"][:2], stratified(samples[:2])["masks"][:2])
