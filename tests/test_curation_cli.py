"""`dinov2-curate` on bad settings and on output directories that hold results (issue 21 items 5 and 9).

The images are tiny random tiles embedded as `pixels:8` thumbnails, so a whole run takes about a second.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("faiss")

from PIL import Image  # noqa: E402

from curation.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pool")
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return folder


def _config(tmp_path, pool, extra: str = "") -> str:
    path = tmp_path / "curate.yaml"
    path.write_text(f"pool: {pool}\noutput_dir: {tmp_path / 'out'}\nprogress: false\n"
                    f"embedding: {{model: 'pixels:8'}}\nclustering: {{n_clusters: [3]}}\n{extra}")
    return str(path)


def _error_line(capsys, argv) -> tuple:
    """(exit code, stderr) of a run that must stop with an error."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr().err


# (YAML lines or --set values, what the one-line error must say)
BAD_CONFIGS = {
    "wrong type": ("dedup: {threshold: abc}\n", "dedup.threshold must be a number in [-1, 1]; received 'abc'"),
    "threshold out of range": ("decontamination: {threshold: 1.5}\n",
                               "decontamination.threshold must be a number in [-1, 1]; received 1.5"),
    "zero neighbours": ("dedup: {k: 0}\n", "dedup.k must be an integer >= 1; received 0"),
    "not a flag": ("dedup: {enabled: maybe}\n", "dedup.enabled must be true or false; received 'maybe'"),
    "unknown key": ("dedup: {treshold: 0.5}\n", "unknown setting 'dedup.treshold' (did you mean 'dedup.threshold'?)"),
    "unknown section": ("dedupe: {threshold: 0.5}\n", "unknown setting 'dedupe' (did you mean 'dedup'?)"),
    "unknown pooling": ("embedding: {model: 'pixels:8', pooling: max}\n",
                        "embedding.pooling must be one of 'cls', 'mean', 'cls+mean'; received 'max'"),
    "unknown model": ("embedding: {model: /no/such/model}\n",
                      "embedding.model: cannot load '/no/such/model' (/no/such/model: no such folder); it must be a "
                      "checkpoint folder, a Hub id, a TorchScript file or 'pixels:N'"),
    "missing eval folder": ("eval_sets: {test: /no/such/folder}\n",
                            "eval_sets: test: /no/such/folder does not exist"),
    "sampling without clustering": ("sampling: {target_size: 5}\nclustering: {enabled: false}\n",
                                    "balanced sampling (sampling.target_size or target_fraction) needs "
                                    "clustering.enabled: true"),
}
BAD_COMMAND_LINES = {
    "--set wrong type": (["--set", "sampling.target_size=many"],
                         "sampling.target_size must be null or an integer >= 1; received 'many'"),
    "--set out of range": (["--set", "sampling.target_fraction=2"],
                           "sampling.target_fraction must be in (0, sampling.multiplier = 1]; received 2"),
    "--set unknown key": (["--set", "index.nprobes=4", "--set", "dedup.k=8"],  # a second --set adds to the first
                          "unknown setting 'index.nprobes' (did you mean 'index.nprobe'?)"),
    "--set missing pool": (["--set", "pool=/no/such/folder"], "pool: /no/such/folder does not exist"),
    "--set not KEY=VALUE": (["--set", "dedup.threshold"], "--set expects KEY=VALUE"),
}
BAD_STEP_OPTIONS = {
    "dedup --threshold out of range": (["dedup", "--threshold", "3"], 2,
                                       "--threshold must be a number in [-1, 1]; received 3.0"),
    "dedup --threshold not a number": (["dedup", "--threshold", "abc"], 2,
                                       "argument --threshold: invalid float value: 'abc'"),
    "embed --pooling unknown": (["embed", "--pooling", "max"], 2, "argument --pooling: invalid choice: 'max'"),
    "dedup unknown option": (["dedup", "--treshold", "0.5"], 2, "unknown option(s) --treshold 0.5"),
    "embed missing input folder": (["embed", "--input", "/no/such/folder"], 1,
                             "--input: pool: /no/such/folder does not exist"),
    "dedup missing embeddings": (["dedup", "--embeddings", "/no/such/folder"], 1,
                           "--embeddings: /no/such/folder is not an embedding directory"),
}


@pytest.mark.parametrize("case", [*BAD_CONFIGS, *BAD_COMMAND_LINES, *BAD_STEP_OPTIONS])
def test_a_bad_setting_stops_with_one_line_naming_it(case, pool, tmp_path, capsys):
    """Issue 21 item 9: no traceback; one line on stderr that names the setting and the values it may hold."""
    if case in BAD_CONFIGS:
        extra, expected = BAD_CONFIGS[case]
        argv, code = ["run", "--config", _config(tmp_path, pool, extra)], 1
    elif case in BAD_COMMAND_LINES:
        options, expected = BAD_COMMAND_LINES[case]
        argv, code = ["run", "--config", _config(tmp_path, pool), *options], 1
    else:
        options, code, expected = BAD_STEP_OPTIONS[case]
        defaults = {"embed": ["--input", str(pool), "--model", "pixels:8", "--output_dir", str(tmp_path / "emb")],
                    "dedup": ["--embeddings", str(tmp_path / "emb"), "--output_dir", str(tmp_path / "dd")]}
        argv = [options[0], *defaults[options[0]], *options[1:]]
    exit_code, err = _error_line(capsys, argv)
    assert exit_code == code
    assert err.startswith("dinov2-curate: error: ") and err.count("\n") == 1, err
    assert expected in err, err
    assert not (tmp_path / "out" / "report.json").exists()


def test_an_output_directory_with_results_or_a_running_job_is_refused(pool, tmp_path, capsys, monkeypatch):
    """Issue 21 item 5: a second run into a finished output is refused unless --overwrite true; a running job
    holds its directory; an interrupted run resumes without the flag."""
    import json
    import os

    from curation import pipeline

    out = tmp_path / "out"
    config = _config(tmp_path, pool)
    main(["run", "--config", config])
    before = {name: (out / name).read_bytes() for name in ("report.json", "removal_log.parquet")}

    # another threshold into the same folder: refused, and nothing of the first run changes
    code, err = _error_line(capsys, ["run", "--config", config, "--set", "dedup.threshold=-0.5"])
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(f"dinov2-curate: error: {out} already holds the results of an earlier run (dataset, "
                          "report.json, removal_log.parquet, cluster_sizes.png). Pass --overwrite true"), err
    assert {name: (out / name).read_bytes() for name in before} == before
    report = json.loads(before["report.json"])
    assert report["output_rows"] == 12 and report["embeddings"]["model"]["pool"] == {"computed": 12, "reused": 0}
    # with the flag it replaces them, reusing the embeddings (same model, same files)
    main(["run", "--config", config, "--set", "dedup.threshold=-0.5", "--overwrite", "true"])
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["dedup"]["threshold"] == -0.5 and report["output_rows"] == 1
    assert report["embeddings"]["model"]["pool"] == {"computed": 0, "reused": 12}

    # a running job holds its folder: a second job started meanwhile is refused, naming the holder's PID
    second = {}
    real_deduplicate = pipeline.deduplicate

    def second_job_while_deduplicating(*args, **kwargs):
        second["exit"] = _error_line(capsys, ["run", "--config", config, "--overwrite", "true"])
        return real_deduplicate(*args, **kwargs)

    monkeypatch.setattr(pipeline, "deduplicate", second_job_while_deduplicating)
    main(["run", "--config", config, "--overwrite", "true"])
    code, err = second["exit"]
    assert code == 1 and err.startswith(f"dinov2-curate: error: {out} is in use by PID {os.getpid()}"), err
    assert json.loads((out / "report.json").read_text())["output_rows"] == 12  # the first job finished

    # an interrupted run (embeddings on disk, no results yet) resumes without the flag
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    (tmp_path / "second").mkdir()
    fresh = _config(tmp_path / "second", pool)
    monkeypatch.setattr(pipeline, "deduplicate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(["run", "--config", fresh])
    assert not (tmp_path / "second" / "out" / "report.json").exists()
    monkeypatch.setattr(pipeline, "deduplicate", real_deduplicate)
    main(["run", "--config", fresh])
    report = json.loads((tmp_path / "second" / "out" / "report.json").read_text())
    assert report["embeddings"]["model"]["pool"] == {"computed": 0, "reused": 12}

    # single steps: their own files are results too
    emb = str(tmp_path / "second" / "out" / "embeddings" / "pool")
    main(["dedup", "--embeddings", emb, "--output_dir", str(tmp_path / "dd"), "--threshold", "0.9", "--k", "8"])
    code, err = _error_line(capsys, ["dedup", "--embeddings", emb, "--output_dir", str(tmp_path / "dd")])
    assert code == 1 and "dd already holds the results of an earlier run (kept.npy, components.npy" in err
    main(["dedup", "--embeddings", emb, "--output_dir", str(tmp_path / "dd"), "--threshold", "0.5", "--k", "8",
          "--overwrite", "true"])
    assert json.loads((tmp_path / "dd" / "result.json").read_text())["threshold"] == 0.5
    code, err = _error_line(capsys, ["embed", "--input", str(pool), "--model", "pixels:4", "--output_dir", emb])
    assert code == 1 and "holds embeddings made with other settings (different model" in err
    assert "Pass --overwrite true" in err


def test_a_run_that_removes_every_image_writes_an_empty_dataset_and_the_log(pool, tmp_path, capsys):
    """The pool is its own evaluation set: decontamination removes every image. The run ends normally with an
    empty curated set, and the removal log says why for each image."""
    import json

    import pandas as pd

    capsys.readouterr()
    main(["run", "--config", _config(tmp_path, pool, f"eval_sets: {{same: {pool}}}\n")])
    assert json.loads(capsys.readouterr().out)["counts"]["output_rows"] == 0
    log = pd.read_parquet(tmp_path / "out" / "removal_log.parquet")
    assert len(log[log["set"] == "pool"]) == 12 and log["reason"].str.startswith("eval").all()
    assert (tmp_path / "out" / "dataset").is_dir()
