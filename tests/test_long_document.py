"""Case study 2 on tiny models: mechanisms, HF Longformer equivalence, summarization pieces, the flow end to end."""

from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from sklearn.metrics import accuracy_score, f1_score
from transformers import AutoTokenizer

from tasks.core import models
from tasks.core.config import SummarizeConfig
from tasks.longdoc import attention, longify, mechanisms, scaling_probe, summarize
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
    fn, backend = scaling_probe.build(mech, 1024, 64, tiny_cls)
    with torch.no_grad():
        assert torch.isfinite(fn()).all()
    # the row names the implementation that ran: at 1,024 tokens on CPU the blocked band (dense only while one
    # block's band covers the input)
    assert backend() == {"full-long": "sdpa-full", "sliding-window": "blocked", "hf-longformer": "hf",
                         "chunked-512": "sdpa", "bigbird": "hf"}[mech]


def test_bucketed_evaluation(tiny_cls):
    texts = ["short text"] * 2 + ["word " * 700] * 2 + ["word " * 1500]
    res = mechanisms.evaluate_by_length("sliding-window", tiny_cls, texts, [0, 1, 2, 0, 1], ["a", "b", "c"], LONG, [512, 1024])
    m = res["metrics"]
    # which attention implementation served each document on CPU: dense while one block's band covers it (4 tokens),
    # blocked above (702 and 1,502 tokens)
    assert attention.BLOCK_QUERIES + LONG["attention_window"] < 702
    assert m["eval/num_docs_attention_dense"] == 2 and m["eval/num_docs_attention_blocked"] == 3
    assert m["eval/num_docs_len_0_512"] == 2 and m["eval/num_docs_len_512_1024"] == 2 and m["eval/num_docs_len_1024_plus"] == 1
    # lengths are untruncated token counts with [CLS]/[SEP], counted here with the model's own tokenizer
    tok = AutoTokenizer.from_pretrained(tiny_cls)
    assert res["lengths"] == [len(tok(t)["input_ids"]) for t in texts] == [4, 4, 702, 702, 1502]
    # every metric is what scikit-learn gives on the returned predictions: overall over every label, in a bucket
    # over the labels that occur there (true or predicted)
    y, p, ids = [0, 1, 2, 0, 1], res["predictions"], [0, 1, 2]
    assert m["eval/num_docs"] == len(p) == 5
    assert m["eval/accuracy"] == pytest.approx(accuracy_score(y, p), abs=1e-12)
    assert m["eval/macro_f1"] == pytest.approx(f1_score(y, p, labels=ids, average="macro", zero_division=0), abs=1e-12)
    for name, sel in {"0_512": [0, 1], "512_1024": [2, 3], "1024_plus": [4]}.items():
        ys, ps = [y[i] for i in sel], [p[i] for i in sel]
        assert m[f"eval/accuracy_len_{name}"] == pytest.approx(accuracy_score(ys, ps), abs=1e-12), name
        assert m[f"eval/macro_f1_len_{name}"] == pytest.approx(
            f1_score(ys, ps, labels=sorted(set(ys) | set(ps)), average="macro", zero_division=0), abs=1e-12), name
    assert m["eval/macro_f1_len_gt_1024"] == pytest.approx(f1_score([y[4]], [p[4]], average="macro",
                                                                    zero_division=0), abs=1e-12)
    # pinned (run twice on this machine, identical): tiny_cls (random 3-label BERT from make_tiny_model, seed 0,
    # hidden 32), sliding-window, LONG (window 32, 2048 positions). The random head favours class 0 for all five
    # texts (logit margin ~0.009), so accuracy 2/5 and macro-F1 = F1(class 0)/3 = (2 * 2/5 * 1 / (2/5 + 1)) / 3 = 4/21.
    assert p == [0, 0, 0, 0, 0]
    assert m["eval/accuracy"] == pytest.approx(2 / 5, abs=1e-4)
    assert m["eval/macro_f1"] == pytest.approx(4 / 21, abs=1e-4)


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
    from rouge_score import rouge_scorer
    from transformers import (
        AutoModelForSeq2SeqLM,
        LEDConfig,
        LEDForConditionalGeneration,
    )

    tok = models.load_tokenizer("packaged:minilm-l6")
    cfg = LEDConfig(vocab_size=tok.vocab_size, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                    decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_encoder_position_embeddings=1024,
                    max_decoder_position_embeddings=64, attention_window=[32], pad_token_id=0, bos_token_id=101,
                    eos_token_id=102, decoder_start_token_id=101)
    torch.manual_seed(0)  # the random LED's weights, hence its (greedy) summaries, are fixed
    LEDForConditionalGeneration(cfg).save_pretrained(tmp_path / "led")
    tok.save_pretrained(tmp_path / "led")
    # special tokens suppressed: otherwise the random model emits only [CLS] and every summary decodes to ""
    generation = {"max_new_tokens": 5, "num_beams": 1, "suppress_tokens": tok.all_special_ids}

    # the same generation done here with plain transformers, to build references with a known overlap
    led = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "led").eval()
    texts = ["Shares rose. Profits beat forecasts.", "The minister resigned after the vote."]
    outs = []
    with torch.no_grad():
        for text in texts:
            enc = tok(text, return_tensors="pt")
            enc.pop("token_type_ids")
            glob = torch.zeros_like(enc["input_ids"])
            glob[0, 0] = 1
            outs.append(tok.decode(led.generate(**enc, global_attention_mask=glob, **generation)[0], skip_special_tokens=True))
    # doc 0's reference is its own summary (ROUGE 1); doc 1's shares only the first generated word
    docs = [{"text": texts[0], "summary": outs[0]}, {"text": texts[1], "summary": outs[1].split()[0] + " shares rose"}]
    res = summarize.abstractive(str(tmp_path / "led"), docs, generation)
    m = res["metrics"]
    assert m["eval/num_docs"] == 2
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    scores = [scorer.score(d["summary"], o) for d, o in zip(docs, outs)]
    for key in ("rouge1", "rouge2", "rougeL"):
        assert m[f"eval/{key}"] == pytest.approx(np.mean([s[key].fmeasure for s in scores]), abs=1e-12), key
    assert m["eval/summary_words"] == pytest.approx(np.mean([len(o.split()) for o in outs]), abs=1e-12)
    # pinned (run twice on this machine, identical): the seed-0 LED above greedily writes "198 198 198 198 198" for
    # both texts. Doc 0: ROUGE 1/1/1. Doc 1 vs "198 shares rose": 1 shared unigram, P 1/5, R 1/3, F 0.25; no shared
    # bigram; LCS 1, so ROUGE-L 0.25. Means: rouge1 0.625, rouge2 0.5, rougeL 0.625; 5 words per summary.
    assert outs == ["198 198 198 198 198"] * 2
    assert m["eval/rouge1"] == pytest.approx(0.625, abs=1e-4)
    assert m["eval/rouge2"] == pytest.approx(0.5, abs=1e-4)
    assert m["eval/rougeL"] == pytest.approx(0.625, abs=1e-4)
    assert m["eval/summary_words"] == pytest.approx(5.0, abs=1e-4)


@pytest.mark.integration
def test_long_document_flow_end_to_end(tiny_cls, tiny_model_dir, mlflow_uri, tmp_path):
    from flows.long_document import long_document

    sets = [f"model.source={tiny_model_dir}", "model.max_length=64", f"output_dir={tmp_path / 'out'}", "data.max_samples=80",
            "train.max_steps=2", "train.batch_size=4", "train.max_tokens=600", "train.chunk_tokens=64",
            "long.max_positions=2048", "long.max_tokens=2048",
            "long.attention_window=64", "evaluate.max_docs=8", "scaling.lengths=[256, 1024]",
            "scaling.mechanisms=[full-long, sliding-window, hf-longformer]", "scaling.iters=1",
            "summarize.data.max_docs=24", "summarize.max_tokens=256", "summarize.k_values=[1, 2]"]
    res = long_document(profile="quick", overrides=sets)
    client = MlflowClient(mlflow_uri)
    runs = {r.data.tags["variant"]: r for r in client.search_runs(
        [client.get_experiment_by_name("effilm/long-document").experiment_id])}
    assert {"parent", "truncate-512", "chunked-512", "hierarchical", "sliding-window", "full-long", "hf-longformer",
            "tfidf-first512", "tfidf-whole", "lead-k", "textrank", "extractive-long"} <= set(runs)
    assert all(r.info.status == "FINISHED" for r in runs.values())
    sw = runs["sliding-window"].data.metrics
    assert {"eval/macro_f1", "eval/num_docs_len_0_512", "bench/latency_ms_L1024", "bench/peak_rss_mb_L256"} <= set(sw)
    # every trained mechanism: the same number of optimizer steps, recorded; the conversions are not trained
    assert {runs[m].data.metrics["train/steps"] for m in ("truncate-512", "chunked-512", "hierarchical",
                                                           "sliding-window", "full-long")} == {2.0}
    assert "train/steps" not in runs["hf-longformer"].data.metrics
    # the packaged KEPs are the default data: 14 classes, real long documents in the test slice
    assert sw["eval/num_docs"] == 8 and "eval/macro_f1_len_gt_2048" in sw
    # the majority baseline beside every mechanism; a degenerate one is tagged (the rule: test_degenerate_...)
    assert 0 < sw["eval/majority_accuracy"] < 1
    flagged = [m for m, r in runs.items() if r.data.tags.get("effilm.degenerate") == "true"]
    assert flagged == [m for m, r in runs.items() if r.data.metrics.get("eval/degenerate") == 1.0]
    assert runs["tfidf-whole"].data.params["C"]
    assert "bench/latency_ms_L1024" in runs["hf-longformer"].data.metrics
    assert "eval/rouge2" in runs["extractive-long"].data.metrics
    # every summarizer beside the test score: its validation ROUGE-2 at the budget chosen there (lines variants up)
    assert all(0 <= runs[m].data.metrics["val/rouge2"] <= 1 for m in ("lead-k", "textrank", "extractive-long"))
    art = {a.path for a in client.list_artifacts(runs["parent"].info.run_id, "scaling")}
    assert {"scaling/scaling_time.png", "scaling/scaling_memory.png"} <= art
    report = open(res["report"]["markdown"]).read()
    assert "Classification by document length" in report and "majority class (baseline)" in report
    assert ("DEGENERATE" in report) == bool(flagged)


def test_degenerate_models_are_flagged_beside_the_majority_baseline():
    labels, names = [0, 0, 0, 1, 2, 0], ["a", "b", "c"]
    lengths = [100, 600, 3000, 5000, 200, 800]
    one_class = mechanisms.score_by_length([0] * 6, labels, lengths, names, [512, 1024], majority=0)
    assert one_class["eval/degenerate"] == 1.0 and one_class["eval/distinct_predictions"] == 1
    assert one_class["eval/majority_accuracy"] == pytest.approx(4 / 6) == one_class["eval/accuracy"]
    good = mechanisms.score_by_length(labels, labels, lengths, names, [512, 1024], majority=0)
    assert good["eval/degenerate"] == 0.0 and good["eval/macro_f1"] == 1.0
    assert good["eval/num_docs_len_1024_plus"] == 2 and good["eval/macro_f1_len_gt_2048"] == 1.0
    # two classes predicted, yet no better than always answering the majority class on macro-F1
    worse = mechanisms.score_by_length([1, 1, 0, 0, 0, 0], labels, lengths, names, [512], majority=0)
    assert worse["eval/distinct_predictions"] == 2
    assert worse["eval/macro_f1"] <= worse["eval/majority_macro_f1"] and worse["eval/degenerate"] == 1.0


def test_keps_are_packaged_with_their_own_split(tmp_path):
    from tasks.core import data

    info = data.prepare({"source": "keps"}, 0, tmp_path)
    assert info["stats"]["train"] == 430 and info["stats"]["val"] == 65 and info["stats"]["test"] == 123
    assert len(info["labels"]) == 14 and "sig-node" in info["labels"]
    test = data.load_split(info["paths"]["test"])
    assert test["text"].str.split().str.len().median() > 1500  # real long documents
    small = data.prepare({"source": "keps", "max_samples": 120}, 0, tmp_path)
    assert small["stats"]["test"] < 40 and data.load_split(small["paths"]["train"])["label"].nunique() == 14
    assert (data.KEPS_DIR / "LICENSE").is_file() and "Apache License" in (data.KEPS_DIR / "LICENSE").read_text()
    docs, where = summarize.load_docs(SummarizeConfig(data={"source": "keps"}))
    assert len(docs) == 605 and all(d["summary"].strip() for d in docs) and where.startswith("keps")


@pytest.mark.parametrize("mech", ["truncate-512", "chunked-512", "hierarchical", "sliding-window", "full-long"])
def test_each_mechanism_trains_for_what_it_does(tiny_cls, bbc_slice, tmp_path, mech):
    """Same steps for each; chunked trains on chunks (more samples per epoch, not more steps); the long models on
    long inputs, saved as a long folder that loads back with every weight and classifies."""
    from tasks.core.config import LongConfig, LongTrainConfig, ModelConfig
    from tasks.longdoc import train_long

    cfg = LongTrainConfig(max_steps=3, batch_size=2, max_tokens=300, chunk_tokens=64, device="cpu")
    res = train_long.train_mechanism(mech, ModelConfig(source=tiny_cls), LongConfig(**LONG), cfg, bbc_slice, 0,
                                     str(tmp_path / "w"))
    assert res["steps"] == 3 and not res["reused"]
    assert 0 <= res["probe_val_macro_f1"] <= 1 and "train/probe_val_macro_f1" in train_long.metrics(res)  # LP-FT head
    assert longify.is_long(res["model_dir"]) == (mech in ("sliding-window", "full-long"))
    run, _ = mechanisms.classifier_for(mech, res["model_dir"], LONG)
    with torch.no_grad():
        assert run("word " * 900).shape == (1, len(bbc_slice["labels"]))
    if mech in ("truncate-512", "chunked-512"):  # classified at the length it was trained at (chunk_tokens 64)
        model, seen = models.load_hf_model(res["model_dir"]), []
        model.register_forward_pre_hook(lambda m, a, kw: seen.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
        run, _ = mechanisms.classifier_for(mech, res["model_dir"], LONG, model=model)
        with torch.no_grad():
            run("word " * 900)  # 900 tokens (+ [CLS], [SEP])
        assert seen == ([(1, 64)] if mech == "truncate-512" else [(15, 64)])  # ceil(900 / 62) chunks of 62 + 2
        assert mechanisms.trained_chunk_tokens(tiny_cls) == 512  # a folder not trained by train_long: 512
    again = train_long.train_mechanism(mech, ModelConfig(source=tiny_cls), LongConfig(**LONG), cfg, bbc_slice, 0,
                                       str(tmp_path / "w"))
    assert again["reused"] and again["model_dir"] == res["model_dir"]
    if longify.is_long(res["model_dir"]):  # every trained weight comes back (global projections included)
        loaded = longify.load_long(res["model_dir"])
        assert loaded.max_positions == 2048 and loaded.layers[0].attention.self.query_global.weight.shape[0] > 0


def test_chunks_are_substrings_carrying_the_label(tiny_cls):
    from tasks.longdoc import train_long

    tok = AutoTokenizer.from_pretrained(tiny_cls)
    text = " ".join(f"w{i}" for i in range(500))
    texts, labels = train_long.chunk_texts(tok, [text, "short one"], [2, 1], 66, 10**6)
    assert all(t in text for t in texts[:-1]) and texts[-1] == "short one"
    assert labels == [2] * (len(texts) - 1) + [1] and len(texts) > 3
    assert max(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts) <= 64
    w = train_long.class_weights([0, 0, 0, 1], 3)
    assert w[1] > w[0] and w[2] == 1.0


@pytest.mark.parametrize("name", ["tfidf-first512", "tfidf-whole", "embed-chunks", "hybrid"])
def test_every_peer_chooses_by_cross_validation(name, bbc_slice, tiny_cls):
    """Every peer through the same checks: C (and the hybrid's share) from its grid by 5-fold CV on train + validation,
    one prediction per test document, the table's metric keys; the encoder's chunk embeddings cached beside the data."""
    from tasks.core import data as data_mod
    from tasks.core.config import LongConfig, LongEvalConfig, ModelConfig
    from tasks.longdoc import classic

    res = classic.evaluate(name, bbc_slice, ModelConfig(source=tiny_cls), LongEvalConfig(buckets=[512]),
                           LongConfig(max_tokens=300, device="cpu"))
    m, p = res["metrics"], res["params"]
    n_test = len(data_mod.load_split(bbc_slice["paths"]["test"]))
    assert len(res["predictions"]) == n_test and set(res["predictions"]) <= set(range(len(bbc_slice["labels"])))
    assert p["cv_folds"] == 5 and 0 <= p["cv_macro_f1"] <= 1
    assert all(p[k] in classic.C_GRID for k in p if k.startswith("C"))
    assert ("embed_share" in p) == (name == "hybrid") and p.get("embed_share", 0.25) in classic.EMBED_SHARES
    assert {"eval/accuracy", "eval/macro_f1", "eval/majority_accuracy", "eval/seconds_per_doc"} <= set(m)
    if name.startswith("tfidf"):
        assert m["eval/accuracy"] > m["eval/majority_accuracy"]  # a bag of words beats the majority class on BBC
    if name in ("embed-chunks", "hybrid"):  # one file per split, the second peer reuses the first's
        assert len(list(Path(bbc_slice["dir"]).glob("chunk-embeddings-*.npy"))) == 3


def test_chunk_embeddings_are_the_mean_of_each_documents_chunks(tiny_cls):
    """Batched across documents, sorted by length and padded, each document's vector is still the mean of its own
    chunks' normalised mean-pooled states — computed one chunk at a time here."""
    from tasks.core.config import ModelConfig
    from tasks.longdoc import classic

    tok = AutoTokenizer.from_pretrained(tiny_cls)
    cfg = ModelConfig(source=tiny_cls)
    words = [w for w in tok.get_vocab() if w.isalpha() and w.islower()][:200]  # whole words: decode round-trips
    texts = [" ".join(words[(7 * i) % len(words)] for i in range(n)) for n in (5, 600, 260)]
    together = classic.chunk_embeddings(cfg, texts, 10_000, torch.device("cpu"))
    body = classic.EMBED_CHUNK - 2
    for text, vec in zip(texts, together):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        parts = [tok.decode(ids[j:j + body]) for j in range(0, len(ids), body)]
        alone = np.mean([classic.chunk_embeddings(cfg, [t], body, torch.device("cpu"))[0] for t in parts], axis=0)
        assert len(parts) >= 1 and np.allclose(vec, alone, atol=1e-5)
    capped = classic.chunk_embeddings(cfg, texts[1:2], body, torch.device("cpu"))  # max_tokens: the first chunk only
    first = classic.chunk_embeddings(cfg, [tok.decode(tok(texts[1], add_special_tokens=False)["input_ids"][:body])],
                                     10_000, torch.device("cpu"))
    assert np.allclose(capped, first, atol=1e-5)


def test_peers_without_enough_documents_per_class_use_defaults():
    from tasks.longdoc import classic

    rng = np.random.default_rng(0)
    x, x_test = rng.normal(size=(9, 4)), rng.normal(size=(3, 4))
    preds, params = classic.fit_predict({"embed": (x, x_test)}, [0, 0, 0, 0, 1, 1, 1, 1, 2], 3)
    assert params["C"] == 1.0 and params["cv_folds"] == 0 and np.isnan(params["cv_macro_f1"]) and len(preds) == 3
    texts = (["alpha beta", "gamma delta"] * 6, ["alpha gamma"])
    _, params = classic.fit_predict({"tfidf": texts, "embed": (rng.normal(size=(12, 4)), x_test[:1])}, [0, 1] * 6, 2)
    assert params["cv_folds"] == 5 and params["embed_share"] in classic.EMBED_SHARES and "C_tfidf" in params


def test_first_tokens_cuts_at_a_token_boundary(tiny_cls):
    from tasks.longdoc import classic

    assert classic.first_tokens(AutoTokenizer.from_pretrained(tiny_cls), ["a b c d e f g h"], 3) == ["a b c"]


def test_hierarchical_chunks_a_document_and_round_trips(tiny_cls, tmp_path):
    """Chunks of chunk_tokens led by [CLS], only the ones holding tokens encoded; a one-chunk document's vector is
    the encoder's own [CLS]; a saved model loads back with every weight (same logits)."""
    from tasks.longdoc import hierarchical

    model = hierarchical.from_classifier(models.load_hf_model(tiny_cls), 3, chunk_tokens=64, max_tokens=300).eval()
    assert model.max_chunks == 5  # ceil(299 / 63)
    ids = torch.randint(1000, 5000, (2, 151))
    ids[:, 0] = 101
    mask = torch.ones_like(ids)
    mask[1, 40:] = 0  # the second document is 40 tokens long: one chunk
    chunk_ids, chunk_mask, present = model.chunks(ids, mask)
    assert chunk_ids.shape == (2 * 3, 64) and (chunk_ids[:, 0] == 101).all()
    assert present.tolist() == [[True, True, True], [True, False, False]]
    assert torch.equal(chunk_ids[1, 1:], ids[0, 64:127])  # the second chunk continues where the first stopped
    with torch.no_grad():
        alone = model.encoder(input_ids=ids[1:, :40], attention_mask=mask[1:, :40]).last_hidden_state[:, 0]
        inside = model.encoder(input_ids=chunk_ids[3:4], attention_mask=chunk_mask[3:4]).last_hidden_state[:, 0]
        assert torch.allclose(alone, inside, atol=1e-5)
        real = present.reshape(-1)  # full and partial chunks encoded apart, each cut to its width: same vectors
        padded = model.encoder(input_ids=chunk_ids[real], attention_mask=chunk_mask[real]).last_hidden_state[:, 0]
        assert torch.allclose(model.encode_chunks(chunk_ids[real], chunk_mask[real]), padded, atol=1e-5)
        logits = model(ids, mask)
    assert logits.shape == (2, 3)
    tok = models.load_tokenizer(tiny_cls)
    folder = hierarchical.save(model, tok, tmp_path / "h", labels=["a", "b", "c"])
    assert hierarchical.is_hierarchical(folder) and not longify.is_long(folder)
    with torch.no_grad():
        assert torch.allclose(hierarchical.load(folder)(ids, mask), logits, atol=1e-6)


def test_hierarchical_round_trips_a_roberta_encoder(tiny_cls, tmp_path):
    """RoBERTa's sequence classifier keeps no pooler in its base model: the saved model still loads back exactly."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    from tasks.longdoc import hierarchical

    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=6000, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=130, num_labels=3)
    model = hierarchical.from_classifier(RobertaForSequenceClassification(cfg), 3, chunk_tokens=64, max_tokens=200)
    ids = torch.randint(1000, 5000, (1, 150))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        logits = model.eval()(ids, mask)
    folder = hierarchical.save(model, models.load_tokenizer(tiny_cls), tmp_path / "h", labels=["a", "b", "c"])
    with torch.no_grad():
        assert torch.allclose(hierarchical.load(folder)(ids, mask), logits, atol=1e-6)


def test_training_keeps_the_epoch_that_scored_best_on_validation(tiny_cls, bbc_slice, tmp_path):
    """train_loop restores the weights of the best score_fn call; train_long scores validation macro-F1 per epoch,
    and the saved model is the chosen epoch's (its validation score is the recorded best)."""
    from tasks.core.config import LongConfig, LongTrainConfig, ModelConfig
    from tasks.core.train import train_loop
    from tasks.longdoc import train_long

    model = models.load_classifier(tiny_cls, ["a", "b", "c"])
    tok = models.load_tokenizer(tiny_cls)
    seen = []

    def score(m):  # the first epoch "wins": its weights must come back, not the last epoch's
        seen.append({k: v.clone() for k, v in m.state_dict().items()})
        return 1.0 if len(seen) == 1 else 0.0

    stats = train_loop(model, tok, ["some text here"] * 8, [0, 1, 2, 0, 1, 2, 0, 1],
                       {"epochs": 3, "batch_size": 4, "learning_rate": 1e-2, "device": "cpu"}, 0, 32,
                       tmp_path / "loop", score_fn=score)
    assert len(seen) == 3 and stats["best_epoch"] == 1.0 and [e for e, _ in stats["val_scores"]] == [1.0, 2.0, 3.0]
    assert all(torch.equal(v, seen[0][k]) for k, v in model.state_dict().items())
    assert not all(torch.equal(v, seen[-1][k]) for k, v in model.state_dict().items())
    start = {k: v.clone() for k, v in model.state_dict().items()}  # score_at_start: the untrained model may win
    seen.clear()
    stats = train_loop(model, tok, ["some text here"] * 8, [0, 1, 2, 0, 1, 2, 0, 1],
                       {"epochs": 2, "batch_size": 4, "learning_rate": 1e-2, "device": "cpu"}, 0, 32,
                       tmp_path / "loop0", score_fn=score, score_at_start=True)
    assert [e for e, _ in stats["val_scores"]] == [0.0, 1.0, 2.0] and stats["best_epoch"] == 0.0
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())

    cfg = LongTrainConfig(epochs=2, batch_size=16, max_tokens=128, chunk_tokens=64, device="cpu")
    res = train_long.train_mechanism("truncate-512", ModelConfig(source=tiny_cls), LongConfig(**LONG), cfg,
                                     bbc_slice, 0, str(tmp_path / "w"))
    assert res["best_epoch"] in (0.0, 1.0, 2.0) and [e for e, _ in res["val_scores"]] == [0.0, 1.0, 2.0]  # 0: probe
    scorer = train_long.validation_scorer("truncate-512", tiny_cls, LongConfig(**LONG), bbc_slice, 64)
    assert scorer(models.load_hf_model(res["model_dir"])) == pytest.approx(res["best_val_score"])
    assert train_long.metrics(res)["train/best_val_macro_f1"] == res["best_val_score"]


def test_length_budget_centroid_and_oracle_order():
    sents = ["one two three four five.", "six seven.", "eight nine ten eleven.", "twelve."]
    assert summarize.within_budget(sents, [0, 2, 1, 3], 8) == [0, 1, 3]  # 5 + 2 + 1 words; the 4-word one is skipped
    assert summarize.within_budget(sents, [2, 0], 1) == [2]  # the top sentence always, even over the budget
    c = summarize.centroid_scores(["Markets fell on rate fears.", "Markets fell again.", "The cat sat."])
    assert c.argmax() in (0, 1) and c[2] == c.min()
    sents = ["The cat sat on the mat.", "Rain is expected in the north.", "Stocks fell sharply today."]
    order = summarize._oracle_order(sents, "Stocks fell sharply. The cat sat on the mat.")
    assert sorted(order) == [0, 1, 2] and set(order[:2]) == {0, 2} and order[2] == 1


@pytest.mark.parametrize("global_markers,loss", [(False, "bce"), (True, "bce"), (True, "pairwise"), (True, "listwise")],
                         ids=["first-marker-global", "every-marker-global", "pairwise-loss", "listwise-loss"])
def test_extractive_scorer_learns_which_sentence_the_reference_takes(tiny_cls, global_markers, loss):
    """The long encoder trained on oracle labels: documents whose reference is always the sentence that names a
    zebra, wherever it stands. Untrained, the scorer ranks it first about as often as chance; trained (warm head, then
    end-to-end epochs, the best state on validation kept), far more often on unseen documents — with global attention
    on the first marker or on every one (summarize.scorer.global_markers: training then backpropagates through one
    global row and column per sentence), trained with each loss (summarize.scorer.loss)."""
    import random

    from tasks.core.config import ScorerConfig

    rng = random.Random(0)
    filler = ["The committee met on Tuesday.", "Sales were flat in March.", "Officials gave no details.",
              "The report runs to forty pages.", "Weather delayed the work."]

    def doc():
        sents = rng.sample(filler, 4)
        pos = rng.randrange(5)
        sents.insert(pos, "A zebra escaped from the zoo.")
        return sents, pos

    tok = models.load_tokenizer(tiny_cls)
    scorer = summarize.SentenceScorer(longify.longify(tiny_cls, 2048, 32, "sliding"), torch.device("cpu"),
                                      global_markers)
    val, test = [doc() for _ in range(10)], [doc() for _ in range(30)]

    def hits(docs):
        return sum(int(np.argmax(scorer.scores(tok, s, 512)) == pos) for s, pos in docs)

    before = hits(test)
    examples = []
    for _ in range(40):
        s, pos = doc()
        ids, marks = summarize.marked(tok, s, 512)
        examples.append((ids, marks, [int(i == pos) for i in range(len(s))]))
    stats = scorer.train(examples, ScorerConfig(epochs=2, learning_rate=1e-4, loss=loss), seed=0,
                         validate=lambda: hits(val))
    after = hits(test)
    assert stats["steps"] == 80 and stats["oracle_positive_rate"] == pytest.approx(0.2)
    assert [e for e, _ in stats["val_scores"]] == [0.0, 1.0, 2.0] and stats["best_epoch"] in (0.0, 1.0, 2.0)
    assert after >= 25 and after > before + 10, (before, after)


def test_ranking_losses_see_only_the_order_within_a_document():
    """The ranking losses: lower when the labelled sentence ranks higher, blind to a shift of every score, and 0 with a
    gradient (not an error) on a document whose sentences are all labelled."""
    y = torch.tensor([0.0, 1.0, 0.0])
    for kind in ("pairwise", "listwise"):
        good, bad = torch.tensor([0.0, 2.0, 0.0]), torch.tensor([2.0, 0.0, 0.0])
        assert summarize.ranking_loss(good, y, kind) < summarize.ranking_loss(bad, y, kind)
        assert float(summarize.ranking_loss(good + 5.0, y, kind)) == pytest.approx(float(summarize.ranking_loss(good, y, kind)))
        allpos = torch.zeros(3, requires_grad=True)
        loss = summarize.ranking_loss(allpos, torch.ones(3), kind)
        loss.backward()
        assert float(loss) == 0.0 and allpos.grad is not None
    with pytest.raises(ValueError, match="summarize.scorer.loss"):
        summarize.ranking_loss(torch.zeros(3), y, "hinge")


def test_extractive_scorer_fine_tunes_despite_near_constant_features(tiny_cls):
    """Mean-pooled sentence states can have a dimension that barely varies (MiniLM: sd ~1e-33). Folding the warm
    head's standardisation into its weights must not turn that into weights of ~1e30, whose gradients overflow: the
    clipped update is then zero at every step and the encoder is never fine-tuned (what the BBC benchmark showed:
    the validation score identical to 16 digits before and after an epoch)."""
    from tasks.core.config import ScorerConfig

    long = longify.longify(tiny_cls, 2048, 32, "sliding")
    with torch.no_grad():  # the last layer's output dimension 0 becomes almost constant
        long.layers[-1].output.LayerNorm.weight[0] = 1e-30
        long.layers[-1].output.LayerNorm.bias[0] = 0.0
    tok = models.load_tokenizer(tiny_cls)
    scorer = summarize.SentenceScorer(long, torch.device("cpu"))
    sents = ["The committee met on Tuesday.", "A zebra escaped from the zoo.", "Sales were flat in March.",
             "Officials gave no details."]
    examples = []
    for i in range(8):
        s = sents[i % 4:] + sents[: i % 4]
        ids, marks = summarize.marked(tok, s, 512)
        examples.append((ids, marks, [int(x.startswith("A zebra")) for x in s]))
    before = {n: p.detach().clone() for n, p in long.named_parameters()}
    stats = scorer.train(examples, ScorerConfig(epochs=1, learning_rate=1e-4, warmup_ratio=0.0), seed=0)
    assert stats["nonfinite_steps"] == 0
    # AdamW moves a weight with a gradient by about the learning rate per step; weight decay alone, by ~1e-6 of it
    moved = max(float((p.detach() - before[n]).abs().max()) for n, p in long.named_parameters()
                if n.startswith("layers.0.attention"))
    assert moved > 1e-4, moved
