"""DDP under torchrun on CPU (gloo, 2 processes): same loss trajectory as one process; one writer."""

import json
from pathlib import Path

import pytest
from transformers import AutoModelForSequenceClassification

from tasks.core import models, train
from tests.conftest import make_tiny_model


@pytest.fixture(scope="module")
def no_dropout_model(tmp_path_factory) -> Path:
    """Dropout off: with dropout each rank draws its own masks, so trajectories agree only statistically."""
    d = make_tiny_model(tmp_path_factory.mktemp("nodrop") / "m", num_labels=5)
    m = AutoModelForSequenceClassification.from_pretrained(d)
    m.config.hidden_dropout_prob = m.config.attention_probs_dropout_prob = 0.0
    m.save_pretrained(d, safe_serialization=True)
    return d


def _fine_tune(model_dir, data, work, nproc):
    model_cfg = {"source": str(model_dir), "max_length": 48, "trust_remote_code": False, "revision": None}
    train_cfg = {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "weight_decay": 0.01, "warmup_ratio": 0.0,
                 "max_grad_norm": 1.0, "checkpoint_every": 3, "max_steps": 6, "device": "cpu", "nproc_per_node": nproc}
    return train.fine_tune(model_cfg, train_cfg, data, 0, str(work))


@pytest.mark.integration
def test_ddp_two_processes_match_one_process(no_dropout_model, bbc_slice, tmp_path):
    one = _fine_tune(no_dropout_model, bbc_slice, tmp_path / "one", 1)
    two = _fine_tune(no_dropout_model, bbc_slice, tmp_path / "two", 2)
    l1 = [v for _, v in one["losses"]]
    l2 = [v for _, v in two["losses"]]
    assert len(l1) == len(l2) == 6
    assert len(set(l1)) > 1  # the weights move
    for a, b in zip(l1, l2):
        assert abs(a - b) <= 1e-3 * max(1.0, abs(a)), (l1, l2)
    # rank 0 alone wrote the model; it loads and its manifest says 2 processes trained it
    manifest = models.read_manifest(two["model_dir"])
    assert manifest["train"]["processes"] == 2
    log = (tmp_path / "two" / "ddp.log").read_text()
    assert "gloo" in log or json.loads((tmp_path / "two" / "ddp-result.json").read_text())["model_dir"]
    models.load_hf_model(two["model_dir"], manifest)


def test_failed_distributed_job_says_why(bbc_slice, tmp_path):
    with pytest.raises(RuntimeError, match="torchrun exit"):
        _fine_tune(tmp_path / "no-such-model", bbc_slice, tmp_path / "w", 2)


@pytest.mark.integration
def test_distillation_runs_under_ddp(no_dropout_model, bbc_slice, tmp_path):
    from tasks.compress import registry as compress

    teacher = _fine_tune(no_dropout_model, bbc_slice, tmp_path / "teacher", 1)["model_dir"]
    train_cfg = {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "weight_decay": 0.0, "warmup_ratio": 0.0,
                 "max_grad_norm": 1.0, "checkpoint_every": 50, "max_steps": None, "device": "cpu", "nproc_per_node": 2}
    out = compress.run_step(teacher, {"technique": "distill", "keep": 1, "finetune": {"max_steps": 3}},
                            {"data": bbc_slice, "train": train_cfg, "seed": 0}, str(tmp_path / "student"))
    manifest = models.read_manifest(out)
    assert manifest["train"]["processes"] == 2 and manifest["train"]["steps"] == 3
    assert models.load_hf_model(out, manifest).config.num_hidden_layers == 1
