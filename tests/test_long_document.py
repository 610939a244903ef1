"""Case study 2 on tiny models: mechanisms, HF Longformer equivalence, summarization pieces, the flow end to end."""

import pytest
import torch
from mlflow import MlflowClient

from tasks.core import models
from tasks.longdoc import longify, mechanisms, scaling_probe, summarize
from tests.conftest import make_tiny_model

LONG = {"max_positions": 2048, "attention_window": 32, "max_tokens": 2048}


@pytest.fixture(scope="module")
def tiny_cls(tmp_path_factory):
    src = make_tiny_model(tmp_path_factory.mktemp("lt") / "m", num_labels=3)
    m = models.load_classifier(str(src), ["a", "b", "c"])
    return models.save_hf(m, models.load_tokenizer(str(src)), tmp_path_factory.mktemp("lt2") / "cls", labels=["a", "b", "c"], max_length=64)


def test_hf_longformer_conversion_matches_our_sliding_window(tiny_cls):
    """Our attention reproduces Hugging Face Longformer's pattern on the same weights (window 16 each side)."""
    ours = longify.longify(tiny_cls, 2048, 32, "sliding")
    hf = mechanisms.to_hf_longformer(tiny_cls, 2048, 32)
    ids = torch.randint(1000, 5000, (1, 150))
    ids[0, 0] = 101
    mask = torch.ones_like(ids)
    glob = torch.zeros_like(ids)
    glob[0, 0] = 1
    with torch.no_grad():
        a = ours(ids, mask)
        b = hf(input_ids=ids, attention_mask=mask, global_attention_mask=glob).logits
    assert torch.allclose(a, b, atol=1e-4), (a, b)


@pytest.mark.parametrize("mech", ["truncate-512", "chunked-512", "sliding-window", "full-long", "hf-longformer", "bigbird"])
def test_each_mechanism_classifies_a_long_document(tiny_cls, mech):
    run, _ = mechanisms.classifier_for(mech, tiny_cls, LONG)
    with torch.no_grad():
        out = run("word " * 1300)
    assert out.shape == (1, 3) and torch.isfinite(out).all()


@pytest.mark.parametrize("mech", ["full-long", "sliding-window", "hf-longformer", "chunked-512", "bigbird"])
def test_each_mechanism_forward_for_scaling(tiny_cls, mech):
    fn = scaling_probe.build(mech, 1024, 64, tiny_cls)
    with torch.no_grad():
        assert torch.isfinite(fn()).all()


def test_bucketed_evaluation(tiny_cls):
    texts = ["short text"] * 2 + ["word " * 700] * 2 + ["word " * 1500]
    res = mechanisms.evaluate_by_length("sliding-window", tiny_cls, texts, [0, 1, 2, 0, 1], ["a", "b", "c"], LONG, [512, 1024])
    m = res["metrics"]
    assert m["eval/num_docs_len_0_512"] == 2 and m["eval/num_docs_len_512_1024"] == 2 and m["eval/num_docs_len_1024_plus"] == 1
    assert "eval/macro_f1_len_gt_1024" in m and 0 <= m["eval/macro_f1"] <= 1


def test_oracle_labels_hand_made():
    sents = ["The cat sat on the mat.", "Rain is expected in the north.", "Stocks fell sharply today."]
    # both halves of the reference are needed; the unrelated sentence would only lower F1
    assert summarize.oracle_labels(sents, "The cat sat on the mat. Stocks fell sharply.", 3) == [1, 0, 1]
    # one sentence covers the reference: adding more lowers precision, so greedy stops
    assert summarize.oracle_labels(sents, "Stocks fell sharply.", 3) == [0, 0, 1]
    assert summarize.oracle_labels(sents, "The cat sat on the mat. Stocks fell sharply.", 1) == [1, 0, 0]


def test_rouge_wiring_and_baselines():
    assert summarize.rouge("the cat sat", "the cat sat") == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    assert summarize.rouge("dogs bark", "the cat sat")["rouge1"] == 0.0
    sents = ["Alpha beta gamma.", "Beta gamma delta.", "Unrelated words here.", "Gamma delta alpha beta."]
    assert summarize.lead_k(sents, 2) == [0, 1]
    tr = summarize.textrank(sents, 2)
    assert len(tr) == 2 and 2 not in tr


def test_sentence_splitting():
    assert summarize.split_glued("Profits rose.The firm said so.Shares fell 3%.") == ["Profits rose.", "The firm said so.", "Shares fell 3%."]
    assert summarize.split_sentences("One here. Two there!\nThree.") == ["One here.", "Two there!", "Three."]


def test_bbc_summary_layout_loader(tmp_path):
    for sub in ("articles/tech", "summaries/tech"):
        (tmp_path / sub).mkdir(parents=True)
    (tmp_path / "articles/tech/001.txt").write_text("Headline\n\nFirst sentence here. Second one follows.")
    (tmp_path / "summaries/tech/001.txt").write_text("First sentence here.Second one follows.")
    (tmp_path / "articles/tech/002.txt").write_bytes("Caf\xe9\n\nLatin one. Two.".encode("latin-1"))
    (tmp_path / "summaries/tech/002.txt").write_text("Latin one.")
    docs = summarize.load_bbc_summary(tmp_path)
    assert docs[0]["summary"] == "First sentence here. Second one follows."
    assert docs[1]["text"].startswith("Latin one")


def test_abstractive_with_tiny_led(tmp_path, bbc_slice):
    from transformers import LEDConfig, LEDForConditionalGeneration

    tok = models.load_tokenizer("packaged:minilm-l6")
    cfg = LEDConfig(vocab_size=tok.vocab_size, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                    decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_encoder_position_embeddings=1024,
                    max_decoder_position_embeddings=64, attention_window=[32], pad_token_id=0, bos_token_id=101,
                    eos_token_id=102, decoder_start_token_id=101)
    LEDForConditionalGeneration(cfg).save_pretrained(tmp_path / "led")
    tok.save_pretrained(tmp_path / "led")
    docs = [{"text": "Shares rose. Profits beat forecasts.", "summary": "Shares rose."}] * 2
    res = summarize.abstractive(str(tmp_path / "led"), docs, {"max_new_tokens": 5, "num_beams": 1})
    assert res["metrics"]["eval/num_docs"] == 2 and 0 <= res["metrics"]["eval/rouge1"] <= 1


@pytest.mark.integration
def test_long_document_flow_end_to_end(tiny_cls, tiny_model_dir, mlflow_uri, tmp_path):
    from flows.long_document import long_document

    sets = [f"model.source={tiny_model_dir}", "model.max_length=64", f"output_dir={tmp_path / 'out'}", "data.max_samples=80",
            "train.max_steps=2", "train.batch_size=8", "long.max_positions=2048", "long.max_tokens=2048",
            "long.attention_window=64", "evaluate.max_docs=8", "scaling.lengths=[256, 1024]",
            "scaling.mechanisms=[full-long, sliding-window, hf-longformer]", "scaling.iters=1",
            "summarize.data.max_docs=24", "summarize.max_tokens=256", "summarize.k_values=[1, 2]"]
    res = long_document(profile="quick", overrides=sets)
    client = MlflowClient(mlflow_uri)
    runs = {r.data.tags["variant"]: r for r in client.search_runs(
        [client.get_experiment_by_name("effilm/long-document").experiment_id])}
    assert {"parent", "truncate-512", "chunked-512", "sliding-window", "full-long", "hf-longformer",
            "lead-k", "textrank", "extractive-long"} <= set(runs)
    assert all(r.info.status == "FINISHED" for r in runs.values())
    sw = runs["sliding-window"].data.metrics
    assert {"eval/macro_f1", "eval/num_docs_len_0_512", "bench/latency_ms_L1024", "bench/peak_rss_mb_L256"} <= set(sw)
    assert "bench/latency_ms_L1024" in runs["hf-longformer"].data.metrics
    assert "eval/rouge2" in runs["extractive-long"].data.metrics
    art = {a.path for a in client.list_artifacts(runs["parent"].info.run_id, "scaling")}
    assert {"scaling/scaling_time.png", "scaling/scaling_memory.png"} <= art
    assert "Classification by document length" in open(res["report"]["markdown"]).read()
