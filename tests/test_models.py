import pytest
import torch

from tasks.core import models
from tasks.core.config import ConfigError
from tasks.measure import runtimes


def test_packaged_minilm_loads_as_classifier():
    path = models.resolve_source("packaged:minilm-l6")
    assert path.endswith("model")
    tok = models.load_tokenizer("packaged:minilm-l6")
    model = models.load_classifier("packaged:minilm-l6", ["a", "b", "c"])
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    assert 22_000_000 < models.count_params(model) < 23_000_000
    enc = models.encode(tok, ["hello world"], 16)
    with torch.no_grad():
        assert model(**enc).logits.shape == (1, 3)


def test_tiny_local_model_roundtrip(tiny_model_dir, tmp_path):
    tok = models.load_tokenizer(str(tiny_model_dir))
    model = models.load_classifier(str(tiny_model_dir), ["neg", "pos"])
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 2
    out = models.save_hf(model, tok, tmp_path / "m", labels=["neg", "pos"], max_length=32)
    assert not (tmp_path / "m.partial").exists()
    run, tok2, manifest = runtimes.load_for_inference(out)
    assert manifest["format"] == "hf" and manifest["labels"] == ["neg", "pos"]
    enc = models.encode(tok2, ["a test"], 32)
    assert run(enc["input_ids"], enc["attention_mask"]).shape == (1, 2)
    assert models.disk_size_mb(out) > 0.1


def test_offline_hub_id_error_names_default():
    with pytest.raises(ConfigError) as exc:
        models.load_classifier("someone/not-cached-model", ["a", "b"])
    assert "model.source" in str(exc.value) and "packaged:minilm-l6" in str(exc.value)


def test_unknown_packaged_and_missing_local():
    with pytest.raises(ConfigError, match="unknown packaged model"):
        models.resolve_source("packaged:nope")
    with pytest.raises(ConfigError, match="local model folder not found"):
        models.resolve_source("./no/such/folder")
