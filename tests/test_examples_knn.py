"""examples/knn_eval.py: the weighted vote against a hand-worked example, and the script end to end."""

import json
import math

import pytest
import torch

from examples.knn_eval import main
from modeling_dinov2.metrics.functional import cosine_topk, knn_classify, knn_scores

# Training points on the unit circle (and a far one), one query at (1, 0):
# cosine similarities 1.0 (class 0), 0.9 and 0.9 (class 1), -1.0 (class 0).
SIN = math.sqrt(1 - 0.9**2)
TRAIN = torch.tensor([[1.0, 0.0], [0.9, SIN], [0.9, -SIN], [-1.0, 0.0]]) * torch.tensor([[2.0], [1.0], [3.0], [1.0]])
TRAIN_LABELS = torch.tensor([0, 1, 1, 0])
QUERY = torch.tensor([[5.0, 0.0]])  # norms differ on purpose: features are L2-normalised inside


def test_cosine_topk_normalises_and_sorts():
    similarities, indices = cosine_topk(QUERY, TRAIN, k=4)
    assert indices[0, 0] == 0 and set(indices[0, 1:3].tolist()) == {1, 2} and indices[0, 3] == 3
    assert similarities[0].tolist() == pytest.approx([1.0, 0.9, 0.9, -1.0], abs=1e-6)


def test_knn_weights_are_a_softmax_over_the_top_max_k():
    # With max_k = 3 the weights are softmax([1.0, 0.9, 0.9] / T). For T = 0.07, dividing by e^(1/T):
    # w_0 = 1 / (1 + 2 e^(-0.1/0.07)) = 0.675994..., w_1 = w_2 = e^(-0.1/0.07) / (1 + 2 e^(-0.1/0.07)) = 0.162003...
    r = math.exp(-0.1 / 0.07)
    w0, w1 = 1 / (1 + 2 * r), r / (1 + 2 * r)
    assert w0 == pytest.approx(0.675994, abs=1e-6)
    scores = knn_scores(TRAIN, TRAIN_LABELS, QUERY, ks=(1, 3), T=0.07, num_classes=2)
    # k = 3: class 0 gets w_0, class 1 gets w_1 + w_2 -> class 0 wins although a majority vote picks class 1
    assert scores[3][0].tolist() == pytest.approx([w0, 2 * w1], abs=1e-6)
    # k = 1 keeps the max_k-normalised weight (not renormalised to 1 over the first k)
    assert scores[1][0].tolist() == pytest.approx([w0, 0.0], abs=1e-6)
    # a hot temperature flattens the weights: T = 1 -> w_0 = 1 / (1 + 2 e^-0.1) = 0.3559 and class 1 wins
    hot = knn_scores(TRAIN, TRAIN_LABELS, QUERY, ks=(3,), T=1.0, num_classes=2)[3][0]
    assert hot.tolist() == pytest.approx([1 / (1 + 2 * math.exp(-0.1)), 2 * math.exp(-0.1) / (1 + 2 * math.exp(-0.1))])


def test_knn_rejects_labels_that_are_not_class_ids():
    features = torch.randn(4, 8)
    with pytest.raises(ValueError, match=r"class ids in \[0, 3\), got values in \[-1, 2\]"):
        knn_scores(features, torch.tensor([0, 1, 2, -1]), features, ks=[2], num_classes=3)
    with pytest.raises(ValueError, match="at least one training sample"):
        knn_scores(features[:0], torch.zeros(0), features, ks=[2])


def test_knn_classify_accuracies_and_k_clipping():
    queries = torch.cat([QUERY, torch.tensor([[0.0, 1.0]])])  # the 2nd query's nearest point is class 1
    labels = torch.tensor([0, 1])
    with pytest.warns(UserWarning, match=r"dropping k = \[10\]"):
        results = knn_classify(TRAIN, TRAIN_LABELS, queries, labels, ks=(1, 3, 10), T=0.07)
    assert sorted(results) == [1, 3]
    assert results[1] == {"top1": 1.0, "top5": 1.0}
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="exceeds the number of training samples"):
        knn_classify(TRAIN, TRAIN_LABELS, queries, labels, ks=(20,))
    with pytest.raises(ValueError, match="temperature"):
        knn_classify(TRAIN, TRAIN_LABELS, queries, labels, ks=(1,), T=0.0)


def test_knn_script_on_fashion_mnist(fashion_mnist_dir, examples_tiny_model_dir, tmp_path, capsys):
    output = tmp_path / "knn.json"
    results = main([
        "--model", examples_tiny_model_dir, "--image-size", "28", "--resize-size", "28", "--train-limit", "300",
        "--test-limit", "100", "--ks", "10", "20", "--output-json", str(output), "--device", "cpu",
    ])
    assert sorted(results) == [10, 20]
    saved = json.loads(output.read_text())
    assert saved["num_train"] == 300 and saved["num_test"] == 100
    assert saved["results"]["20"]["top1"] == pytest.approx(results[20]["top1"])
    assert "k-NN" in capsys.readouterr().out


def test_knn_raw_pixels_beat_chance(fashion_mnist_dir):
    # raw-pixel cosine k-NN on Fashion-MNIST is ~80% with 10k training images; 1000 still give far above 10% chance
    results = main(["--raw-pixels", "--train-limit", "1000", "--test-limit", "300", "--ks", "10"])
    assert results[10]["top1"] > 0.6
