"""Pretraining data: the bad-item replacement and report of MultiCropDataset over a folder and a
datasets.Dataset (the decoder itself is tested in test_image_decoding.py), the size bound of decoded and
cached images, reproducible per-sample randomness, the epoch sampler, and a Trainer run that counts and
lists the skipped images."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from ddp_pretraining_helper import GLOBAL, LOCAL, PATCH, synthetic_images, tiny_model
from pretraining.augmentations import MultiCropAugmentation
from pretraining.collate import MultiCropCollator
from pretraining.data import EpochRandomSampler, MultiCropDataset
from pretraining.fashion_mnist import FASHION_MNIST_DIR, load_fashion_mnist
from pretraining.trainer import Dinov2PretrainingArguments, Dinov2PretrainingTrainer


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def png_bytes(image: Image.Image, format="PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


def photo(size=(40, 32), seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def write_awkward_folder(root):
    """5 good images and one of every awkward kind; returns the names that must be skipped."""
    root.mkdir()
    (root / "sub").mkdir()
    for i in range(5):
        photo(seed=i).save(root / f"good_{i}.png")
    photo().convert("CMYK").save(root / "cmyk.jpg")
    Image.fromarray((np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16)).save(root / "sub" / "deep16.png")
    photo().convert("RGBA").save(root / "rgba.png")
    photo(size=(20, 20)).save(root / "smaller_than_a_crop.png")  # upscaled by the random resized crop
    jpeg = png_bytes(photo(size=(64, 64)), "JPEG")
    (root / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (root / "empty.png").write_bytes(b"")
    (root / "not_an_image.png").write_text("this is text, not pixels")
    photo(size=(4, 4)).save(root / "tiny.png")
    (root / "labels.csv").write_text("a,b\n")  # not an image extension: ignored, not "bad"
    return {"truncated.jpg", "empty.png", "not_an_image.png", "tiny.png"}


def augmentation():
    return MultiCropAugmentation(GLOBAL, LOCAL, n_local_crops=2, blur_kernel_size=3)


def test_folder_dataset_skips_and_reports_bad_items(tmp_path):
    bad = write_awkward_folder(tmp_path / "images")
    dataset = MultiCropDataset(tmp_path / "images", augmentation())
    assert len(dataset) == 13  # labels.csv is not an image file
    assert [p.name for p in dataset.source.ignored_files] == ["labels.csv"]
    skipped = {}
    for i in range(len(dataset)):
        sample = dataset[i]
        assert sample["global_crops"][0].shape == (3, GLOBAL, GLOBAL) and len(sample["local_crops"]) == 2
        skipped.update({name: reason for _, name, reason in sample["skipped"]})
    assert set(skipped) == bad
    assert "truncated" in skipped["truncated.jpg"] and "empty" in skipped["empty.png"]


def test_hf_dataset_with_a_corrupt_row():
    import datasets

    rows = [{"bytes": png_bytes(photo(seed=i)), "path": None} for i in range(3)]
    rows.insert(1, {"bytes": b"\x89PNG broken", "path": None})
    ds = datasets.Dataset.from_dict({"image": rows}, features=datasets.Features({"image": datasets.Image()}))
    dataset = MultiCropDataset(ds, augmentation())
    sample = dataset[1]  # the broken row is replaced by row 2 and reported
    assert [(index, reason.split(" ")[0]) for index, _, reason in sample["skipped"]] == [(1, "not")]
    assert sample["skipped"][0][1] == "row 1"
    with pytest.raises(ValueError, match="no column 'img'"):
        MultiCropDataset(ds, augmentation(), image_column="img")


def test_samples_depend_only_on_seed_epoch_and_index():
    dataset = MultiCropDataset(synthetic_images(4), augmentation(), seed=3)
    a, b = dataset[2], dataset[2]
    assert torch.equal(a["global_crops"][0], b["global_crops"][0]) and a["seed"] == b["seed"]
    assert not torch.equal(dataset[1]["global_crops"][0], a["global_crops"][0])
    dataset.set_epoch(1)
    assert not torch.equal(dataset[2]["global_crops"][0], a["global_crops"][0])  # new epoch, new crops
    other = MultiCropDataset(synthetic_images(4), augmentation(), seed=3)
    other.set_epoch(1)
    assert torch.equal(other[2]["local_crops"][1], dataset[2]["local_crops"][1])
    # the collator seeds the masks from the samples: same samples -> same masks, whatever the global RNG
    collator = MultiCropCollator(patch_size=PATCH, global_crops_size=GLOBAL)
    torch.manual_seed(0)
    m1 = collator([dataset[0], dataset[1]])["masks"]
    torch.manual_seed(1)
    m2 = collator([dataset[0], dataset[1]])["masks"]
    assert torch.equal(m1, m2)


class CountingSource:
    """An image source that counts how often each item is read."""

    def __init__(self, items):
        self.items, self.reads = items, [0] * len(items)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        self.reads[index] += 1
        return self.items[index], f"item {index}"


def test_cached_images_are_read_once_and_give_the_same_samples():
    items = [png_bytes(photo(seed=i)) for i in range(3)] + [b"not an image"]
    cached_source, plain_source = CountingSource(items), CountingSource(items)
    cached = MultiCropDataset(cached_source, augmentation(), seed=1, cache_images=True)
    plain = MultiCropDataset(plain_source, augmentation(), seed=1)
    for epoch in range(3):
        cached.set_epoch(epoch), plain.set_epoch(epoch)
        for i in range(3):
            a, b = cached[i], plain[i]
            assert torch.equal(a["global_crops"][1], b["global_crops"][1]) and a["seed"] == b["seed"]
        # the unreadable item is never cached: replaced by item 0 and reported in every epoch
        bad = cached[3]
        assert [(index, name) for index, name, _ in bad["skipped"]] == [(3, "item 3")]
        assert torch.equal(bad["global_crops"][0], plain[3]["global_crops"][0])
    assert plain_source.reads[:3] == [6, 3, 3]  # item 0 also stands in for item 3
    assert cached_source.reads[:3] == [1, 1, 1]  # decoded once per run, not once per epoch
    assert cached_source.reads[3] >= 3


def test_huge_images_are_decoded_and_cached_at_a_bounded_size(tmp_path):
    """Issue 21 item 6: a huge image is kept (and cached) scaled down to the pixel bound, not at full size."""
    from modeling_dinov2.image_decoding import DEFAULT_MAX_PIXELS
    from pretraining.batched_augmentations import to_uint8_image

    folder = tmp_path / "images"
    folder.mkdir()
    photo(size=(400, 300)).save(folder / "big.png")
    photo(size=(640, 480), seed=1).save(folder / "big.jpg", quality=90)
    photo(size=(30, 20), seed=2).save(folder / "small.png")
    dataset = MultiCropDataset(folder, to_uint8_image, cache_images=True, max_image_pixels=100 * 100)
    shapes = {path.name: tuple(dataset[i]["image"].shape) for i, path in enumerate(dataset.source.files)}
    assert shapes == {"big.jpg": (3, 86, 115), "big.png": (3, 86, 115), "small.png": (3, 20, 30)}
    assert all(image.width * image.height <= 100 * 100 for image in dataset._decoded.values())
    # by default: at most 2048 x 2048 pixels (a flat image: cheap to write and decode)
    Image.new("RGB", (4200, 1100), (9, 99, 199)).save(folder / "big.png")
    image = MultiCropDataset(folder, to_uint8_image)[1]["image"]
    assert image.shape == (3, 1048, 4001) and image.shape[1] * image.shape[2] <= DEFAULT_MAX_PIXELS
    assert image[:, 500, 2000].tolist() == [9, 99, 199]


def test_epoch_sampler():
    sampler = EpochRandomSampler(10, seed=5)
    first = list(sampler)
    assert sorted(first) == list(range(10)) and list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    again = EpochRandomSampler(10, seed=5)
    again.set_epoch(1)
    assert list(again) == list(sampler)


def test_trainer_run_counts_and_lists_skipped_images(tmp_path, capsys):
    bad = write_awkward_folder(tmp_path / "images")
    torch.manual_seed(0)
    dataset = MultiCropDataset(tmp_path / "images", augmentation())
    args = Dinov2PretrainingArguments(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, max_steps=4, logging_steps=2,
        save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True, warmup_steps=1,
    )
    trainer = Dinov2PretrainingTrainer(model=tiny_model(), args=args, train_dataset=dataset,
                                       data_collator=MultiCropCollator(patch_size=PATCH, global_crops_size=GLOBAL))
    trainer.train()
    assert trainer.state.global_step == 4
    listed = json.loads((tmp_path / "run" / "skipped_images.json").read_text())
    assert set(listed) <= bad and len(listed) >= 1  # the items drawn so far
    logged = [entry["skipped_images"] for entry in trainer.state.log_history if "skipped_images" in entry]
    assert logged[-1] == len(listed) and logged == sorted(logged)
    assert "unreadable image(s) were skipped" in capsys.readouterr().out


@pytest.mark.skipif(not FASHION_MNIST_DIR.exists(), reason="Fashion-MNIST is not installed: apt-get update && "
                    "apt-get install -y --no-install-recommends dataset-fashion-mnist")
def test_load_fashion_mnist():
    ds = load_fashion_mnist("test", limit=5)
    assert len(ds) == 5 and ds[0]["image"].size == (28, 28) and ds.features["label"].names[9] == "Ankle boot"
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("validation")
