"""Auto classes, trust_remote_code in a fresh process, the image processor, and the Hub round trip."""

import json
import textwrap

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

import modeling_dinov2
from modeling_dinov2 import Dinov2Config, Dinov2ForImageClassification, Dinov2Model

from conftest import REPO_ROOT, run_python, tiny_config_kwargs

# Run in a subprocess before anything else: makes `import modeling_dinov2` fail, so the code can only come from
# the checkpoint folder (trust_remote_code), as on a machine without this package.
BLOCK_PACKAGE = textwrap.dedent(
    """
    import sys
    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("modeling_dinov2", "pretraining", "curation", "evaluation"):
                raise ImportError(f"{name} is blocked in this test")
    sys.meta_path.insert(0, _Block())
    """
)


def test_importing_registers_the_auto_classes(tmp_path):
    config = transformers.AutoConfig.for_model("dinov2_ssl", **tiny_config_kwargs())
    assert type(config) is Dinov2Config
    assert type(transformers.AutoModel.from_config(config)) is Dinov2Model
    config.num_labels = 3
    classifier = transformers.AutoModelForImageClassification.from_config(config)
    assert type(classifier) is Dinov2ForImageClassification
    classifier.save_pretrained(tmp_path)
    reloaded = transformers.AutoModelForImageClassification.from_pretrained(tmp_path)
    assert type(reloaded) is Dinov2ForImageClassification


def test_trust_remote_code_in_a_process_that_never_imported_the_package(tmp_path):
    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(num_register_tokens=2, **tiny_config_kwargs())).eval()
    model.save_pretrained(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_dinov2.Dinov2Config",
        "AutoModel": "modeling_dinov2.Dinov2Model",
        "AutoModelForImageClassification": "modeling_dinov2.Dinov2ForImageClassification",
        "AutoBackbone": "modeling_dinov2.Dinov2Backbone",
    }
    assert {"modeling_dinov2.py", "configuration_dinov2.py", "model_card.py"} <= {p.name for p in (tmp_path / "model").iterdir()}
    pixel_values = torch.randn(2, 3, 28, 42)
    torch.save(pixel_values, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(model(pixel_values).last_hidden_state, tmp_path / "expected.pt")
    code = BLOCK_PACKAGE + textwrap.dedent(
        f"""
        import torch, transformers
        model = transformers.AutoModel.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
        with torch.no_grad():
            got = model(torch.load({str(tmp_path / "x.pt")!r})).last_hidden_state
        torch.testing.assert_close(got, torch.load({str(tmp_path / "expected.pt")!r}))
        # fine-tuning starts from the backbone checkpoint through the Auto class, with a new head
        classifier = transformers.AutoModelForImageClassification.from_pretrained(
            {str(tmp_path / "model")!r}, trust_remote_code=True, num_labels=3).eval()
        torch.testing.assert_close(classifier.dinov2.embeddings.cls_token, model.embeddings.cls_token)
        assert classifier(torch.load({str(tmp_path / "x.pt")!r})).logits.shape == (2, 3)
        assert "modeling_dinov2" not in __import__("sys").modules
        print("OK", type(model).__name__)
        """
    )
    assert "OK Dinov2Model" in run_python(code, cwd=tmp_path, env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})


def test_image_processor_equals_the_dinov2_eval_transform(tmp_path):
    from torchvision.transforms import v2

    Dinov2Model(Dinov2Config(**tiny_config_kwargs(image_size=518))).save_pretrained(tmp_path)  # as the released
    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    got = processor(images=image, return_tensors="pt")["pixel_values"]
    assert got.shape == (1, 3, 224, 224)
    reference = v2.Compose([
        v2.PILToTensor(), v2.Resize(256, interpolation=v2.InterpolationMode.BICUBIC), v2.CenterCrop(224),
        v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])(image)
    # PIL and torchvision resize kernels differ by a few grey levels at most
    assert (got[0] - reference).abs().mean() < 0.02


@pytest.mark.parametrize("image_size, resize, crop", [(518, 256, 224), (224, 256, 224), (28, 32, 28), (112, 128, 112)])
def test_models_trained_on_small_images_get_a_processor_at_their_own_size(tmp_path, image_size, resize, crop):
    # interpolating a 28-px model's positions up to 224 px would evaluate it far from how it was trained
    Dinov2Model(Dinov2Config(**tiny_config_kwargs(image_size=image_size))).save_pretrained(tmp_path)
    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path)
    assert processor.size == {"shortest_edge": resize} and processor.crop_size == {"height": crop, "width": crop}
    image = Image.fromarray(np.zeros((40, 50, 3), dtype=np.uint8))
    assert processor(images=image, return_tensors="pt")["pixel_values"].shape == (1, 3, crop, crop)


def test_push_to_hub_and_from_pretrained_round_trip(hub_server, tmp_path):
    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(ffn_type="swiglu", **tiny_config_kwargs())).eval()
    pixel_values = torch.randn(1, 3, 28, 28)
    torch.save(pixel_values, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(model(pixel_values).pooler_output, tmp_path / "expected.pt")
    model.save_pretrained(tmp_path / "model")
    # the evidence a model folder carries (as dinov2-demo writes it): a card with results, a picture, a file
    (tmp_path / "model" / "pca_features.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "model" / "demo_results.json").write_text('{"knn": 0.872}')
    (tmp_path / "model" / "README.md").write_text(modeling_dinov2.build_model_card(
        model.config, datasets=["fashion_mnist"], sections={"Evaluation": "![PCA](pca_features.png)"},
        eval_results=[dict(task="image-classification", dataset="fashion_mnist", dataset_name="Fashion-MNIST",
                           split="test", metric="accuracy", name="k-NN top-1 (k=20)", value=87.2)]))
    repo_root = str(REPO_ROOT)
    upload = textwrap.dedent(
        f"""
        import sys; sys.path.insert(0, {repo_root!r})
        from modeling_dinov2 import Dinov2Model
        Dinov2Model.from_pretrained({str(tmp_path / "model")!r}).push_to_hub("tester/tiny-dinov2")
        """
    )
    run_python(upload, env=hub_server["env"])
    download = BLOCK_PACKAGE + textwrap.dedent(
        f"""
        import torch, transformers, huggingface_hub
        model = transformers.AutoModel.from_pretrained("tester/tiny-dinov2", trust_remote_code=True).eval()
        with torch.no_grad():
            got = model(torch.load({str(tmp_path / "x.pt")!r})).pooler_output
        torch.testing.assert_close(got, torch.load({str(tmp_path / "expected.pt")!r}))
        processor = transformers.AutoImageProcessor.from_pretrained("tester/tiny-dinov2")
        assert processor.size == {{"shortest_edge": 32}} and processor.resample == 3, processor  # a 28-px model
        card = huggingface_hub.ModelCard.load("tester/tiny-dinov2")
        assert card.data.library_name == "transformers", card.data
        assert card.data.pipeline_tag == "image-feature-extraction", card.data
        assert "dinov2" in card.data.tags and "self-supervised-learning" in card.data.tags, card.data
        assert card.data.datasets == ["fashion_mnist"], card.data
        result = card.data.eval_results[0]
        assert (result.metric_value, result.metric_name, result.dataset_type) == (87.2, "k-NN top-1 (k=20)", "fashion_mnist")
        assert "![PCA](pca_features.png)" in card.text
        files = sorted(huggingface_hub.list_repo_files("tester/tiny-dinov2"))
        print("FILES", files)
        """
    )
    output = run_python(download, env=hub_server["env"], cwd=tmp_path)
    files = output.split("FILES")[1]
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "README.md", "modeling_dinov2.py",
                 "pca_features.png", "demo_results.json"):
        assert name in files
    assert ".bin" not in files and ".pth" not in files  # safetensors only


def test_model_card_describes_the_model(tmp_path):
    config = Dinov2Config.from_preset("vit_small_reg4")
    card = modeling_dinov2.build_model_card(config, repo_id="me/dino", metrics={"k-NN top-1": 0.91},
                                            sections={"Training": "50 epochs on Fashion-MNIST."})
    assert "library_name: transformers" in card and "pipeline_tag: image-feature-extraction" in card
    assert "# DINOv2 ViT-S/14 + 4 registers" in card
    assert "| k-NN top-1 | 0.91 |" in card and "## Training" in card and 'from_pretrained("me/dino"' in card


def test_classifier_model_card_uses_the_classification_pipeline():
    config = Dinov2Config(num_labels=10, architectures=["Dinov2ForImageClassification"], **tiny_config_kwargs())
    card = modeling_dinov2.build_model_card(config)
    assert "pipeline_tag: image-classification" in card and "AutoModelForImageClassification" in card
    assert "into 10 classes" in card
