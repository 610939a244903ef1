import json
import shutil
from pathlib import Path

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
    import pandas as pd
    import torch
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
    )
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    res = train.fine_tune(model_cfg(tiny_model_dir), TRAIN, bbc_slice, 0, str(tmp_path / "w"))
    ev = evaluate.evaluate(res["model_dir"], bbc_slice, {"batch_size": 16}, str(tmp_path / "ev"), "tiny")
    m = ev["metrics"]
    labels = bbc_slice["labels"]
    test = pd.read_parquet(bbc_slice["paths"]["test"])
    y_true = [labels.index(l) for l in test["label"]]
    y_pred = np.load(ev["artifacts"]["predictions"])
    assert m["eval/num_samples"] == bbc_slice["stats"]["test"] == len(y_true) == len(y_pred)

    # the saved predictions are the model's: an independent forward pass (plain transformers, one text at a time, no
    # padding) gives each predicted class the top logit (up to float noise between batched and unbatched runs)
    tok = AutoTokenizer.from_pretrained(res["model_dir"])
    hf = AutoModelForSequenceClassification.from_pretrained(res["model_dir"]).eval()
    with torch.no_grad():
        logits = torch.cat([hf(**tok(t, truncation=True, max_length=64, return_tensors="pt")).logits
                            for t in test["text"]]).numpy()
    assert np.all(logits[np.arange(len(y_pred)), y_pred] >= logits.max(axis=1) - 1e-4), (logits, y_pred)

    # the metrics are those of the saved predictions, recomputed with scikit-learn
    ids = list(range(len(labels)))
    assert m["eval/accuracy"] == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
    assert m["eval/macro_f1"] == pytest.approx(f1_score(y_true, y_pred, labels=ids, average="macro", zero_division=0),
                                               abs=1e-12)
    p, r, f, sup = precision_recall_fscore_support(y_true, y_pred, labels=ids, zero_division=0)
    per_class = json.load(open(ev["artifacts"]["per_class"]))
    assert list(per_class) == labels
    for i, lab in enumerate(labels):
        assert per_class[lab] == pytest.approx({"precision": p[i], "recall": r[i], "f1": f[i], "support": sup[i]}), lab
        assert m[f"eval/f1_{lab}"] == pytest.approx(f[i], abs=1e-12), lab
    cm = confusion_matrix(y_true, y_pred, labels=ids)
    assert np.trace(cm) / cm.sum() == pytest.approx(m["eval/accuracy"], abs=1e-12)

    # pinned (run twice on this machine, identical): tiny BERT (conftest.make_tiny_model, seed 0), bbc_slice
    # (100 samples, seed 0: 21 test documents), TRAIN (6 steps, lr 5e-3, batch 8, max_length 64, seed 0). Six steps
    # leave the model predicting 'entertainment' for every document: 3 of 21 are entertainment, so accuracy 3/21
    # and macro-F1 = F1(entertainment)/5 = (2 * 3/21 * 1 / (3/21 + 1)) / 5 = 0.25 / 5 = 0.05.
    assert m["eval/accuracy"] == pytest.approx(3 / 21, abs=1e-4)
    assert m["eval/macro_f1"] == pytest.approx(0.05, abs=1e-4)
    assert y_pred.tolist() == [labels.index("entertainment")] * 21
    assert open(ev["artifacts"]["confusion_matrix"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


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
    # size on disk is the weight file's bytes (the saved model is a single safetensors file)
    assert m["size/disk_mb"] == pytest.approx(
        sum(p.stat().st_size for p in Path(res["model_dir"]).glob("*.safetensors")) / 1e6, abs=1e-3)


def test_benchmark_failure_is_reported(tmp_path, bbc_slice):
    with pytest.raises(RuntimeError, match="benchmark of .* failed"):
        benchmark.benchmark(str(tmp_path), bbc_slice["paths"]["test"],
                            {"seq_len": 8, "batch_sizes": [1], "threads": [1], "warmup": 0, "iters": 3, "max_seconds": 1},
                            str(tmp_path / "b"))
