"""Shared fixtures: offline, isolated MLflow/Prefect state, one session-scoped Prefect test harness, tiny models."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_SESSION_TMP = Path(tempfile.mkdtemp(prefix="effilm-tests-"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(_SESSION_TMP / "prefect-results")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{_SESSION_TMP / 'mlflow.db'}")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session", autouse=True)
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch) -> str:
    """A fresh embedded MLflow store per test."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def make_tiny_model(path: Path, num_labels: int = 2, layers: int = 2, hidden: int = 32, heads: int = 2) -> Path:
    """A random BERT classifier (hidden 32, 2 layers) with the packaged MiniLM tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from tasks.core.models import resolve_source

    tok = AutoTokenizer.from_pretrained(resolve_source("packaged:minilm-l6"))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=hidden * 2, max_position_embeddings=512, num_labels=num_labels)
    torch.manual_seed(0)
    model = BertForSequenceClassification(cfg)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    return make_tiny_model(_SESSION_TMP / "tiny-bert")


@pytest.fixture(scope="session")
def bbc_slice(tmp_path_factory) -> dict:
    """A small stratified slice of the packaged BBC corpus, prepared exactly like the flow does."""
    from tasks.core import data

    cfg = {"source": "bbc", "path": None, "text_field": "text", "label_field": "label", "hf_config": None,
           "hf_split": "train", "max_samples": 100, "val_fraction": 0.1, "test_fraction": 0.2}
    return data.prepare(cfg, 0, tmp_path_factory.mktemp("bbc"))
