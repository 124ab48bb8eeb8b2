"""examples/retrieval.py: neighbours, precision@k and the PNG grid."""

import numpy as np
import pytest
import torch
from PIL import Image

from examples.retrieval import main, precision_at_k, retrieve


def test_retrieve_and_precision():
    gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [-1.0, 0.0]])
    similarities, indices = retrieve(torch.tensor([[2.0, 0.1]]), gallery, k=3)
    assert indices[0].tolist() == [0, 2, 1]
    assert (similarities[0, :-1] >= similarities[0, 1:]).all()
    # query labels 0 and 1; neighbours (0, 0, 1) and (0, 0, 0) -> precision 2/3 and 0
    precision = precision_at_k(torch.tensor([[0, 0, 1], [0, 0, 0]]), torch.tensor([0, 1]))
    assert precision.tolist() == pytest.approx([2 / 3, 0.0])


def test_retrieval_script_finds_the_query_itself(fashion_mnist_dir, examples_tiny_model_dir, tmp_path, capsys):
    output = tmp_path / "grid.png"
    # queries taken from the gallery split: each one's nearest neighbour is itself, at similarity 1
    result = main([
        "--model", examples_tiny_model_dir, "--image_size", "28", "--resize_size", "28", "--train_limit", "200",
        "--test_split", "train", "--query_indices", "5", "17", "--k", "4", "--output", str(output), "--device", "cpu",
    ])
    assert [row[0] for row in result["indices"]] == [5, 17]
    assert [row[0] for row in result["similarities"]] == pytest.approx([1.0, 1.0], abs=1e-4)
    assert all(0.25 <= p <= 1.0 for p in result["precision_at_k"])  # the query itself always matches
    with Image.open(output) as grid:
        assert grid.size[0] > grid.size[1]  # 2 rows of 1 + 4 pictures
    assert "mean precision@4" in capsys.readouterr().out


def test_retrieval_with_an_image_file(fashion_mnist_dir, examples_tiny_model_dir, tmp_path):
    query = tmp_path / "query.png"
    Image.fromarray(np.full((40, 30, 3), 128, dtype=np.uint8)).save(query)
    result = main([
        "--model", examples_tiny_model_dir, "--image_size", "28", "--train_limit", "50", "--query_images", str(query),
        "--k", "3", "--output", str(tmp_path / "grid.png"),
    ])
    assert len(result["indices"]) == 1 and "precision_at_k" not in result
    with pytest.raises(FileNotFoundError, match="not found"):
        main(["--model", examples_tiny_model_dir, "--query_images", str(tmp_path / "nope.png"), "--train_limit", "5",
              "--k", "3"])
