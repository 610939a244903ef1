"""Summarization: data (BBC News Summary folder layout, BBC headlines offline, JSONL), baselines (lead-k, TextRank),
greedy-ROUGE oracle labels and an extractive summarizer whose sentences are scored by the long encoder (one global
marker token per sentence), plus ROUGE-1/2/L.

    oracle_labels(sentences, reference, max_sentences) -> [0/1 per sentence]
    lead_k(sentences, k) / textrank(sentences, k) -> chosen sentence indices
    rouge(prediction, reference) -> {"rouge1": f, "rouge2": f, "rougeL": f}
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
from prefect import task

from tasks.core.config import LongConfig, SummarizeConfig, SummarizeData
from tasks.core.data import DataError, iter_jsonl, packaged_bbc_dir, read_text_file
from tasks.core.orchestrate import CACHE

_SENT = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[A-Z0-9\"'(\[])")
_GLUED = re.compile(r"(?<=[a-z0-9%)\"'][.!?])(?=[A-Z\"'])")


def split_sentences(text: str) -> list[str]:
    out = []
    for para in re.split(r"\n\s*\n|\n", text):
        para = para.strip()
        if para:
            out.extend(s.strip() for s in _SENT.split(para) if s.strip())
    return out


def split_glued(summary: str) -> list[str]:
    """BBC News Summary references glue sentences without a space ("said.The"): split them back."""
    return [s.strip() for s in _GLUED.split(summary.strip()) if s.strip()]


# ------------------------------------------------------------------------------------------------- data


def load_bbc_summary(root: str | Path, limit: int | None = None) -> list[dict]:
    """``root/articles/<class>/NNN.txt`` + ``root/summaries/<class>/NNN.txt`` -> [{"id", "text", "summary"}]."""
    root = Path(root)
    arts, sums = root / "articles", root / "summaries"
    if not arts.is_dir() or not sums.is_dir():
        raise DataError(str(root), "summarize.data.path", "expected articles/ and summaries/ folders (BBC News Summary layout)")
    docs = []
    for f in sorted(arts.glob("*/*.txt")):
        ref = sums / f.parent.name / f.name
        if not ref.is_file():
            continue
        lines = read_text_file(f).strip().split("\n", 1)
        body = lines[1] if len(lines) > 1 else lines[0]
        docs.append({"id": f"{f.parent.name}/{f.stem}", "text": body.strip(),
                     "summary": " ".join(split_glued(read_text_file(ref)))})
    if not docs:
        raise DataError(str(root), "summarize.data.path", "no article/summary pairs found")
    return docs[:limit] if limit else docs


def load_bbc_headlines(limit: int | None = None) -> list[dict]:
    """Offline default: the packaged BBC corpus, headline (first line) as the reference 'summary'."""
    docs = []
    for f in sorted(packaged_bbc_dir().glob("*/*.txt")):
        lines = read_text_file(f).strip().split("\n", 1)
        if len(lines) == 2 and lines[1].strip():
            docs.append({"id": f"{f.parent.name}/{f.stem}", "text": lines[1].strip(), "summary": lines[0].strip()})
    return docs[:limit] if limit else docs


def load_jsonl(path: str | Path, text_field: str = "text", summary_field: str = "summary") -> list[dict]:
    docs = []
    for i, obj in iter_jsonl(path):
        for f in (text_field, summary_field):
            if f not in obj:
                raise DataError(str(path), f"line {i}", f"missing field '{f}'")
        docs.append({"id": str(i), "text": str(obj[text_field]), "summary": str(obj[summary_field])})
    return docs


# ------------------------------------------------------------------------------------------------ scoring


def rouge(prediction: str, reference: str) -> dict[str, float]:
    scorer = _scorer()
    s = scorer.score(reference, prediction)
    return {k: float(v.fmeasure) for k, v in s.items()}


_SCORER = None


def _scorer():
    global _SCORER
    if _SCORER is None:
        from rouge_score import rouge_scorer

        _SCORER = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    return _SCORER


_WORD = re.compile(r"[a-z0-9]+")


def _grams(text: str) -> tuple[Counter, Counter]:
    toks = _WORD.findall(text.lower())
    return Counter(toks), Counter(zip(toks, toks[1:]))


def _f1(cand: Counter, ref: Counter) -> float:
    overlap = sum((cand & ref).values())
    if not overlap:
        return 0.0
    p, r = overlap / sum(cand.values()), overlap / sum(ref.values())
    return 2 * p * r / (p + r)


def oracle_labels(sentences: list[str], reference: str, max_sentences: int = 5) -> list[int]:
    """Greedy oracle: add the sentence that most improves ROUGE-1 + ROUGE-2 F1 (n-gram overlap on lower-cased word
    tokens, fast enough for thousands of documents) until no sentence improves it."""
    ref1, ref2 = _grams(reference)
    grams = [_grams(s) for s in sentences]
    chosen: list[int] = []
    cur1, cur2 = Counter(), Counter()
    best = 0.0
    for _ in range(min(max_sentences, len(sentences))):
        cands = [(_f1(cur1 + g1, ref1) + _f1(cur2 + g2, ref2), i) for i, (g1, g2) in enumerate(grams) if i not in chosen]
        if not cands:
            break
        score, idx = max(cands, key=lambda x: (x[0], -x[1]))
        if score <= best:
            break
        best = score
        chosen.append(idx)
        cur1, cur2 = cur1 + grams[idx][0], cur2 + grams[idx][1]
    return [1 if i in chosen else 0 for i in range(len(sentences))]


def lead_k(sentences: list[str], k: int) -> list[int]:
    return list(range(min(k, len(sentences))))


def textrank_scores(sentences: list[str], damping: float = 0.85) -> np.ndarray:
    """PageRank (networkx) over the TF-IDF cosine-similarity graph of the sentences."""
    import networkx as nx
    from sklearn.feature_extraction.text import TfidfVectorizer

    n = len(sentences)
    try:
        x = TfidfVectorizer(stop_words="english").fit_transform(sentences)
    except ValueError:  # only stop words
        return np.linspace(1.0, 0.0, n)
    sim = (x @ x.T).toarray()
    np.fill_diagonal(sim, 0.0)
    rank = nx.pagerank(nx.from_numpy_array(sim), alpha=damping, weight="weight", max_iter=200, tol=1e-8)
    return np.array([rank[i] for i in range(n)])


def textrank(sentences: list[str], k: int) -> list[int]:
    """TextRank: the top-k sentences by PageRank centrality, in document order."""
    if len(sentences) <= k:
        return list(range(len(sentences)))
    return sorted(np.argsort(-textrank_scores(sentences), kind="stable")[:k].tolist())


def summary_of(sentences: list[str], idx: list[int]) -> str:
    return " ".join(sentences[i] for i in sorted(idx))


# ------------------------------------------------------------------------------ extractive (long encoder)


def sentence_features(long_model, tokenizer, sentences: list[str], max_tokens: int) -> np.ndarray:
    """Encode the document once with one [CLS] marker before every sentence (global attention on the markers);
    the markers' final hidden states are the sentence representations."""
    import torch

    ids, marks = [], []
    for s in sentences:
        toks = tokenizer(s, add_special_tokens=False)["input_ids"]
        if len(ids) + len(toks) + 2 > max_tokens:
            break
        marks.append(len(ids))
        ids += [tokenizer.cls_token_id] + toks
    ids.append(tokenizer.sep_token_id)
    device = next(long_model.parameters()).device
    x = torch.tensor([ids], device=device)
    glob = torch.zeros_like(x, dtype=torch.bool)
    glob[0, marks] = True
    amp = device.type == "cuda" and torch.cuda.is_bf16_supported()
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        h = long_model.hidden_states(x, global_mask=glob)
    feats = h[0, marks].float().cpu().numpy()
    if len(marks) < len(sentences):  # sentences past max_tokens: zero features (they score low)
        feats = np.vstack([feats, np.zeros((len(sentences) - len(marks), feats.shape[1]), dtype=feats.dtype)])
    # document-level context for each sentence: similarity of its encoding to the document's mean encoding, its
    # TF-IDF centrality, its position and length — the encoder features alone are dominated by position
    norm = feats / (np.linalg.norm(feats, axis=1, keepdims=True) + 1e-6)
    centroid = norm.mean(0)
    centroid /= np.linalg.norm(centroid) + 1e-6
    n = len(sentences)
    extra = np.stack([norm @ centroid, textrank_scores(sentences) * n, np.arange(n) / max(1, n - 1),
                      (np.arange(n) == 0).astype(float), np.log1p([len(s.split()) for s in sentences])], axis=1)
    return np.hstack([norm, extra])


# ----------------------------------------------------------------------------------------- the experiment


def load_docs(cfg: SummarizeConfig) -> tuple[list[dict], str]:
    d = cfg.data
    if d.source == "bbc-summary":
        return load_bbc_summary(d.path), f"bbc-summary:{d.path}"
    if d.source == "jsonl":
        return load_jsonl(d.path, d.text_field, d.summary_field), f"jsonl:{d.path}"
    if d.source.startswith("hf:"):
        return load_hf(d.source[3:], d), d.source
    if d.source == "keps":  # packaged; reference = the KEP's own Summary section (13 documents without one left out)
        from tasks.core.data import read_keps

        keps = read_keps()
        return ([{"id": r.id, "text": r.text, "summary": r.summary} for r in keps.itertuples() if str(r.summary).strip()],
                "keps (packaged; reference = the KEP's Summary section)")
    return load_bbc_headlines(), "bbc-headlines (packaged corpus; headline as reference)"


def load_hf(name: str, d: SummarizeData) -> list[dict]:
    """Hub summarization data (e.g. ccdv/arxiv-summarization: article/abstract, ccdv/govreport-summarization)."""
    import datasets

    try:
        ds = datasets.load_dataset(name, d.hf_config, split=d.hf_split)
    except Exception as exc:
        raise DataError("summarize.data.source", f"hf:{name}", f"cannot load dataset ({type(exc).__name__}: {str(exc)[:200]}); "
                        "the offline default is summarize.data.source=bbc-headlines") from None
    tf, sf = d.text_field, d.summary_field
    missing = [f for f in (tf, sf) if f not in ds.column_names]
    if missing:
        raise DataError(f"hf:{name}", "summarize.data.text_field" if tf in missing else "summarize.data.summary_field",
                        f"column '{missing[0]}' not found; columns are: {', '.join(ds.column_names)}")
    return [{"id": str(i), "text": str(r[tf]), "summary": str(r[sf])} for i, r in enumerate(ds)]


def _score(docs: list[dict], picks: list[list[int]], seconds: float) -> dict:
    rs = [rouge(summary_of(d["sentences"], p), d["summary"]) for d, p in zip(docs, picks)]
    return {"eval/rouge1": float(np.mean([r["rouge1"] for r in rs])), "eval/rouge2": float(np.mean([r["rouge2"] for r in rs])),
            "eval/rougeL": float(np.mean([r["rougeL"] for r in rs])),
            "eval/summary_words": float(np.mean([len(summary_of(d["sentences"], p).split()) for d, p in zip(docs, picks)])),
            "eval/seconds_per_doc": seconds / max(1, len(docs)), "eval/num_docs": len(docs)}


def _choose_k(val: list[dict], k_values: list[int], pick) -> int:
    def r2(k):
        return np.mean([rouge(summary_of(d["sentences"], pick(d, k)), d["summary"])["rouge2"] for d in val])

    return max(k_values, key=r2)


def run(cfg: SummarizeConfig | dict, long_cfg: LongConfig | dict, model_dir: str, seed: int, work: str) -> dict:
    """Lead-k, TextRank and the long-encoder extractive summarizer on the same test documents (k chosen on
    validation for each), plus an abstractive model when configured. Returns metrics per method."""
    cfg, long_cfg = SummarizeConfig.model_validate(cfg), LongConfig.model_validate(long_cfg)
    import time

    from sklearn.linear_model import LogisticRegression

    from tasks.core import models
    from tasks.longdoc import longify

    docs, where = load_docs(cfg)
    if cfg.data.max_docs and cfg.data.max_docs < len(docs):  # a seeded sample across all classes
        rng = np.random.default_rng(seed)
        docs = [docs[i] for i in sorted(rng.permutation(len(docs))[: cfg.data.max_docs])]
    if len(docs) < 8:
        raise DataError(where, "summarize.data", f"{len(docs)} documents; need at least 8 (train/validation/test)")
    for d in docs:
        d["sentences"] = split_sentences(d["text"]) or [d["text"]]
    order = np.random.default_rng(seed).permutation(len(docs))
    n = len(docs)
    train_docs = [docs[i] for i in order[: n // 2]]
    val = [docs[i] for i in order[n // 2 : 3 * n // 4]]
    test = [docs[i] for i in order[3 * n // 4 :]]
    methods: dict[str, dict] = {}

    k = _choose_k(val, cfg.k_values, lambda d, k: lead_k(d["sentences"], k))
    t = time.perf_counter()
    picks = [lead_k(d["sentences"], k) for d in test]
    methods["lead-k"] = {"k": k, "metrics": _score(test, picks, time.perf_counter() - t)}

    k = _choose_k(val, cfg.k_values, lambda d, k: textrank(d["sentences"], k))
    t = time.perf_counter()
    picks = [textrank(d["sentences"], k) for d in test]
    methods["textrank"] = {"k": k, "metrics": _score(test, picks, time.perf_counter() - t)}

    # extractive: the long encoder (sliding window + global markers) scores sentences; a linear head is trained on
    # greedy-ROUGE oracle labels of the training documents
    tok = models.load_tokenizer(model_dir)
    tok.model_max_length = 10**9
    long = longify.longify(model_dir, long_cfg.max_positions, long_cfg.attention_window, "sliding",
                           long_cfg.attention_backend).to(models.pick_device(long_cfg.device))
    max_tokens = min(cfg.max_tokens, long_cfg.max_positions)
    feats, ys = [], []
    for d in train_docs:
        feats.append(sentence_features(long, tok, d["sentences"], max_tokens))
        ys.extend(oracle_labels(d["sentences"], d["summary"], cfg.oracle_max_sentences))
    x = np.vstack(feats)
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, class_weight="balanced", C=0.1)).fit(x, ys)

    def scores(d):
        if "_scores" not in d:
            d["_scores"] = clf.decision_function(sentence_features(long, tok, d["sentences"], max_tokens))
        return d["_scores"]

    k = _choose_k(val, cfg.k_values, lambda d, k: sorted(np.argsort(-scores(d), kind="stable")[:k].tolist()))
    t = time.perf_counter()
    picks = [sorted(np.argsort(-scores(d), kind="stable")[:k].tolist()) for d in test]
    methods["extractive-long"] = {"k": k, "train_docs": len(train_docs), "oracle_positive_rate": float(np.mean(ys)),
                                  "metrics": _score(test, picks, time.perf_counter() - t)}

    if cfg.abstractive_model:
        methods["abstractive"] = abstractive(cfg.abstractive_model, test, cfg.generation)
    return {"data": where, "num_test": len(test), "methods": methods}


def abstractive(model_id: str, test: list[dict], generation: dict) -> dict:
    """Seq2seq generation (LED for long inputs, e.g. allenai/led-base-16384) with settings from the config."""
    import time

    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    path = __import__("tasks.core.models", fromlist=["resolve_source"]).resolve_source(model_id)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSeq2SeqLM.from_pretrained(path, use_safetensors=True).eval()
    max_in = getattr(model.config, "max_encoder_position_embeddings", None) or getattr(model.config, "max_position_embeddings", 1024)
    outs, t = [], time.perf_counter()
    with torch.inference_mode():
        for d in test:
            enc = tok(d["text"], truncation=True, max_length=max_in, return_tensors="pt")
            enc.pop("token_type_ids", None)  # seq2seq models take none (a BERT-style tokenizer adds them)
            extra = {}
            if model.config.model_type == "led":
                g = torch.zeros_like(enc["input_ids"])
                g[:, 0] = 1
                extra["global_attention_mask"] = g
            ids = model.generate(**enc, **extra, **generation)
            outs.append(tok.decode(ids[0], skip_special_tokens=True))
    seconds = time.perf_counter() - t
    rs = [rouge(o, d["summary"]) for o, d in zip(outs, test)]
    return {"model": model_id, "metrics": {
        "eval/rouge1": float(np.mean([r["rouge1"] for r in rs])), "eval/rouge2": float(np.mean([r["rouge2"] for r in rs])),
        "eval/rougeL": float(np.mean([r["rougeL"] for r in rs])), "eval/summary_words": float(np.mean([len(o.split()) for o in outs])),
        "eval/seconds_per_doc": seconds / max(1, len(test)), "eval/num_docs": len(test)}}


summarize_task = task(run, name="summarize", cache_policy=CACHE, persist_result=True)
