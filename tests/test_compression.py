"""Each compression technique on tiny random BERTs (hidden 32, 2 layers): same shape, real effect, still runs."""

import numpy as np
import pandas as pd
import pytest
import torch

from tasks.compress import distill, layers, prune, quantize
from tasks.compress import registry as compress
from tasks.core import models, preprocess, train
from tasks.measure import evaluate, runtimes
from tests.conftest import make_tiny_model

TRAIN = {"epochs": 1, "batch_size": 8, "learning_rate": 3e-3, "weight_decay": 0.0, "warmup_ratio": 0.0,
         "max_grad_norm": 1.0, "checkpoint_every": 100, "max_steps": 8, "device": "cpu"}


@pytest.fixture(scope="module")
def trained(tiny_model_dir, bbc_slice, tmp_path_factory):
    """A tiny classifier fine-tuned briefly on the BBC slice (4 layers, so layer reduction has room)."""
    src = make_tiny_model(tmp_path_factory.mktemp("tiny4") / "m", num_labels=5, layers=4, hidden=32, heads=4)
    mc = {"source": str(src), "max_length": 64, "trust_remote_code": False, "revision": None}
    return train.fine_tune(mc, {**TRAIN, "max_steps": 20}, bbc_slice, 0, str(tmp_path_factory.mktemp("teacher")))["model_dir"]


def apply(source, technique, bbc_slice, out, **settings):
    """One step through the technique registry, exactly as the flow runs it (settings validated by its schema)."""
    return compress.run_step(source, {"technique": technique, **settings}, {"data": bbc_slice, "train": TRAIN, "seed": 0},
                             str(out))


def sample_texts(bbc_slice, n=24):
    return pd.read_parquet(bbc_slice["paths"]["test"])["text"].tolist()[:n]


def logits(model_dir, texts):
    run, tok, manifest = runtimes.load_for_inference(model_dir)
    enc = models.encode(tok, preprocess.normalize(texts, manifest.get("preprocess")), manifest.get("max_length", 64))
    with torch.inference_mode():
        return run(enc["input_ids"], enc["attention_mask"]).float()


def test_every_technique_has_the_same_shape():
    import inspect
    from typing import get_args

    from tasks.core.config import Step

    schemas = {get_args(c.model_fields["technique"].annotation)[0]: c for c in get_args(get_args(Step)[0])}
    assert set(schemas) == set(compress.TECHNIQUES)  # every configurable technique is registered, and only those
    for name, fn in compress.TECHNIQUES.items():
        sig = inspect.signature(fn)
        assert list(sig.parameters) == ["model_dir", "step", "ctx"], (name, list(sig.parameters))
        assert sig.parameters["step"].annotation in (schemas[name].__name__, schemas[name]), name  # its own typed step


def test_quantize_int8_agrees_with_fp32_and_is_smaller(trained, bbc_slice, tmp_path):
    texts = sample_texts(bbc_slice)
    ref = logits(trained, texts)
    lin = apply(trained, "quantize", bbc_slice, tmp_path / "q", embeddings=False)
    emb = apply(trained, "quantize", bbc_slice, tmp_path / "qe", embeddings=True)
    assert models.read_manifest(lin)["format"] == "int8"
    got, got_e = logits(lin, texts), logits(emb, texts)
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.9
    assert (got_e.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.9
    assert torch.allclose(got, ref, atol=0.15)
    # embeddings are most of a tiny BERT: int8 tables cut the file by ~4x
    assert models.disk_size_mb(emb) < 0.35 * models.disk_size_mb(trained)
    run, _, _ = runtimes.load_for_inference(emb)
    assert isinstance(run.model.bert.embeddings.word_embeddings, quantize.Int8Embedding)
    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in run.model.modules())


def test_quantize_per_channel_roundtrip():
    w = torch.randn(16, 8)
    q, s = quantize.quantize_per_channel(w)
    assert q.dtype == torch.int8 and s.shape == (16,)
    assert torch.allclose(q.float() * s[:, None], w, atol=float(s.max()) / 2 + 1e-6)


def test_unstructured_pruning_is_permanent_and_stored_sparse(trained, bbc_slice, tmp_path):
    out = apply(trained, "prune_unstructured", bbc_slice, tmp_path / "p70", sparsity=0.7)
    manifest = models.read_manifest(out)
    assert manifest["format"] == "hf-sparse" and abs(manifest["sparsity"] - 0.7) < 0.01
    run, _, _ = runtimes.load_for_inference(out)
    ws = [m.weight for _, m in prune.encoder_linears(run.model)]
    zeros = sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)
    assert abs(zeros - 0.7) < 0.01
    assert not any("weight_orig" in n or "weight_mask" in n for n, _ in run.model.named_buffers())
    # the sparse file is smaller than the dense encoder would be
    enc_bytes = sum(w.numel() * 4 for w in ws)
    stored = models.disk_size_mb(out) * 1e6
    assert stored < models.disk_size_mb(trained) * 1e6 - 0.5 * enc_bytes
    assert logits(out, sample_texts(bbc_slice, 4)).shape == (4, 5)


def test_structured_pruning_removes_parameters_and_runs(trained, bbc_slice, tmp_path):
    before = models.count_params(models.load_hf_model(trained))
    out = apply(trained, "prune_structured", bbc_slice, tmp_path / "ps", ffn_fraction=0.5, heads_fraction=0.5,
                importance="gradient", calibration_batches=2, recovery={"max_steps": 2})
    manifest = models.read_manifest(out)
    assert manifest["structure"] == [{"heads": 2, "intermediate": 32}] * 4
    model = models.load_hf_model(out)
    assert models.count_params(model) < before
    layer = model.bert.encoder.layer[0]
    assert layer.intermediate.dense.weight.shape == (32, 32) and layer.attention.self.query.weight.shape == (16, 32)
    texts = sample_texts(bbc_slice, 6)
    out_logits = logits(out, texts)
    assert out_logits.shape == (6, 5) and torch.isfinite(out_logits).all()
    # pruned structure survives quantization and ONNX export
    q = apply(out, "quantize", bbc_slice, tmp_path / "psq", embeddings=True)
    assert torch.allclose(logits(q, texts), out_logits, atol=0.2)
    exported = apply(out, "export", bbc_slice, tmp_path / "pso", format="onnx")  # the [CLS]-row block, heads pruned
    assert torch.allclose(logits(exported, texts), out_logits, atol=1e-4)


def test_weight_importance_keeps_the_largest_neurons(trained):
    model = models.load_hf_model(trained)
    scores = prune.importance(model, "weight")
    top = torch.topk(scores[0]["ffn"], 32).indices.sort().values
    w_in = model.bert.encoder.layer[0].intermediate.dense.weight[top].clone()
    prune.prune_structure(model, scores, 0.5, 0.0)
    assert torch.equal(model.bert.encoder.layer[0].intermediate.dense.weight, w_in)


def test_layer_reduction(trained, bbc_slice, tmp_path):
    assert layers.keep_indices(6, "every_other") == [0, 2, 4]
    assert layers.keep_indices(6, 3) == [0, 2, 4]
    with pytest.raises(ValueError):
        layers.keep_indices(4, [0, 7])
    out = apply(trained, "layer_reduce", bbc_slice, tmp_path / "l2", keep="every_other", finetune={"max_steps": 2})
    model = models.load_hf_model(out)
    assert model.config.num_hidden_layers == 2 and len(model.bert.encoder.layer) == 2
    assert models.read_manifest(out)["kept_layers"] == [0, 2]


def test_distillation_loss_decreases(trained, bbc_slice, tmp_path):
    teacher = models.load_hf_model(trained)
    student = models.load_hf_model(trained)
    layer_map = layers.drop_layers(student, 1)
    tok = models.load_tokenizer(trained)
    df = pd.read_parquet(bbc_slice["paths"]["train"])
    labels = models.read_manifest(trained)["labels"]
    loss_fn = distill.make_loss(teacher, 2.0, 0.5, 1.0, layer_map)
    stats = train.train_loop(student, tok, df["text"].tolist(), [labels.index(l) for l in df["label"]],
                             {**TRAIN, "max_steps": 30, "learning_rate": 5e-3}, 0, 64, tmp_path / "w", loss_fn=loss_fn)
    losses = [l for _, l in stats["losses"]]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    # the KD term is zero when student == teacher logits and alpha=1
    z = torch.randn(4, 5)
    assert distill.kd_loss(z, z, torch.zeros(4, dtype=torch.long), 2.0, 1.0).abs() < 1e-6


def test_distill_compress_step(trained, bbc_slice, tmp_path):
    out = compress.run_step(trained, {"technique": "distill", "keep": 2, "temperature": 2.0, "alpha": 0.5, "hidden_mse": 1.0,
                                      "finetune": {"max_steps": 3}},
                            {"data": bbc_slice, "train": TRAIN, "seed": 0}, str(tmp_path / "d"))
    assert models.load_hf_model(out).config.num_hidden_layers == 2
    assert len(models.read_manifest(out)["loss_curve"]) == 3


def test_vocab_trim_keeps_tokenization_and_outputs(trained, bbc_slice, tmp_path):
    out = apply(trained, "vocab_trim", bbc_slice, tmp_path / "v")
    manifest = models.read_manifest(out)
    assert manifest["vocab_after"] < manifest["vocab_before"]
    old_tok, new_tok = models.load_tokenizer(trained), models.load_tokenizer(out)
    train_texts = pd.read_parquet(bbc_slice["paths"]["train"])["text"].tolist()[:10]
    for t in train_texts:
        a = old_tok.convert_ids_to_tokens(old_tok(t)["input_ids"])
        b = new_tok.convert_ids_to_tokens(new_tok(t)["input_ids"])
        assert a == b
    assert torch.allclose(logits(out, train_texts), logits(trained, train_texts), atol=1e-5)
    assert models.disk_size_mb(out) < models.disk_size_mb(trained)


def test_onnx_export_matches_eager(trained, bbc_slice, tmp_path):
    texts = sample_texts(bbc_slice, 8)
    ref = logits(trained, texts)
    fp32 = apply(trained, "export", bbc_slice, tmp_path / "o", format="onnx")
    assert torch.allclose(logits(fp32, texts), ref, atol=1e-4)
    q = apply(trained, "export", bbc_slice, tmp_path / "o8", format="onnx", quantize="int8")
    assert (logits(q, texts).argmax(-1) == ref.argmax(-1)).float().mean() >= 0.75
    assert not (tmp_path / "o8.partial").exists()


def test_export_graph_computes_the_last_layer_for_the_cls_row_alone(trained):
    from tasks.compress.export import ClassifierGraph, cls_row_of_layer

    model = models.load_hf_model(trained)
    assert ClassifierGraph(model).cls_row_only  # BERT layers and pooler: the shortcut applies
    layer = model.bert.encoder.layer[-1]
    torch.manual_seed(0)
    h = torch.randn(3, 11, 32)
    keep = torch.ones(3, 11)
    keep[1, 7:] = 0  # a padded row: its keys must stay masked
    mask = (1.0 - keep[:, None, None, :]) * -10000.0
    with torch.inference_mode():
        assert torch.allclose(cls_row_of_layer(layer, h, mask), layer(h, mask)[:, :1], atol=1e-5)
        assert not torch.allclose(cls_row_of_layer(layer, h, torch.zeros_like(mask))[1], layer(h, mask)[1, :1], atol=1e-3)


def test_executorch_export_matches_eager(trained, bbc_slice, tmp_path):
    pytest.importorskip("executorch")
    texts = sample_texts(bbc_slice, 4)
    run, tok, _ = runtimes.load_for_inference(trained)
    enc = models.encode(tok, texts, 64, pad_to_max=True)
    with torch.inference_mode():
        ref = run(enc["input_ids"], enc["attention_mask"])
    out = apply(trained, "export", bbc_slice, tmp_path / "pte", format="pte", seq_len=64)
    assert (tmp_path / "pte" / "model.pte").stat().st_size > 0
    prun, _, manifest = runtimes.load_for_inference(out)
    assert manifest["format"] == "pte" and prun.batch_sizes == [1]
    got = prun(enc["input_ids"], enc["attention_mask"])
    assert torch.allclose(got, ref, atol=1e-4)
    q = apply(trained, "export", bbc_slice, tmp_path / "pte8", format="pte", seq_len=64, quantize="int8")
    q_run, _, _ = runtimes.load_for_inference(q)
    assert (q_run(enc["input_ids"], enc["attention_mask"]).argmax(-1) == ref.argmax(-1)).float().mean() >= 0.75


def test_lightweight_architecture_stand_in(bbc_slice, trained, tmp_path):
    """A tiny local DistilBERT stands in for distilbert-base-uncased / MobileBERT / TinyBERT from the Hub."""
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    tok = models.load_tokenizer("packaged:minilm-l6")
    cfg = DistilBertConfig(vocab_size=tok.vocab_size, dim=32, n_layers=2, n_heads=2, hidden_dim=64)
    path = tmp_path / "tiny-distilbert"
    DistilBertForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    out = compress.run_step(trained, {"technique": "architecture", "model": str(path), "finetune": {"max_steps": 2}},
                            {"data": bbc_slice, "train": TRAIN, "seed": 0}, str(tmp_path / "arch"))
    assert models.load_hf_model(out).config.model_type == "distilbert"
    assert logits(out, sample_texts(bbc_slice, 3)).shape == (3, 5)


def test_preprocess_and_augment():
    assert preprocess.normalize(["The Cat, sat!"], {"lowercase": True, "strip_punctuation": True, "remove_stopwords": True}) == ["cat sat"]
    texts, labels = preprocess.augment(["a b c d e f g h i j"], [1], {"copies": 2, "insert": 0.2, "swap": 0.2, "delete": 0.1}, 0)
    assert len(texts) == 3 and labels == [1, 1, 1] and texts[1] != texts[0]
    assert preprocess.augment(["a b"], [0], None) == (["a b"], [0])


def test_evaluate_reports_token_counts(trained, bbc_slice, tmp_path):
    ev = evaluate.evaluate(trained, bbc_slice, {"batch_size": 16}, str(tmp_path / "e"))
    assert ev["metrics"]["eval/mean_tokens"] > 64 and 0 < ev["metrics"]["eval/truncated_fraction"] <= 1
