"""Block masking, stratified per-batch mask sampling and the multi-crop collator.

Expected values are derived by hand from the DINOv2 formulas (quoted in the comments) or checked as
invariants that must hold for every draw (counts, weights, index consistency).
"""

import random

import pytest
import torch

from pretraining.collate import MultiCropCollator
from pretraining.masking import BlockMaskGenerator, sample_masks


def test_default_block_area_limit():
    assert BlockMaskGenerator(16).max_num_patches == 128  # 0.5 * 256
    assert BlockMaskGenerator((4, 6)).max_num_patches == 12


@pytest.mark.parametrize("side, max_new", [(16, 60), (4, 8)])
def test_single_block_is_a_filled_rectangle(side, max_new):
    gen = BlockMaskGenerator(side)
    placed = 0
    for seed in range(50):
        g = torch.Generator().manual_seed(seed)
        mask = torch.zeros(side, side, dtype=torch.bool)
        n_new = gen.add_block(mask, max_new_patches=max_new, generator=g)
        assert n_new == int(mask.sum())
        if n_new == 0:
            continue
        placed += 1
        rows, cols = mask.any(dim=1).nonzero().flatten(), mask.any(dim=0).nonzero().flatten()
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert n_new == h * w  # the bounding box is completely filled: a rectangle
        # DINOv2 requires h < H and w < W (a block never spans the whole grid).
        assert n_new <= max_new and h < side and w < side
    assert placed > 40


@pytest.mark.parametrize("target", [0, 4, 25, 77, 128])
def test_mask_never_exceeds_target(target):
    gen = BlockMaskGenerator((16, 16))
    for seed in range(10):
        count = int(gen(target, torch.Generator().manual_seed(seed)).sum())
        assert count <= target
        if target == 0:
            assert count == 0


def test_mask_generator_is_deterministic_and_uses_no_global_rng():
    gen = BlockMaskGenerator(14)
    torch.manual_seed(123)
    random.seed(123)
    torch_state, python_state = torch.get_rng_state(), random.getstate()
    a = gen(60, torch.Generator().manual_seed(7))
    b = gen(60, torch.Generator().manual_seed(7))
    c = gen(60, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == python_state


def test_bad_target_raises():
    with pytest.raises(ValueError, match=r"\[0, 16\]"):
        BlockMaskGenerator(4)(17, torch.Generator())


def test_sample_masks_counts_weights_and_indices():
    n_images, N = 64, 256  # 2B = 64 global crops of 16 x 16 patches
    batch = sample_masks(n_images, BlockMaskGenerator(16), torch.Generator().manual_seed(0))
    masks = batch.masks
    assert masks.shape == (n_images, N) and masks.dtype == torch.bool
    counts = masks.sum(dim=1)
    # int(64 * 0.5) = 32 images get a non-empty mask (targets >= int(256 * 0.1) = 25 > 0).
    assert int((counts > 0).sum()) == 32
    # Ratios stay within [0, 0.5]; the stratum limits are int(256 * probs[i + 1]) with
    # probs = linspace(0.1, 0.5, 33), so the sorted counts are bounded by the sorted limits.
    assert counts.max() <= 128
    limits = sorted(int(N * p) for p in torch.linspace(0.1, 0.5, 33)[1:])
    masked_counts = sorted(counts[counts > 0].tolist())
    assert all(c <= lim for c, lim in zip(masked_counts, limits))
    assert 0.2 < counts[counts > 0].float().mean() / N < 0.4  # stratified around 0.3
    # Index / count / weight consistency.
    assert torch.equal(batch.mask_indices, masks.flatten().nonzero().flatten())
    assert int(masks.sum()) == len(batch.mask_indices)
    image_of_token = batch.mask_indices // N
    torch.testing.assert_close(batch.mask_weights, 1.0 / counts[image_of_token].float())
    assert batch.mask_weights.sum().item() == pytest.approx(32.0)  # sum of weights = masked images


def test_sample_masks_hand_bounds_and_determinism():
    # 4 images -> int(4 * 0.5) = 2 masked; probs = [0.1, 0.3, 0.5]: the two targets are below
    # int(256 * 0.3) = 76 and int(256 * 0.5) = 128 patches, the other two images are not masked
    gen = BlockMaskGenerator(16)
    a = sample_masks(4, gen, torch.Generator().manual_seed(3))
    b = sample_masks(4, gen, torch.Generator().manual_seed(3))
    counts = sorted(a.masks.sum(1).tolist())
    assert counts[:2] == [0, 0] and 0 < counts[2] <= 128 and 0 < counts[3] <= 128 and min(counts[2:]) <= 76
    assert all(torch.equal(x, y) for x, y in zip(a[:4], b[:4]))
    others = [sample_masks(4, gen, torch.Generator().manual_seed(s)).masks for s in range(5)]
    assert any(not torch.equal(a.masks, other) for other in others)
    with pytest.raises(ValueError, match="mask_ratio_min_max"):
        sample_masks(4, gen, torch.Generator(), mask_ratio_min_max=(0.5, 0.1))


# ----------------------------------------------------------------------------------------------
# Collator
# ----------------------------------------------------------------------------------------------


def _fake_samples(batch_size, n_local, size=28, local_size=12):
    # Crop c of sample i is filled with the value 10 * i + c, so the stacking order can be read back.
    return [
        {
            "global_crops": [torch.full((3, size, size), 10.0 * i + c) for c in range(2)],
            "local_crops": [torch.full((3, local_size, local_size), 10.0 * i + 2 + c) for c in range(n_local)],
        }
        for i in range(batch_size)
    ]


def test_collator_crop_major_stacking_and_mask_outputs():
    B, n_local = 3, 4
    collator = MultiCropCollator(patch_size=4, global_crops_size=28, seed=0)
    assert collator.num_patches == 49  # (28 / 4) ** 2
    batch = collator(_fake_samples(B, n_local))
    assert batch["global_crops"].shape == (2 * B, 3, 28, 28)
    assert batch["local_crops"].shape == (n_local * B, 3, 12, 12)
    # crop-major: [crop 0 of samples 0..2, crop 1 of samples 0..2]
    assert batch["global_crops"][:, 0, 0, 0].tolist() == [0.0, 10.0, 20.0, 1.0, 11.0, 21.0]
    assert batch["local_crops"][:, 0, 0, 0].tolist()[:4] == [2.0, 12.0, 22.0, 3.0]
    assert batch["masks"].shape == (2 * B, 49) and batch["masks"].dtype == torch.bool
    assert int(batch["masks"].any(dim=1).sum()) == int(2 * B * 0.5)
    assert int(batch["masks"].sum()) == batch["mask_indices"].numel() == batch["mask_weights"].numel()
    assert "upperbound" not in batch and "n_masked_patches" not in batch  # nothing the forward does not read


def test_collator_without_local_crops_and_determinism():
    samples = _fake_samples(4, n_local=0)
    a = MultiCropCollator(patch_size=4, global_crops_size=28, seed=5)(samples)
    b = MultiCropCollator(patch_size=4, global_crops_size=28, generator=torch.Generator().manual_seed(5))(samples)
    assert "local_crops" not in a
    assert torch.equal(a["masks"], b["masks"])  # seed 5 == a generator seeded with 5 in the main process
    collator = MultiCropCollator(patch_size=4, global_crops_size=28, seed=5)
    first, second = collator(samples), collator(samples)
    assert torch.equal(first["masks"], a["masks"]) and not torch.equal(first["masks"], second["masks"])


def test_collator_default_seeding_follows_torch_manual_seed():
    samples = _fake_samples(8, n_local=0)
    torch.manual_seed(0)
    a = MultiCropCollator(patch_size=4, global_crops_size=28)(samples)
    torch.manual_seed(0)
    b = MultiCropCollator(patch_size=4, global_crops_size=28)(samples)
    assert torch.equal(a["masks"], b["masks"])


def test_collator_bad_inputs():
    with pytest.raises(ValueError, match="multiple of `patch_size`"):
        MultiCropCollator(patch_size=14, global_crops_size=100)
    collator = MultiCropCollator(patch_size=4, global_crops_size=32)
    with pytest.raises(ValueError, match=r"global crops of size \(32, 32\)"):
        collator(_fake_samples(2, 0, size=28))
    with pytest.raises(ValueError, match="transform"):
        collator([{"image": torch.zeros(1)}])


def test_per_sample_masks_follow_the_stratified_distribution_per_crop():
    """Each crop masked with probability p, ratio ~ U(r_min, r_max), like `sample_masks` per crop; a sample's
    masks come from its own generator only."""
    from pretraining.masking import sample_masks_per_sample

    grid = BlockMaskGenerator((16, 16))
    generators = [torch.Generator().manual_seed(i) for i in range(1000)]
    batch = sample_masks_per_sample(generators, 2, grid, (0.1, 0.5), mask_probability=0.5)
    assert batch.masks.shape == (2000, 256)
    counts = batch.masks.sum(1).float()
    masked = counts > 0
    assert abs(masked.float().mean().item() - 0.5) < 0.04
    ratios = counts[masked] / 256
    # the block generator may fall short of the target by a block (never over it): ratios in [~0.08, 0.5]
    assert ratios.max() <= 0.5 and ratios.min() >= 0.05
    assert abs(ratios.mean().item() - 0.3) < 0.02  # E U(0.1, 0.5) = 0.3, minus the shortfall
    stratified = sample_masks(2000, grid, torch.Generator().manual_seed(0), (0.1, 0.5), 0.5)
    reference = stratified.masks.sum(1).float()
    assert abs(ratios.mean().item() - (reference[reference > 0] / 256).mean().item()) < 0.02
    # weights and indices as for the stratified masks
    assert torch.equal(batch.mask_indices, batch.masks.flatten().nonzero().flatten())
    torch.testing.assert_close(batch.mask_weights.sum(), masked.float().sum())
    # crop-major, and sample 3's masks come from generator 3 alone
    alone = sample_masks_per_sample([torch.Generator().manual_seed(3)], 2, grid, (0.1, 0.5), 0.5)
    assert torch.equal(alone.masks, batch.masks[[3, 1000 + 3]])
