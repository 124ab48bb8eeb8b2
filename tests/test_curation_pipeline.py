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
from curation.balance import normalized_entropy  # noqa: E402

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
    usage = capsys.readouterr().out
    assert all(step in usage for step in ("run", "embed", "dedup", "decontaminate", "retrieve", "cluster", "sample"))
    assert "curate.yaml" in usage and "removal_log.parquet" in usage  # an example config and what comes out
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    run_help = capsys.readouterr().out
    for key in ("dedup:", "threshold: 0.6", "sampling:", "multiplier: 1", "retrieval:", "include_seeds: false"):
        assert key in run_help  # every config setting is listed with its default
    with pytest.raises(SystemExit):
        main(["embed", "--help"])
    assert "{cls,mean,cls+mean}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", "--target_size", "3"])
    assert exit_info.value.code == 2 and "missing required option(s): --clustering, --output_dir" in \
        capsys.readouterr().err
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
    cfg.write_text("dedupe: {threshold: 0.5}\n")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--config", str(cfg)])
    assert exit_info.value.code == 1 and "unknown setting 'dedupe'" in capsys.readouterr().err

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
    main(["sample", "--clustering", str(tmp_path / "cl"), "--output_dir", str(tmp_path / "sp2"), "--target_size",
          "150", "--multiplier", "2"])
    rows, copies = np.unique(np.load(tmp_path / "sp2" / "selected.npy"), return_counts=True)
    assert copies.sum() == 150 and copies.max() == 2 and rows.size <= 120
    main(["retrieve", "--embeddings", str(emb), "--seed_embeddings", str(emb), "--output_dir", str(tmp_path / "rc"),
          "--mode", "cluster", "--n_clusters", "6", "--min_seeds", "0", "--per_cluster", "5"])
    retrieved, credited = (np.load(tmp_path / "rc" / f) for f in ("retrieved.npy", "seed_index.npy"))
    assert retrieved.size == credited.size > 0
    np.testing.assert_array_equal(credited, retrieved)  # seeds = pool: each image's nearest seed is itself
    np.testing.assert_allclose(np.load(tmp_path / "rc" / "seed_similarity.npy"), 1.0, atol=1e-4)
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
        from huggingface_hub import DatasetCard
        card = DatasetCard.load("tester/curated-skewed", repo_type="dataset")
        print(json.dumps({{"n": len(back), "columns": back.column_names, "files": files, "pixels": same_pixels,
                           "card": card.text, "tags": card.data.tags, "has_features": "dataset_info" in card.data.to_dict(),
                           "source_index": back["source_index"] == local["source_index"],
                           "clusters": back["cluster_level_1"] == local["cluster_level_1"]}}))
    """)
    out = json.loads(run_python(code, env=hub_server["env"]).strip().splitlines()[-1])
    assert out["n"] == len(res.dataset) == 25
    assert set(res.dataset.column_names) == set(out["columns"])
    assert out["pixels"] and out["source_index"] and out["clusters"]
    assert {"curation/report.json", "curation/cluster_sizes.png", "curation/removal_log.parquet"} <= set(out["files"])
    card = out["card"]
    assert "dinov2" in out["tags"] and out["has_features"]  # our text; push_to_hub's metadata kept
    assert "| dedup | threshold 0.999, k 64 |" in card and "| sampled | 25 |" in card
    removed = {reason: n for reason, n in res.report["removed_by_reason"].items()}
    for reason, n in removed.items():
        assert f"(`{reason}`) | {n:,} |" in card
    assert "![cluster sizes per level, before and after sampling](curation/cluster_sizes.png)" in card


def test_a_run_with_a_hub_repo_pushes_the_report_and_the_card(skewed, hub_server, tmp_path):
    """`hub.repo_id` in the config: the push comes after the report, so the report and the card go up with it."""
    code = textwrap.dedent(f"""
        import json
        from huggingface_hub import DatasetCard, HfApi
        from curation.pipeline import curate
        curate(pool={str(skewed["pool"])!r}, output_dir={str(tmp_path / "out")!r}, config={{
            "embedding": {{"model": "pixels:8"}}, "clustering": {{"enabled": False}}, "progress": False,
            "hub": {{"repo_id": "tester/curated-direct"}}}})
        files = HfApi().list_repo_files("tester/curated-direct", repo_type="dataset")
        card = DatasetCard.load("tester/curated-direct", repo_type="dataset")
        print(json.dumps({{"files": files, "card": card.text}}))
    """)
    out = json.loads(run_python(code, env=hub_server["env"]).strip().splitlines()[-1])
    assert {"curation/report.json", "curation/removal_log.parquet"} <= set(out["files"])
    assert "| dedup | threshold" in out["card"]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["hub"] == {"repo_id": "tester/curated-direct"}


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

    # Every retrieved item names its seed and their cosine similarity, as sample-based retrieval does.
    from curation.embed import load_embeddings

    pool_x = load_embeddings(tmp_path / "out" / "embeddings" / "pool").embeddings.to_numpy(normalize=True)
    seed_x = load_embeddings(tmp_path / "out" / "embeddings" / "greens").embeddings.to_numpy(normalize=True)
    rows, seed_rows = np.array(res.dataset["source_index"]), np.array(res.dataset["retrieval_seed_index"])
    assert set(res.dataset["retrieval_mode"]) == {"cluster"} and ((seed_rows >= 0) & (seed_rows < 8)).all()
    np.testing.assert_allclose(res.dataset["retrieval_similarity"], (pool_x[rows] * seed_x[seed_rows]).sum(1),
                               atol=1e-5)
    seed_names = sorted(p.name for p in seeds.iterdir())
    for path, seed_row, sim in zip(res.dataset["path"], seed_rows, res.dataset["retrieval_similarity"]):
        if path.rsplit("/", 1)[-1] in seed_names:  # a pool copy of a seed image is credited to that seed
            assert seed_names[seed_row] == path.rsplit("/", 1)[-1] and sim == pytest.approx(1.0, abs=1e-4)


def _labelled(paths, names=("red", "green", "blue")):
    """A datasets.Dataset of the tiles with a ClassLabel ``label`` (the tile's colour) and its file name."""
    from datasets import ClassLabel, Dataset, Features, Image as ImageFeature, Value

    colours = [p.name.split("_")[0] for p in paths]
    return Dataset.from_dict(
        {"image": [str(p) for p in paths], "label": [list(COLOURS).index(c) % len(names) for c in colours],
         "name": [p.name for p in paths]},
        features=Features({"image": ImageFeature(), "label": ClassLabel(names=list(names)), "name": Value("string")}))


def test_label_column_survives_curation_in_every_configuration(skewed, tmp_path):
    """Rule: the output keeps the union of the pool's and the included seed sets' columns, None where absent."""
    from curation.pipeline import curate

    pool_paths = sorted(skewed["pool"].iterdir())
    pool = _labelled(pool_paths)
    greens = _labelled([p for p in pool_paths if p.name.startswith("green_")][:6])
    folder = tmp_path / "blues"  # a seed folder: no label column, but a path column
    folder.mkdir()
    for path in [p for p in pool_paths if p.name.startswith("blue_")][:4]:
        (folder / path.name).write_bytes(path.read_bytes())
    base = {"embedding": {"model": skewed["model"], "image_size": 28, "pooling": "mean"}, "dedup": {"enabled": False},
            "clustering": {"n_clusters": [6, 2], "n_resampling_steps": 1}, "progress": False, "overwrite": True,
            "retrieval": {"min_seeds": 2, "per_cluster": 20, "n_neighbors": 3}}
    configs = {
        "no retrieval, balanced, seeds not included": ({"mode": "none"}, {"target_size": 30}, False),
        "sample, seeds included": ({"mode": "sample"}, {}, True),
        "cluster, seeds included": ({"mode": "cluster"}, {}, True),
        "both + balanced x2, seeds included": ({"mode": "both"}, {"target_size": 40, "multiplier": 2}, True),
    }
    out = tmp_path / "out"  # shared (overwrite): the embeddings are computed once and reused
    for what, (retrieval, sampling, include) in configs.items():
        cfg = {**base, "retrieval": {**base["retrieval"], **retrieval}, "sampling": sampling, "include_seeds": include}
        ds = curate(pool=pool, seeds={"greens": greens, "blues": str(folder)}, config=cfg, output_dir=str(out)).dataset
        assert {"label", "name"} <= set(ds.column_names), what
        rows = ds.to_pandas().drop(columns=["image"])
        from_pool = rows[rows.source_set == "pool"]
        assert len(from_pool) > 0, what
        truth = [list(COLOURS).index(n.split("_")[0]) for n in from_pool.name]
        assert from_pool.label.tolist() == truth, what  # each row keeps its own label
        if include:
            assert set(rows.source_set) == {"pool", "greens", "blues"}, what
            assert ds.features["label"] == pool.features["label"] and "path" in ds.column_names, what
            seed_green = rows[rows.source_set == "greens"]
            assert seed_green.label.tolist() == [1] * 6 and seed_green.name.tolist() == greens["name"], what
            blue = rows[rows.source_set == "blues"]
            assert blue.label.isna().all() and blue.path.str.endswith(".png").all(), what  # None where absent
            assert from_pool.path.isna().all(), what
            assert len(ds) == len(from_pool) + 6 + 4, what
        else:
            assert set(rows.source_set) == {"pool"}, what
        assert from_pool.drop_duplicates("source_index").copies.sum() == len(from_pool), what
    # the last run tiled small clusters: some pool images appear twice, and the copies column says so
    assert from_pool.copies.max() == 2 and (from_pool.groupby("source_index").size() == from_pool.groupby(
        "source_index").copies.first()).all()

    # Seed labels with other class names become the class names, so one column means one thing.
    other = _labelled([p for p in pool_paths if p.name.startswith("green_")][:6], names=("leaf", "grass", "moss"))
    ds = curate(pool=pool, seeds={"mosses": other}, config={**base, "retrieval": {"mode": "sample"},
                                                              "include_seeds": True}, output_dir=str(out)).dataset
    rows = ds.to_pandas()
    assert ds.features["label"].dtype == "string"
    assert set(rows[rows.source_set == "mosses"].label) == {"grass"}
    assert set(rows[rows.source_set == "pool"].label) <= {"red", "green", "blue"}


def test_include_seeds_column_rule_casts_or_names_the_clash():
    from datasets import Dataset, Features, Sequence, Value

    from curation.pipeline import _concatenate_with_shared_columns

    pool = Dataset.from_dict({"image": ["a", "b"], "label": [0, 1], "source_set": ["pool"] * 2},
                             features=Features({"image": Value("string"), "label": Value("int64"),
                                                "source_set": Value("string")}))
    narrow = Dataset.from_dict({"image": ["c"], "label": [7], "source_set": ["s"]},
                               features=Features({"image": Value("string"), "label": Value("int32"),
                                                  "source_set": Value("string")}))
    both = _concatenate_with_shared_columns([pool, narrow], ["pool", "s"], "image", ["source_set"])
    assert both.features["label"] == Value("int64") and both["label"] == [0, 1, 7]  # cast to the pool's type
    clash = Dataset.from_dict({"image": ["d"], "label": [[1, 2]], "source_set": ["t"]},
                              features=Features({"image": Value("string"), "label": Sequence(Value("int64")),
                                                 "source_set": Value("string")}))
    with pytest.raises(ValueError, match="t: cannot align its columns with the pool's for include_seeds.*label"):
        _concatenate_with_shared_columns([pool, clash], ["pool", "t"], "image", ["source_set"])


def test_sampling_config_checks_the_multiplier():
    from curation.config import CurationConfig

    assert CurationConfig(sampling={"multiplier": 2, "target_fraction": 1.5}).sampling.multiplier == 2
    with pytest.raises(ValueError, match="sampling.multiplier must be an integer >= 1; received 0"):
        CurationConfig(sampling={"multiplier": 0})
    with pytest.raises(ValueError, match=r"target_fraction must be in \(0, sampling.multiplier = 1\]"):
        CurationConfig(sampling={"target_fraction": 1.5})


def test_a_file_name_that_is_not_utf8_and_a_blank_image_do_not_stop_the_run(tmp_path, capsys):
    """Issue 21 item 3: such inputs end kept (the bad name) or logged with a reason (the blank image)."""
    import os

    import pandas as pd
    from datasets import load_from_disk

    from curation.cli import main

    rng = np.random.default_rng(0)
    pool = tmp_path / "pool"
    pool.mkdir()
    for i in range(10):
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(pool / f"{i:02d}.png")
    odd_pixels = rng.integers(0, 255, (16, 16), dtype=np.uint8)
    with open(os.path.join(os.fsencode(pool), b"odd\xff.png"), "wb") as f:  # not valid UTF-8
        Image.fromarray(odd_pixels).save(f, format="PNG")
    Image.fromarray(np.full((16, 16), 128, np.uint8)).save(pool / "blank.png")  # zero embedding under pixels:N
    (pool / "gone.png").symlink_to(tmp_path / "deleted.png")  # a broken link: listed, then logged as undecodable
    cfg = tmp_path / "curate.yaml"
    cfg.write_text(f"pool: {pool}\noutput_dir: {tmp_path / 'out'}\nprogress: false\n"
                   "embedding: {model: 'pixels:8'}\nclustering: {n_clusters: [3]}\n")
    main(["run", "--config", str(cfg)])

    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["accounting"]["pool"] == {"total": 13,
                                            "outcome": {"kept": 11, "zero_embedding": 1, "undecodable": 1}}
    assert report["removed_by_reason"] == {"zero_embedding": 1, "undecodable": 1}
    assert report["counts"]["decodable"] == 12 and report["counts"]["embedded"] == 11
    removal = pd.read_parquet(tmp_path / "out" / "removal_log.parquet").set_index("source")
    assert removal.reason.to_dict() == {str(pool / "blank.png"): "zero_embedding",
                                        str(pool / "gone.png"): "undecodable"}
    assert removal.detail[str(pool / "blank.png")].startswith("blank image (zero embedding)")
    assert "No such file" in removal.detail[str(pool / "gone.png")]
    curated = load_from_disk(str(tmp_path / "out" / "dataset"))
    names = [p.rsplit("/", 1)[-1] for p in curated["path"]]
    assert "odd\\xff.png" in names  # shown with an escape; the pixels are the file's own
    np.testing.assert_array_equal(np.array(curated[names.index("odd\\xff.png")]["image"].convert("L")), odd_pixels)

    # the single embedding step counts the blank image, and lists the file with the odd name
    capsys.readouterr()
    main(["embed", "--input", str(pool), "--model", "pixels:8", "--output_dir", str(tmp_path / "emb")])
    summary = json.loads(capsys.readouterr().out)
    assert (summary["images"], summary["embedded"], summary["zero_embedding"], summary["undecodable"]) == (13, 11, 1, 1)


def test_a_single_image_pool_is_still_decontaminated(tmp_path):
    """One pool image has no pairs to de-duplicate, but a copy of an evaluation image must still be removed."""
    from curation.pipeline import curate

    rng = np.random.default_rng(1)
    copied = rng.integers(0, 255, (16, 16), dtype=np.uint8)
    for folder, images in {"pool": [copied], "test": [copied, rng.integers(0, 255, (16, 16), dtype=np.uint8)]}.items():
        (tmp_path / folder).mkdir()
        for i, pixels in enumerate(images):
            Image.fromarray(pixels).save(tmp_path / folder / f"{i}.png")
    result = curate(pool=str(tmp_path / "pool"), eval_sets={"test": str(tmp_path / "test")},
                    output_dir=str(tmp_path / "out"),
                    config={"embedding": {"model": "pixels:8"}, "clustering": {"enabled": False}, "progress": False})
    assert len(result.dataset) == 0
    assert result.report["removed_by_reason"] == {"eval_match": 1}
    assert result.report["counts"]["after_dedup"] == 1 and result.report["counts"]["after_decontamination"] == 0


def test_the_copy_graph_and_the_timings_follow_the_steps_that_run(tmp_path):
    """With de-duplication off, its `k` does not size the graph and it gets no timing; the shared k-NN search
    has a timing of its own."""
    from curation.pipeline import curate

    rng = np.random.default_rng(2)
    for folder, count in {"pool": 12, "test": 2}.items():
        (tmp_path / folder).mkdir()
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(tmp_path / folder / f"{i}.png")
    result = curate(pool=str(tmp_path / "pool"), eval_sets={"test": str(tmp_path / "test")},
                    output_dir=str(tmp_path / "out"),
                    config={"embedding": {"model": "pixels:8"}, "dedup": {"enabled": False, "k": 64},
                            "decontamination": {"k": 3}, "clustering": {"enabled": False}, "progress": False})
    assert result.report["knn"]["k"] == 3
    timings = result.report["timings_s"]
    assert "knn_graph" in timings and "decontamination" in timings and "dedup" not in timings
