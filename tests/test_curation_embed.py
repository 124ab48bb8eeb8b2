"""Tests for curation.inputs and curation.embed: inputs, resumable shards, failures, stock checkpoints.

A tiny random-init ViT is enough here: these tests check bookkeeping and numerics against a direct
forward pass of the model, not the meaning of the features.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402

from curation import embed as embed_module  # noqa: E402
from curation.embed import Preprocessing, embed_images, load_embeddings  # noqa: E402
from curation.inputs import load_image_set  # noqa: E402


def _tiny_model(seed=0):
    from modeling_dinov2 import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    return Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=28,
                                    patch_size=14, layerscale_value=1.0)).eval()


@pytest.fixture()
def folder(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(11):
        Image.fromarray(rng.integers(0, 255, (30 + i, 40, 3), dtype=np.uint8)).save(d / f"{i:02d}.png")
    (d / "05_bad.jpg").write_bytes(b"garbage")
    return d


def _reference(model, image_set, rows, preprocessing):
    """Direct fp32 forward pass of the model (the reference for the stored embeddings)."""
    from modeling_dinov2.image_decoding import decode_image

    tf = preprocessing.transform()
    x = torch.stack([tf(decode_image(image_set.dataset[int(r)]["image"])) for r in rows])
    with torch.no_grad():
        return model(x).pooler_output.numpy()


def test_embeddings_match_the_model_and_failures_are_recorded(folder, tmp_path, caplog):
    Image.new("RGB", (1, 1)).save(folder / "10_pixel.png")  # too small: skipped as pretraining skips it
    image_set = load_image_set(str(folder), "pool")
    assert len(image_set) == 13
    model = _tiny_model()
    with caplog.at_level("WARNING", logger="curation.embed"):
        res = embed_images(image_set, model, tmp_path / "emb", image_size=28, shard_size=5, batch_size=3,
                           storage_dtype="float32", precision="float32", progress=False)
    assert res.n_total == 13 and res.rows.size == 11 and res.embeddings.storage_dtype == "float32"
    assert [f["row"] for f in res.failures] == [6, 12]  # "05_bad.jpg" sorts after "05.png"
    assert res.failures[0]["source"].endswith("05_bad.jpg") and "not an image" in res.failures[0]["reason"]
    assert res.failures[1]["source"].endswith("10_pixel.png")
    assert res.failures[1]["reason"] == "BadImageError: too small (1x1 px, minimum side 8)"
    assert "pool: 2 of 13 images cannot be decoded and are skipped (e.g. " in caplog.text
    ref = _reference(model, image_set, res.rows, Preprocessing.for_image_size(28))
    np.testing.assert_allclose(res.embeddings.to_numpy(), ref, atol=1e-5)
    ds = res.to_dataset()  # an Arrow column of the datasets kind
    assert ds.features["embedding"].length == 32 and len(ds) == 11
    # float16 storage holds the same values to half precision; bf16 autocast stays close
    half = embed_images(image_set, model, tmp_path / "emb16", image_size=28, shard_size=5, precision="bfloat16",
                        progress=False)
    assert half.embeddings.storage_dtype == "float16"
    cos = (half.embeddings.to_numpy(normalize=True) * res.embeddings.to_numpy(normalize=True)).sum(1)
    assert cos.min() > 0.99


def test_resume_after_interruption_computes_only_missing_shards(folder, tmp_path, monkeypatch):
    image_set = load_image_set(str(folder), "pool")
    model = _tiny_model()
    kwargs = dict(image_size=28, shard_size=3, batch_size=2, storage_dtype="float32", precision="float32",
                  progress=False)
    full = embed_images(image_set, model, tmp_path / "full", **kwargs)
    assert full.shards_computed == 4

    real_write = embed_module._write_shard
    calls = {"n": 0}

    def crash_after_two(*args, **kw):
        if calls["n"] == 2:
            # a kill in the middle of writing shard 2 leaves a temporary file behind
            (tmp_path / "part" / "shards" / "shard-00002.arrow.tmp").write_bytes(b"half-written")
            raise KeyboardInterrupt("killed")
        calls["n"] += 1
        return real_write(*args, **kw)

    monkeypatch.setattr(embed_module, "_write_shard", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        embed_images(image_set, model, tmp_path / "part", **kwargs)
    with pytest.raises(ValueError, match="incomplete: 2 of 4 shards are missing"):
        load_embeddings(tmp_path / "part")
    monkeypatch.setattr(embed_module, "_write_shard", real_write)

    resumed = embed_images(image_set, model, tmp_path / "part", **kwargs)
    assert resumed.shards_computed == 2
    assert not list((tmp_path / "part" / "shards").glob("*.tmp"))
    np.testing.assert_array_equal(resumed.rows, full.rows)
    np.testing.assert_array_equal(resumed.embeddings.to_numpy(), full.embeddings.to_numpy())
    assert resumed.failures == full.failures
    # a finished directory is not recomputed, and other settings are refused
    assert embed_images(image_set, model, tmp_path / "part", **kwargs).shards_computed == 0
    # a damaged shard (cut short, or its failures list unreadable) is found on resume and computed again
    shard1 = tmp_path / "part" / "shards" / "shard-00001.arrow"
    shard1.write_bytes(shard1.read_bytes()[:100])
    (tmp_path / "part" / "shards" / "shard-00003.failures.json").write_text("[{")
    repaired = embed_images(image_set, model, tmp_path / "part", **kwargs)
    assert repaired.shards_computed == 2
    np.testing.assert_array_equal(repaired.embeddings.to_numpy(), full.embeddings.to_numpy())
    assert repaired.failures == full.failures
    with pytest.raises(ValueError, match="other settings.*model"):
        embed_images(image_set, _tiny_model(seed=1), tmp_path / "part", **kwargs)
    with pytest.raises(ValueError, match="pooling"):
        embed_images(image_set, model, tmp_path / "part", **{**kwargs, "pooling": "mean"})


def test_embedding_killed_by_sigkill_resumes_where_it_stopped(tmp_path, capsys):
    """A real interruption: ``dinov2-curate embed`` in a subprocess, SIGKILLed once a shard is on disk, then rerun.

    Both runs use one intra-op thread, so the resumed shards and the uninterrupted run see the same
    arithmetic and must agree bit for bit.
    """
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO_ROOT
    from curation.cli import main

    n_images, shard_size = 600, 20
    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n_images):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(images / f"{i:04d}.png")
    (images / "0500_bad.png").write_bytes(b"not a png")  # row 501, in shard 25
    n_rows = n_images + 1
    n_shards = -(-n_rows // shard_size)
    _tiny_model().save_pretrained(tmp_path / "tiny")
    args = ["embed", "--input", str(images), "--model", str(tmp_path / "tiny"), "--image_size", "28",
            "--shard_size", str(shard_size), "--batch_size", "5", "--storage_dtype", "float32",
            "--precision", "float32", "--device", "cpu"]
    part = tmp_path / "part"
    shard_dir = part / "shards"

    with open(tmp_path / "killed_run.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "curation.cli", *args, "--output_dir", str(part)],
                                cwd=REPO_ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            while not list(shard_dir.glob("shard-*.arrow")):
                assert proc.poll() is None, (tmp_path / "killed_run.log").read_text()
                assert time.monotonic() < deadline, "no shard written within 300 s"
                time.sleep(0.005)
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    done = sorted(shard_dir.glob("shard-*.arrow"))
    # killed mid-run: at least two shards still to do (the rerun below must write them; two are used below)
    assert len(done) <= n_shards - 2, f"{len(done)} of {n_shards} shards at the kill"
    with pytest.raises(ValueError, match="incomplete"):
        load_embeddings(part)
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in done}
    missing = [s for s in range(n_shards) if not (shard_dir / f"shard-{s:05d}.arrow").exists()]
    # What a kill in the middle of a write leaves: half an Arrow file under the temporary name, and the
    # failures list of a shard whose Arrow file never arrived (here naming a row that is fine).
    (shard_dir / f"shard-{missing[0]:05d}.arrow.tmp").write_bytes(done[0].read_bytes()[:300])
    (shard_dir / f"shard-{missing[1]:05d}.failures.json").write_text(
        json.dumps([{"row": missing[1] * shard_size, "source": "stale", "reason": "stale"}]))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        capsys.readouterr()
        main([*args, "--output_dir", str(part)])  # the rerun, through the same command
        summary = json.loads(capsys.readouterr().out)
        full = embed_images(load_image_set(str(images), "pool"), str(tmp_path / "tiny"), tmp_path / "full",
                            image_size=28, shard_size=shard_size, batch_size=5, storage_dtype="float32",
                            precision="float32", device="cpu", progress=False)
    finally:
        torch.set_num_threads(threads)
    resumed = load_embeddings(part)

    # (a) only the missing shards were computed; the shards of the killed run were not rewritten
    assert summary["shards_computed"] == len(missing) == n_shards - len(done)
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in done} == before
    # (b) the result equals an uninterrupted run exactly
    assert full.shards_computed == n_shards
    np.testing.assert_array_equal(resumed.rows, full.rows)
    assert resumed.embeddings.to_numpy().tobytes() == full.embeddings.to_numpy().tobytes()
    # (c) the leftovers changed nothing: no temporary file remains, and the stale failure is gone
    assert not list(shard_dir.glob("*.tmp"))
    assert resumed.failures == full.failures and [f["row"] for f in full.failures] == [501]
    assert summary["images"] == n_rows and summary["embedded"] == n_images and summary["undecodable"] == 1
    print(f"killed with {len(done)} of {n_shards} shards on disk; the rerun computed {len(missing)}")


def test_stock_transformers_checkpoint_and_dataset_input(tmp_path):
    from datasets import Dataset, Features, Image as ImageFeature, Value
    from transformers import Dinov2Config as StockConfig, Dinov2Model as StockModel

    torch.manual_seed(0)
    stock = StockModel(StockConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                   image_size=28, patch_size=14)).eval()
    stock.save_pretrained(tmp_path / "stock")
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)) for _ in range(6)]
    ds = Dataset.from_dict({"img": images, "label": list(range(6))},
                           features=Features({"img": ImageFeature(), "label": Value("int64")}))
    image_set = load_image_set(ds, "pool")
    assert image_set.image_column == "img"
    res = embed_images(image_set, str(tmp_path / "stock"), tmp_path / "emb", image_size=28, storage_dtype="float32",
                       precision="float32", pooling="cls+mean", progress=False)
    tf = Preprocessing.for_image_size(28).transform()
    with torch.no_grad():
        out = stock(torch.stack([tf(im.convert("RGB")) for im in images]))
    ref = torch.cat([out.pooler_output, out.last_hidden_state[:, 1:].mean(1)], 1).numpy()
    np.testing.assert_allclose(res.embeddings.to_numpy(), ref, atol=1e-5)
    meta = json.loads((tmp_path / "emb" / "embedding_meta.json").read_text())
    assert meta["pooling"] == "cls+mean" and meta["dim"] == 64 and "stock" in meta["model"]


def test_input_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_set(str(tmp_path / "nope"), "pool")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="no image files"):
        load_image_set(str(tmp_path / "empty"), "pool")
    from datasets import Dataset

    with pytest.raises(ValueError, match="no column with a datasets.Image feature"):
        load_image_set(Dataset.from_dict({"x": [1, 2]}), "pool")
    with pytest.raises(ValueError, match="pooling must be one of"):
        embed_images(load_image_set([str(tmp_path / "empty" / "a.txt")], "p"), _tiny_model(), tmp_path / "e",
                     pooling="max", progress=False)


def test_a_changed_image_is_embedded_again_and_the_others_are_reused(tmp_path):
    """Issue 21 item 4: a file whose content changed at the same path gets a new embedding on the next run."""
    rng = np.random.default_rng(3)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(7):
        Image.fromarray(rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    model = _tiny_model()
    kwargs = dict(image_size=28, shard_size=3, storage_dtype="float32", precision="float32", progress=False)
    first = embed_images(load_image_set(str(folder), "pool"), model, tmp_path / "emb", **kwargs)
    first_x = first.embeddings.to_numpy()
    shards = sorted((tmp_path / "emb" / "shards").glob("*.arrow"))
    before = {p.name: p.stat().st_mtime_ns for p in shards}

    # shards: rows 0-2 | 3-5 | 6; row 4 changes
    Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(folder / "4.png")
    image_set = load_image_set(str(folder), "pool")
    second = embed_images(image_set, model, tmp_path / "emb", **kwargs)
    ref = _reference(model, image_set, np.arange(7), Preprocessing.for_image_size(28))
    assert not np.allclose(first_x[4], ref[4])  # (the image did change)
    np.testing.assert_array_equal(second.rows, np.arange(7))
    np.testing.assert_allclose(second.embeddings.to_numpy(), ref, atol=1e-5)  # every row matches today's file
    after = {p.name: p.stat().st_mtime_ns for p in shards}
    assert after["shard-00001.arrow"] != before["shard-00001.arrow"]
    assert {k: v for k, v in after.items() if k != "shard-00001.arrow"} == {
        k: v for k, v in before.items() if k != "shard-00001.arrow"}  # the unchanged shards were not rewritten
    assert (first.shards_computed, first.embeddings_computed, first.embeddings_reused) == (3, 7, 0)
    assert (second.shards_computed, second.embeddings_computed, second.embeddings_reused) == (1, 3, 4)
    third = embed_images(image_set, model, tmp_path / "emb", **kwargs)
    assert (third.shards_computed, third.embeddings_computed, third.embeddings_reused) == (0, 0, 7)


def test_a_changed_file_whose_name_is_not_utf8_is_embedded_again(tmp_path):
    """Its bytes are carried in the dataset; the list of files, not those bytes, names the input set."""
    import os

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(4)
    odd = os.path.join(os.fsencode(folder), b"odd\xff.png")
    for path in (folder / "a.png", folder / "b.png", odd):
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(path, format="PNG")
    kwargs = dict(shard_size=2, storage_dtype="float32", precision="float32", progress=False)
    embed_images(load_image_set(str(folder), "pool"), "pixels:8", tmp_path / "emb", **kwargs)
    new_pixels = rng.integers(0, 255, (8, 8), dtype=np.uint8)
    Image.fromarray(new_pixels).save(odd, format="PNG")
    res = embed_images(load_image_set(str(folder), "pool"), "pixels:8", tmp_path / "emb", **kwargs)
    assert (res.shards_computed, res.embeddings_computed, res.embeddings_reused) == (1, 1, 2)
    # the stored row is the thumbnail of the new pixels (up to the scale of the input normalisation)
    expected = new_pixels.astype(np.float64).ravel() - new_pixels.mean()
    stored = res.embeddings.to_numpy()[2].astype(np.float64)
    assert stored @ expected / np.linalg.norm(stored) / np.linalg.norm(expected) > 0.9999
