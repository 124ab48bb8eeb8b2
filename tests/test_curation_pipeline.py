"""Pipeline-level tests: balanced sampling of a skewed image mixture, the CLI, and the Hub round trip.

The images are flat colour tiles with pixel noise in three colour "concepts" of very different sizes.
A tiny random-init ViT separates flat colours well (its features mostly encode colour statistics), so
it is enough here; the ground truth is the colour of each tile.
"""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("faiss")

from PIL import Image  # noqa: E402

from conftest import run_python  # noqa: E402
from curation.sampling import normalized_entropy  # noqa: E402

COLOURS = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (30, 40, 200)}
COUNTS = {"red": 90, "green": 24, "blue": 6}


def _tiny_checkpoint(path):
    from modeling_dinov2 import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14,
                             layerscale_value=1.0)).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def skewed(tmp_path_factory):
    root = tmp_path_factory.mktemp("skewed")
    rng = np.random.default_rng(0)
    pool = root / "pool"
    pool.mkdir()
    for colour, count in COUNTS.items():
        base = np.array(COLOURS[colour], dtype=np.int16)
        for i in range(count):
            shade = base + rng.integers(-25, 25, 3)
            pixels = np.clip(shade + rng.integers(-12, 12, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(pool / f"{colour}_{i:03d}.png")
    return {"root": root, "pool": pool, "model": _tiny_checkpoint(root / "tiny")}


def _colour_counts(paths):
    names = [p.rsplit("/", 1)[-1].split("_")[0] for p in paths]
    return np.array([names.count(c) for c in COLOURS])


def test_balanced_sampling_makes_a_skewed_mixture_more_balanced(skewed):
    from curation.pipeline import curate

    res = curate(pool=str(skewed["pool"]), output_dir=str(skewed["root"] / "out"), config={
        "embedding": {"model": skewed["model"], "image_size": 28, "pooling": "mean", "shard_size": 50},
        "dedup": {"enabled": False},
        "clustering": {"n_clusters": [12, 3], "n_resampling_steps": 5},
        "sampling": {"target_size": 30}, "progress": False})
    pool_counts = np.array(list(COUNTS.values()))
    random_counts = _colour_counts(list(np.random.default_rng(0).choice(
        sorted(str(p) for p in skewed["pool"].iterdir()), 30, replace=False)))
    curated_counts = _colour_counts(res.dataset["path"])
    h_pool, h_random, h_curated = map(normalized_entropy, (pool_counts, random_counts, curated_counts))
    print(f"colour entropy: pool {h_pool:.3f}, random 30 {h_random:.3f}, balanced 30 {h_curated:.3f}, "
          f"counts {curated_counts.tolist()}")
    assert len(res.dataset) == 30 and h_curated > h_pool + 0.15 and h_curated > h_random + 0.1
    assert curated_counts[2] == COUNTS["blue"]  # the rare concept is kept whole
    report = res.report
    for before, after in zip(report["clustering"]["pool"], report["clustering"]["curated"]):
        assert after["normalized_entropy"] > before["normalized_entropy"]  # every level is more balanced
    assert report["clustering"]["pool"][0]["n_items"] == 120
    assert report["removed_by_reason"] == {"not_sampled": 120 - 30}
    assert set(res.dataset["selected_by"]) == {"balanced"}


def test_cli_run_from_config_and_steps_alone(skewed, tmp_path, capsys):
    from curation.cli import main

    main(["--help"])
    assert "dedup" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["cluster", "--help"])
    capsys.readouterr()
    cfg = tmp_path / "curate.yaml"
    cfg.write_text(textwrap.dedent(f"""\
        pool: {skewed["pool"]}
        output_dir: {tmp_path / "run"}
        progress: false
        embedding: {{model: {skewed["model"]}, image_size: 28, pooling: mean}}
        dedup: {{threshold: 0.99}}
        clustering: {{n_clusters: [8, 2], n_resampling_steps: 2}}
        sampling: {{target_fraction: 0.5}}
        """))
    main(["run", "--config", str(cfg), "--set", "dedup.threshold=0.999"])
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["config"]["dedup"]["threshold"] == 0.999
    assert sum(report["accounting"]["pool"]["outcome"].values()) == 120
    with pytest.raises(ValueError, match="unknown setting"):
        cfg.write_text("dedupe: {threshold: 0.5}\n")
        main(["run", "--config", str(cfg)])

    emb = tmp_path / "emb"
    main(["embed", "--input", str(skewed["pool"]), "--model", skewed["model"], "--output_dir", str(emb),
          "--image_size", "28", "--pooling", "mean"])
    main(["dedup", "--embeddings", str(emb), "--output_dir", str(tmp_path / "dd"), "--threshold", "0.999", "--k", "8"])
    dd = json.loads((tmp_path / "dd" / "result.json").read_text())
    assert dd["kept"] + dd["removed"] == 120
    main(["cluster", "--embeddings", str(emb), "--output_dir", str(tmp_path / "cl"), "--n_clusters", "9", "3",
          "--n_resampling_steps", "2"])
    main(["sample", "--clustering", str(tmp_path / "cl"), "--output_dir", str(tmp_path / "sp"), "--target_size", "20"])
    assert np.unique(np.load(tmp_path / "sp" / "selected.npy")).size == 20
    main(["retrieve", "--embeddings", str(emb), "--seed_embeddings", str(emb), "--output_dir", str(tmp_path / "rt"),
          "--n_neighbors", "2"])
    assert json.loads((tmp_path / "rt" / "result.json").read_text())["nominal"] == 240
    main(["decontaminate", "--embeddings", str(emb), "--eval_embeddings", str(emb), "--output_dir",
          str(tmp_path / "dc"), "--k", "4"])
    assert json.loads((tmp_path / "dc" / "result.json").read_text())["kept"] == 0  # every item is its own eval copy


def test_curated_dataset_round_trip_through_the_hub(skewed, hub_server, tmp_path):
    from curation.pipeline import curate

    res = curate(pool=str(skewed["pool"]), output_dir=str(tmp_path / "out"), config={
        "embedding": {"model": skewed["model"], "image_size": 28, "pooling": "mean"},
        "dedup": {"threshold": 0.999}, "clustering": {"n_clusters": [6, 2], "n_resampling_steps": 1},
        "sampling": {"target_size": 25}, "progress": False})
    code = textwrap.dedent(f"""
        import json, datasets, numpy as np
        datasets.config.USE_PARQUET_EXPORT = False
        from datasets import load_dataset, load_from_disk
        from huggingface_hub import HfApi
        from curation.pipeline import push_curated
        local = load_from_disk({str(tmp_path / "out" / "dataset")!r})
        push_curated({str(tmp_path / "out")!r}, "tester/curated-skewed")
        back = load_dataset("tester/curated-skewed", split="train")
        files = HfApi().list_repo_files("tester/curated-skewed", repo_type="dataset")
        same_pixels = all(np.array_equal(np.array(a), np.array(b)) for a, b in zip(local["image"], back["image"]))
        print(json.dumps({{"n": len(back), "columns": back.column_names, "files": files, "pixels": same_pixels,
                           "source_index": back["source_index"] == local["source_index"],
                           "clusters": back["cluster_level_1"] == local["cluster_level_1"]}}))
    """)
    out = json.loads(run_python(code, env=hub_server["env"]).strip().splitlines()[-1])
    assert out["n"] == len(res.dataset) == 25
    assert set(res.dataset.column_names) == set(out["columns"])
    assert out["pixels"] and out["source_index"] and out["clusters"]
    assert {"curation/report.json", "curation/cluster_sizes.png", "curation/removal_log.parquet"} <= set(out["files"])


def test_cluster_based_retrieval_takes_the_clusters_of_the_seed_set(skewed, tmp_path):
    from curation.pipeline import curate

    seeds = tmp_path / "seeds"
    seeds.mkdir()
    for path in sorted(skewed["pool"].glob("green_*"))[:8]:  # 8 seed images of the green concept
        (seeds / path.name).write_bytes(path.read_bytes())
    res = curate(pool=str(skewed["pool"]), seeds={"greens": str(seeds)}, output_dir=str(tmp_path / "out"), config={
        "embedding": {"model": skewed["model"], "image_size": 28, "pooling": "mean"}, "dedup": {"enabled": False},
        "clustering": {"n_clusters": [6], "n_resampling_steps": 0},
        "retrieval": {"mode": "cluster", "min_seeds": 3, "per_cluster": 50}, "progress": False})
    counts = _colour_counts(res.dataset["path"])
    print(f"cluster-based retrieval around 8 green seeds: colour counts {counts.tolist()}")
    assert counts[1] == COUNTS["green"] and counts[1] >= 0.8 * counts.sum()
    assert set(res.dataset["retrieval_seed_set"]) == {"greens"} and set(res.dataset["selected_by"]) == {"retrieval"}
    assert res.report["retrieval"]["greens"]["cluster"]["selected_clusters"] >= 1
    assert res.report["accounting"]["greens"]["outcome"] == {"used_as_reference": 8}
