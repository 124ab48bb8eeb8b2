"""transformers pipelines on this package's folders, in a fresh interpreter that never imports the package
(`trust_remote_code`): image-feature-extraction gives the model's last hidden state of the processor's input,
image-classification the softmax of its logits; the model cards show both."""

import json

import numpy as np
import torch
from PIL import Image

from modeling_dinov2 import Dinov2Config, Dinov2ForImageClassification, Dinov2Model, build_model_card

from conftest import run_python, tiny_config_kwargs


def _image(path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_image_feature_extraction_pipeline(tmp_path):
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(num_register_tokens=2, **tiny_config_kwargs())).save_pretrained(tmp_path / "model")
    out = run_python(f"""
import json, torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, pipeline
folder, image = {str(tmp_path / 'model')!r}, Image.open({_image(tmp_path / 'x.png')!r})
tokens = torch.tensor(pipeline("image-feature-extraction", model=folder, trust_remote_code=True)(image))
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
with torch.no_grad():
    expected = model(**AutoImageProcessor.from_pretrained(folder)(image, return_tensors="pt")).last_hidden_state
print(json.dumps([list(tokens.shape), (tokens - expected).abs().max().item()]))
""", cwd=tmp_path)
    shape, difference = json.loads(out.strip().splitlines()[-1])
    assert shape == [1, 1 + 2 + 4, 32] and difference < 1e-5  # CLS + 2 registers + 2x2 patches


def test_image_classification_pipeline(tmp_path):
    torch.manual_seed(0)
    labels = ["cat", "dog", "fish"]
    config = Dinov2Config(num_labels=3, id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
                          **tiny_config_kwargs())
    Dinov2ForImageClassification(config).save_pretrained(tmp_path / "model")
    out = run_python(f"""
import json, torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline
folder, image = {str(tmp_path / 'model')!r}, Image.open({_image(tmp_path / 'x.png')!r})
predictions = pipeline("image-classification", model=folder, trust_remote_code=True)(image, top_k=3)
model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
with torch.no_grad():
    logits = model(**AutoImageProcessor.from_pretrained(folder)(image, return_tensors="pt")).logits[0]
expected = {{model.config.id2label[i]: p for i, p in enumerate(logits.softmax(-1).tolist())}}
print(json.dumps([predictions, expected]))
""", cwd=tmp_path)
    predictions, expected = json.loads(out.strip().splitlines()[-1])
    assert [p["label"] for p in predictions] == sorted(expected, key=expected.get, reverse=True)
    for p in predictions:
        assert abs(p["score"] - expected[p["label"]]) < 1e-5


def test_model_cards_show_the_pipelines():
    assert 'pipeline("image-feature-extraction"' in build_model_card(Dinov2Config(**tiny_config_kwargs()))
    classifier = Dinov2Config(num_labels=2, architectures=["Dinov2ForImageClassification"], **tiny_config_kwargs())
    assert 'pipeline("image-classification"' in build_model_card(classifier)
