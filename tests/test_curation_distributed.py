"""`dinov2-curate run` over 2 gloo processes (`torchrun --nproc_per_node 2`): the embedding shards are split
between the ranks (each written once), and the curated set, the removal log and the report equal the one-process
run's. A run that finds some shards already there computes only the missing ones, over both ranks."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("faiss")

from datasets import load_from_disk  # noqa: E402
from PIL import Image  # noqa: E402

from conftest import REPO_ROOT, tiny_config_kwargs  # noqa: E402

N_IMAGES, SHARD = 60, 8  # 8 shards


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A pool with planted copies, an evaluation set that overlaps it, and a tiny random DINOv2 folder (the
    semantic model: clustering; copies are found on `pixels:8` thumbnails, as a random ViT's features are all
    alike)."""
    root = tmp_path_factory.mktemp("curation_inputs")
    rng = np.random.default_rng(0)
    (root / "pool").mkdir()
    (root / "test").mkdir()
    tiles = [Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((32, 32), Image.BILINEAR)
             for _ in range(N_IMAGES - 6)]
    for i, tile in enumerate(tiles):
        tile.save(root / "pool" / f"{i:03d}.png")
    for j in range(6):  # copies of pool images
        tiles[j].save(root / "pool" / f"copy_{j}.png")
    for j in range(3):  # two evaluation images are in the pool
        (tiles[10 + j] if j < 2 else Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))).save(
            root / "test" / f"{j}.png")
    import torch

    from modeling_dinov2 import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(**tiny_config_kwargs())).save_pretrained(root / "model")
    return root


def _config(inputs, out) -> str:
    path = out.parent / f"{out.name}.yaml"
    path.write_text(f"pool: {inputs / 'pool'}\neval_sets: {{test: {inputs / 'test'}}}\noutput_dir: {out}\n"
                    f"progress: false\nembedding: {{model: {inputs / 'model'}, dedup_model: 'pixels:8', shard_size: {SHARD}, "
                    "batch_size: 4}\n"
                    "dedup: {threshold: 0.99}\ndecontamination: {threshold: 0.99}\n"
                    "clustering: {n_clusters: [6, 2]}\nsampling: {target_fraction: 0.5}\n")
    return str(path)


def _curate(config: str, processes: int) -> str:
    launch = [sys.executable] if processes == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                       "--nproc_per_node", str(processes)]
    result = subprocess.run([*launch, "-m", "curation.cli", "run", "--config", config], cwd=REPO_ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stderr


def _shards_by_rank(log: str, embeddings_dir) -> dict:
    """{rank: shards} from the ranks' log lines for one embedding directory."""
    found = {}
    for rank, shards in re.findall(rf"{re.escape(str(embeddings_dir))}: rank (\d) embedded shards \[([\d, ]*)\]", log):
        found[int(rank)] = [int(s) for s in shards.split(",") if s.strip()]
    return found


def _results(out):
    log = pd.read_parquet(out / "removal_log.parquet")
    dataset = load_from_disk(str(out / "dataset"))
    report = json.loads((out / "report.json").read_text())
    return log, dataset.remove_columns([c for c in dataset.column_names if c == "image"]).to_pandas(), report


def _assert_same_results(one, two):
    log_one, kept_one, report_one = _results(one)
    log_two, kept_two, report_two = _results(two)
    pd.testing.assert_frame_equal(log_two, log_one)
    pd.testing.assert_frame_equal(kept_two, kept_one)
    for key in ("counts", "removed_by_reason"):
        assert report_two[key] == report_one[key], key
    assert report_one["removed_by_reason"].get("duplicate", 0) > 0  # the planted copies were found
    assert any(reason.startswith("eval") for reason in report_one["removed_by_reason"])


def test_two_processes_split_the_embedding_and_curate_like_one(inputs, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _curate(_config(inputs, one), 1)
    log = _curate(_config(inputs, two), 2)

    pool_embeddings = two / "embeddings" / "pool"
    by_rank = _shards_by_rank(log, pool_embeddings)
    assert sorted(by_rank) == [0, 1] and by_rank[0] and by_rank[1]
    assert sorted(by_rank[0] + by_rank[1]) == list(range(N_IMAGES // SHARD + 1))  # each shard by one rank
    from curation.embed import load_embeddings

    assert _shards_by_rank(log, two / "embeddings_dedup" / "pool").keys() == {0, 1}  # the second model's pass too
    for name in ("embeddings/pool", "embeddings/test", "embeddings_dedup/pool", "embeddings_dedup/test"):
        a, b = load_embeddings(one / name), load_embeddings(two / name)
        np.testing.assert_array_equal(b.rows, a.rows)
        np.testing.assert_array_equal(b.embeddings.to_numpy(), a.embeddings.to_numpy())
    _assert_same_results(one, two)

    # an interrupted two-process run (3 shards missing, no results yet) computes only the missing shards
    for result in ("dataset", "report.json", "removal_log.parquet", "cluster_sizes.png"):
        path = two / result
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    for shard in (1, 4, 6):
        for file in pool_embeddings.glob(f"shards/*{shard:05d}*"):
            file.unlink()
    log = _curate(_config(inputs, two), 2)
    by_rank = _shards_by_rank(log, pool_embeddings)
    assert sorted(by_rank[0] + by_rank[1]) == [1, 4, 6]
    report = json.loads((two / "report.json").read_text())
    assert report["embeddings"]["model"]["pool"] == {"computed": 3 * SHARD, "reused": N_IMAGES - 3 * SHARD}
    _assert_same_results(one, two)


def test_steps_that_work_on_finished_embeddings_refuse_several_processes(inputs, tmp_path):
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "curation.cli", "cluster", "--embeddings", str(tmp_path), "--n_clusters", "2", "--output_dir",
                             str(tmp_path / "c")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode != 0
    assert "dinov2-curate cluster runs in one process; 2 were launched" in result.stderr
