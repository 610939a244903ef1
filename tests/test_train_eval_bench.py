import json
import shutil

import numpy as np
import pytest

from tasks.core import models, train
from tasks.measure import benchmark, evaluate

TRAIN = {"epochs": 1, "batch_size": 8, "learning_rate": 5e-3, "weight_decay": 0.0, "warmup_ratio": 0.0,
         "max_grad_norm": 1.0, "checkpoint_every": 2, "max_steps": 6, "device": "cpu"}


def model_cfg(tiny_model_dir):
    return {"source": str(tiny_model_dir), "max_length": 64, "trust_remote_code": False, "revision": None}


def test_fine_tune_learns_and_saves(tiny_model_dir, bbc_slice, tmp_path):
    res = train.fine_tune(model_cfg(tiny_model_dir), {**TRAIN, "max_steps": 12}, bbc_slice, 0, str(tmp_path / "w"))
    assert res["steps"] == 12 and not res["reused"]
    first, last = np.mean([l for _, l in res["losses"][:3]]), np.mean([l for _, l in res["losses"][-3:]])
    assert last < first, (first, last)
    manifest = models.read_manifest(res["model_dir"])
    assert manifest["labels"] == bbc_slice["labels"] and manifest["train"]["steps"] == 12
    assert not (tmp_path / "w" / "checkpoint").exists()
    again = train.fine_tune(model_cfg(tiny_model_dir), {**TRAIN, "max_steps": 12}, bbc_slice, 0, str(tmp_path / "w"))
    assert again["reused"] and again["model_dir"] == res["model_dir"]


def test_resume_from_checkpoint_matches_uninterrupted(tiny_model_dir, bbc_slice, tmp_path):
    """An interrupted run resumes from its checkpoint and ends where an uninterrupted run ends."""
    full = train.fine_tune(model_cfg(tiny_model_dir), TRAIN, bbc_slice, 0, str(tmp_path / "full"))
    # interrupted after 4 steps: checkpoint at step 4 stays behind
    tok = models.load_tokenizer(str(tiny_model_dir))
    train.set_seed(0)  # as fine_tune does before building the model
    m = models.load_classifier(str(tiny_model_dir), bbc_slice["labels"])
    import pandas as pd

    tr = pd.read_parquet(bbc_slice["paths"]["train"])
    ids = [bbc_slice["labels"].index(l) for l in tr["label"]]
    work = tmp_path / "killed"
    train.train_loop(m, tok, tr["text"].tolist(), ids, {**TRAIN, "max_steps": 6, "checkpoint_every": 4}, 0, 64, work)
    assert (work / "checkpoint" / train.STATE_FILE).is_file()
    shutil.rmtree(work / "checkpoint.old", ignore_errors=True)
    resumed = train.fine_tune(model_cfg(tiny_model_dir), TRAIN, bbc_slice, 0, str(work))
    assert resumed["resumed_from_step"] == 4 and resumed["steps"] == 6
    assert resumed["losses"][-1][1] == pytest.approx(full["losses"][-1][1], rel=1e-4, abs=1e-5)


def test_evaluate_metrics_and_confusion_png(tiny_model_dir, bbc_slice, tmp_path):
    res = train.fine_tune(model_cfg(tiny_model_dir), TRAIN, bbc_slice, 0, str(tmp_path / "w"))
    ev = evaluate.evaluate(res["model_dir"], bbc_slice, {"batch_size": 16}, str(tmp_path / "ev"), "tiny")
    m = ev["metrics"]
    assert 0.0 <= m["eval/accuracy"] <= 1.0 and 0.0 <= m["eval/macro_f1"] <= 1.0
    assert m["eval/num_samples"] == bbc_slice["stats"]["test"]
    assert open(ev["artifacts"]["confusion_matrix"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    per_class = json.load(open(ev["artifacts"]["per_class"]))
    assert set(per_class) == set(bbc_slice["labels"])


def test_classification_metrics_known_values():
    m, per_class, cm = evaluate.classification_metrics([0, 0, 1, 1], [0, 1, 1, 1], ["a", "b"])
    assert m["eval/accuracy"] == 0.75
    assert per_class["a"]["precision"] == 1.0 and per_class["a"]["recall"] == 0.5
    assert cm.tolist() == [[1, 1], [0, 2]]


def test_benchmark_child_process(tiny_model_dir, bbc_slice, tmp_path):
    res = train.fine_tune(model_cfg(tiny_model_dir), {**TRAIN, "max_steps": 1}, bbc_slice, 0, str(tmp_path / "w"))
    cfg = {"seq_len": 32, "batch_sizes": [1, 4], "threads": [1, "all"], "warmup": 1, "iters": 5, "max_seconds": 2}
    out = benchmark.benchmark(res["model_dir"], bbc_slice["paths"]["test"], cfg, str(tmp_path / "b"))
    m = out["metrics"]
    for key in ("bench/latency_ms_p50_b1_t1", "bench/latency_ms_p95_b1_t1", "bench/latency_ms_p50_b4_tall",
                "bench/throughput_b4", "bench/peak_rss_mb", "size/disk_mb", "size/params"):
        assert key in m, key
    assert m["bench/latency_ms_p95_b1_t1"] >= m["bench/latency_ms_p50_b1_t1"] > 0
    assert m["size/params"] == models.count_params(models.load_classifier(res["model_dir"], bbc_slice["labels"]))
    assert 50 < m["bench/peak_rss_mb"] < 4000


def test_benchmark_failure_is_reported(tmp_path, bbc_slice):
    with pytest.raises(RuntimeError, match="benchmark of .* failed"):
        benchmark.benchmark(str(tmp_path), bbc_slice["paths"]["test"],
                            {"seq_len": 8, "batch_sizes": [1], "threads": [1], "warmup": 0, "iters": 3, "max_seconds": 1},
                            str(tmp_path / "b"))
