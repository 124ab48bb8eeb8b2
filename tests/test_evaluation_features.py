"""evaluation/features.py and modeling_dinov2.preprocessing: preprocessing against BitImageProcessor, stock vs modeling_dinov2 features,
and `extract_features` against a plain forward pass."""

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

import modeling_dinov2
from evaluation.features import (
    apply_to_batch, check_image_size, extract_features, intermediate_layers, pil_to_uint8, pixel_features,
)
from modeling_dinov2 import load_backbone
from modeling_dinov2.preprocessing import IMAGENET_MEAN, IMAGENET_STD, eval_transform


@pytest.mark.parametrize("image", [
    Image.fromarray(skimage.data.astronaut()).resize((300, 400)),  # non-square RGB
    Image.fromarray(skimage.data.camera()),  # grey -> RGB
], ids=["rgb", "grey"])
def test_eval_transform_matches_the_saved_image_processor(image):
    # the reference: the BitImageProcessor that modeling_dinov2 writes as preprocessor_config.json
    expected = modeling_dinov2.make_image_processor()(image, return_tensors="pt")["pixel_values"][0]
    got = eval_transform()(image)
    assert got.shape == (3, 224, 224)
    assert torch.allclose(got, torch.as_tensor(expected), atol=1e-5)
    # the batched path of the feature extractor gives the same pixels
    batched = apply_to_batch(eval_transform(), [pil_to_uint8(image), pil_to_uint8(image)])
    assert torch.allclose(batched[1], got, atol=1e-6)


def test_eval_transform_scales_the_resize_with_the_crop():
    image = Image.fromarray(np.arange(28 * 28, dtype=np.uint8).reshape(28, 28))
    assert eval_transform(28)(image).shape == (3, 28, 28)  # resize 32 (= 28 * 256 / 224), crop 28
    keep_all = eval_transform(28, resize_size=28)(image)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    unnormalised = keep_all * std + mean
    assert torch.allclose(unnormalised[0], unnormalised[2], atol=1e-6)  # grey copied to all channels
    assert torch.allclose(unnormalised[0], torch.as_tensor(np.array(image)) / 255.0, atol=1e-6)  # no crop, no resize
    with pytest.raises(ValueError, match="resize_size"):
        eval_transform(28, resize_size=20)


def test_stock_and_modeling_dinov2_give_the_same_features(examples_tiny_stock_model_dir):
    stock = load_backbone(examples_tiny_stock_model_dir, "cpu")
    assert type(stock).__module__.startswith("transformers.")  # AutoModel keeps transformers' own class
    ours = modeling_dinov2.Dinov2Model.from_pretrained(examples_tiny_stock_model_dir).eval()
    pixel_values = torch.randn(3, 3, 28, 28)
    with torch.no_grad():
        via_hidden_states = intermediate_layers(stock, pixel_values, n=2)  # output_hidden_states + layernorm
        via_ours = intermediate_layers(ours, pixel_values, n=2)  # get_intermediate_layers
        pooled = stock(pixel_values).pooler_output
    for (patches_a, cls_a), (patches_b, cls_b) in zip(via_hidden_states, via_ours):
        assert torch.allclose(patches_a, patches_b, atol=1e-5) and torch.allclose(cls_a, cls_b, atol=1e-5)
    assert torch.allclose(via_hidden_states[-1][1], pooled, atol=1e-6)
    with pytest.raises(ValueError, match="n must be in"):
        intermediate_layers(stock, pixel_values, n=3)


def test_extract_features_equals_a_plain_forward(examples_tiny_model_dir):
    from datasets import ClassLabel, Dataset, Features, Image as ImageFeature

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (28, 28), dtype=np.uint8) for _ in range(7)]
    dataset = Dataset.from_dict(
        {"image": images, "label": [0, 1, 2, 0, 1, 2, 0]},
        features=Features({"image": ImageFeature(), "label": ClassLabel(names=["a", "b", "c"])}),
    )
    model = load_backbone(examples_tiny_model_dir, "cpu")
    transform = eval_transform(28, 28)
    features = extract_features(model, dataset, transform, n_last_blocks=2, batch_size=3)  # 3 + 3 + 1
    assert features.cls_tokens.shape == (7, 2, 32) and features.class_names == ["a", "b", "c"]
    assert features.labels.tolist() == [0, 1, 2, 0, 1, 2, 0]
    pixel_values = torch.stack([transform(Image.fromarray(image)) for image in images])
    with torch.no_grad():
        output = model(pixel_values)
    assert torch.allclose(features.cls, output.pooler_output, atol=1e-5)
    assert torch.allclose(features.patch_mean, output.patch_tokens.mean(dim=1), atol=1e-5)
    pixels = pixel_features(dataset)
    assert torch.allclose(pixels.cls, torch.as_tensor(np.stack(images)).flatten(1) / 255.0)


def test_load_backbone_takes_the_backbone_of_a_classifier(tmp_path):
    config = modeling_dinov2.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                          image_size=28, patch_size=14, num_labels=3)
    classifier = modeling_dinov2.Dinov2ForImageClassification(config)
    classifier.save_pretrained(tmp_path)
    backbone = load_backbone(str(tmp_path), "cpu")
    assert isinstance(backbone, modeling_dinov2.Dinov2Model)
    assert torch.equal(backbone.embeddings.position_embeddings, classifier.dinov2.embeddings.position_embeddings)


def test_backbone_errors(examples_tiny_model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing: no such folder"):
        load_backbone(str(tmp_path / "missing"))  # a path, not asked of the Hub
    with pytest.raises(ValueError, match="the folder holds no config.json"):
        load_backbone(str(tmp_path))
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="is a file; give the checkpoint's folder"):
        load_backbone(str(tmp_path / "weights.safetensors"))
    with pytest.raises(ValueError, match="multiple of the patch size 14; use e.g. 28"):
        check_image_size(load_backbone(examples_tiny_model_dir, "cpu"), 30)


def test_raw_pixels_of_mixed_sizes_and_modes():
    import datasets


    images = [Image.new("L", (8, 8), 255), Image.new("RGB", (16, 12), (255, 0, 0))]
    dataset = datasets.Dataset.from_dict({"image": images, "label": [0, 1]},
                                         features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}))
    with pytest.raises(ValueError, match="one size and mode"):
        pixel_features(dataset)
    features = pixel_features(dataset, mixed_size=4)  # both made RGB, resized to 4 x 4
    assert features.cls_tokens.shape == (2, 1, 48)
    pixels = features.cls_tokens[:, 0].reshape(2, 3, 4, 4)
    assert torch.allclose(pixels[0], torch.ones(3, 4, 4), atol=1e-3)  # white grey image: 1 in every channel
    assert torch.allclose(pixels[1].mean((1, 2)), torch.tensor([1.0, 0.0, 0.0]), atol=1e-3)  # red


def test_the_evaluation_input_is_the_model_folders_processor(tmp_path):
    """BackboneArguments' transform is the folder's saved image processor (one definition of the evaluation
    input), also after --image_size overrides it."""
    import numpy as np
    import torch
    from PIL import Image

    from evaluation.features import BackboneArguments
    from modeling_dinov2 import Dinov2Config, Dinov2Model
    from modeling_dinov2.model_card import write_preprocessor_config

    from conftest import tiny_config_kwargs

    Dinov2Model(Dinov2Config(**tiny_config_kwargs())).save_pretrained(tmp_path)  # 28-px table: crop 28, resize 32
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8))
    args = BackboneArguments(model=str(tmp_path))
    processor = args.processor()
    assert args.crop_size() == processor.crop_size["height"] == 28
    ours = args.transform()(image)
    theirs = processor(image, return_tensors="pt")["pixel_values"][0]
    assert ours.shape == theirs.shape == (3, 28, 28)
    assert (ours - theirs).abs().mean() < 0.05  # PIL and torchvision bicubic resampling differ slightly
    # a folder evaluated at its own size (no resize margin, as dinov2-demo writes it): exactly the processor's
    write_preprocessor_config(tmp_path, overwrite=True, crop_size=28, resize_size=28)
    exact = BackboneArguments(model=str(tmp_path))
    torch.testing.assert_close(exact.transform()(image), exact.processor()(image, return_tensors="pt")["pixel_values"][0],
                               rtol=0, atol=1e-5)
    assert BackboneArguments(model=str(tmp_path), image_size=56).transform()(image).shape == (3, 56, 56)
