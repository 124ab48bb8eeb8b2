"""evaluation/data.py: the Fashion-MNIST loader and the composed segmentation set."""

import numpy as np
import pytest

from evaluation.data import (
    FASHION_MNIST_CLASSES, IGNORE_INDEX, build_fashion_segmentation, compose_segmentation_sample, encode_labels,
    load_fashion_mnist, load_fashion_mnist_arrays, load_image_dataset,
)


def test_missing_fashion_mnist_names_the_apt_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y --no-install-recommends dataset-fashion-mnist"):
        load_fashion_mnist("train", root=tmp_path)
    with pytest.raises(ValueError, match="splits"):
        load_fashion_mnist_arrays("validation", root=tmp_path)


def test_fashion_mnist_dataset_matches_the_files(fashion_mnist_dir):
    images, labels = load_fashion_mnist_arrays("test")
    assert images.shape == (10000, 28, 28) and np.bincount(labels).tolist() == [1000] * 10
    dataset = load_fashion_mnist("test", limit=50)
    assert len(dataset) == 50 and dataset.features["label"].names == list(FASHION_MNIST_CLASSES)
    row = dataset[49]
    assert row["image"].mode == "L" and np.array_equal(np.array(row["image"]), images[49])
    assert row["label"] == labels[49]


def test_compose_pastes_the_silhouette_and_marks_its_rim():
    # A 28x28 "item" that is bright (200) on rows/cols 8..19 and black elsewhere, pasted at full canvas size
    # (item_size 1.0 -> side 28 at (0, 0), an identity resize) onto a flat background of 50.
    item = np.zeros((28, 28), dtype=np.uint8)
    item[8:20, 8:20] = 200
    background = np.full((28, 28, 3), 50, dtype=np.uint8)
    image, mask = compose_segmentation_sample([item], [4], background, np.random.default_rng(0), item_size=(1.0, 1.0))
    # with boundary 1 the rim is every pixel whose 3x3 neighbourhood mixes labels: rows/cols 7..8 and 19..20
    assert (mask[9:19, 9:19] == 5).all() and (image[9:19, 9:19] == 200).all()  # label 4 -> class 5
    outside = np.ones((28, 28), dtype=bool)
    outside[7:21, 7:21] = False
    assert (mask[outside] == 0).all() and (image[outside] == 50).all()
    rim = np.zeros((28, 28), dtype=bool)
    rim[7:21, 7:21] = True
    rim[9:19, 9:19] = False
    assert (mask[rim] == IGNORE_INDEX).all()


def test_later_items_occlude_earlier_ones():
    first, second = np.zeros((28, 28), np.uint8), np.zeros((28, 28), np.uint8)
    first[4:24, 4:24], second[10:18, 10:18] = 100, 250
    image, mask = compose_segmentation_sample(
        [first, second], [0, 9], np.zeros((28, 28, 3), np.uint8), np.random.default_rng(0), (1.0, 1.0), boundary=0
    )
    assert (mask[11:17, 11:17] == 10).all() and (image[11:17, 11:17] == 250).all()
    assert (mask[5:9, 5:9] == 1).all()


def test_segmentation_set_is_consistent(fashion_mnist_dir):
    dataset = build_fashion_segmentation("test", 6, canvas_size=64, seed=3)
    assert len(dataset) == 6
    for row in dataset:
        image, mask = np.array(row["image"]), np.array(row["mask"])
        assert image.shape == (64, 64, 3) and mask.shape == (64, 64)
        assert set(np.unique(mask)) <= set(range(11)) | {IGNORE_INDEX}
        items = (mask >= 1) & (mask <= 10)
        assert items.any()  # every sample shows at least one item
        # the pasted Fashion-MNIST items are grey: R = G = B wherever the mask says "item"
        assert (image[items, 0] == image[items, 1]).all() and (image[items, 1] == image[items, 2]).all()
    again = build_fashion_segmentation("test", 6, canvas_size=64, seed=3)
    assert np.array_equal(np.array(again[0]["mask"]), np.array(dataset[0]["mask"]))
    train = build_fashion_segmentation("train", 1, canvas_size=64, seed=3)
    assert not np.array_equal(np.array(train[0]["image"]), np.array(dataset[0]["image"]))


def write_class_folders(root, classes=("boot", "coat"), per_class=3):
    from PIL import Image

    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((8, 8), 40 * label + i, dtype=np.uint8)).save(root / name / f"{i}.png")


def test_image_folder_datasets_and_a_missing_split(tmp_path):
    write_class_folders(tmp_path / "flat")
    train = load_image_dataset(str(tmp_path / "flat"), "train")
    assert len(train) == 6 and sorted(set(train["label"])) == [0, 1]
    with pytest.raises(ValueError, match=r"has no 'test' split \(it has \['train'\]; a folder of class sub-folders is one"):
        load_image_dataset(str(tmp_path / "flat"), "test")

    write_class_folders(tmp_path / "split" / "train")
    write_class_folders(tmp_path / "split" / "test", per_class=2)
    assert len(load_image_dataset(str(tmp_path / "split"), "train")) == 6
    assert len(load_image_dataset(str(tmp_path / "split"), "test", limit=3)) == 3


def test_an_unreadable_image_is_skipped_counted_and_named(tmp_path):
    write_class_folders(tmp_path / "flat")
    (tmp_path / "flat" / "coat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "flat" / "boot" / "empty.png").write_bytes(b"")
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable image\(s\) of 8") as record:
        train = load_image_dataset(str(tmp_path / "flat"), "train")
    message = str(record[0].message)
    assert "broken.png" in message and "empty.png" in message and "empty file" in message
    assert len(train) == 6 and sorted(set(train["label"])) == [0, 1]
    assert train[0]["image"].size == (8, 8)  # decoded again after the check


@pytest.mark.parametrize("limit", [0, -5, 2.5])
def test_limits_must_be_positive(limit, fashion_mnist_dir):
    with pytest.raises(ValueError, match="limit must be a positive number of images"):
        load_image_dataset("fashion_mnist", "test", limit=limit)


def test_plain_labels_are_encoded_with_the_training_classes():
    import datasets

    train = datasets.Dataset.from_dict({"image": [None] * 4, "label": [10, 3, 7, 3]})
    encoded = encode_labels(train)
    assert encoded.features["label"].names == ["3", "7", "10"]  # numbers in numeric order
    assert encoded["label"] == [2, 0, 1, 0]
    test = encode_labels(datasets.Dataset.from_dict({"image": [None] * 2, "label": [7, 10]}), ["3", "7", "10"])
    assert test["label"] == [1, 2]  # the training split's indices, not its own
    with pytest.raises(ValueError, match=r"labels \['5'\] that the training split does not have"):
        encode_labels(datasets.Dataset.from_dict({"image": [None], "label": [5]}), ["3", "7", "10"])
    strings = encode_labels(datasets.Dataset.from_dict({"image": [None] * 3, "label": ["dog", "cat", "dog"]}))
    assert strings.features["label"].names == ["cat", "dog"] and strings["label"] == [1, 0, 1]
