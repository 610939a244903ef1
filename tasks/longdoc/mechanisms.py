"""Long-document classifiers, one per attention mechanism, and their evaluation by document-length bucket (each
mechanism's own trained weights come from ``tasks/longdoc/train_long.py``; any classifier folder works too).

* ``truncate-512``   — the model as fine-tuned, SDPA full attention, documents cut to 512 tokens;
* ``chunked-512``    — 512-token chunks encoded independently, logits averaged;
* ``hierarchical``   — 512-token chunks encoded independently, their [CLS] vectors mixed by a small transformer
  layer, trained end to end (``tasks/longdoc/hierarchical.py``);
* ``sliding-window`` — long-ified (``tasks/longdoc/longify.py``), our blocked sliding-window + global [CLS] attention;
* ``full-long``      — long-ified, SDPA full attention over the whole document (the O(n²) reference);
* ``hf-longformer``  — the same weights converted into Hugging Face ``LongformerForSequenceClassification``;
* ``bigbird``        — Hugging Face ``BigBirdForSequenceClassification`` (block-sparse) from the same weights.
"""

from __future__ import annotations

import time
from collections import Counter

import torch
from prefect import task

from tasks.core import data as data_mod
from tasks.core import models
from tasks.core.config import LongConfig, LongEvalConfig
from tasks.core.orchestrate import CACHE
from tasks.longdoc import hierarchical, longify


def to_hf_longformer(model_dir: str, max_positions: int, attention_window: int):
    """Convert a BERT classifier into HF Longformer (positions copied to ``max_positions``, global q/k/v = local)."""
    from transformers import LongformerConfig, LongformerForSequenceClassification

    bert = models.load_hf_model(model_dir)
    c = bert.config
    pad = c.pad_token_id or 0
    cfg = LongformerConfig(vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers,
                           num_attention_heads=c.num_attention_heads, intermediate_size=c.intermediate_size,
                           hidden_act=c.hidden_act, layer_norm_eps=c.layer_norm_eps, type_vocab_size=c.type_vocab_size,
                           max_position_embeddings=max_positions + pad + 1, pad_token_id=pad,
                           attention_window=attention_window, num_labels=c.num_labels, id2label=c.id2label,
                           label2id=c.label2id, hidden_dropout_prob=c.hidden_dropout_prob,
                           attention_probs_dropout_prob=c.attention_probs_dropout_prob)
    lf = LongformerForSequenceClassification(cfg).eval()
    sd = {k: v for k, v in bert.state_dict().items()}
    new = lf.state_dict()
    for k in new:
        src = k.replace("longformer.", "bert.", 1)
        if ".attention.self." in k and "_global" in k:
            src = src.replace("_global", "")
        if k == "longformer.embeddings.position_embeddings.weight":
            old = sd["bert.embeddings.position_embeddings.weight"]
            table = new[k].clone()
            for start in range(0, max_positions, old.shape[0]):
                n = min(old.shape[0], max_positions - start)
                table[pad + 1 + start : pad + 1 + start + n] = old[:n]
            new[k] = table
        elif k.startswith("classifier.dense."):
            new[k] = sd[k.replace("classifier.dense.", "bert.pooler.dense.")]
        elif k.startswith("classifier.out_proj."):
            new[k] = sd[k.replace("classifier.out_proj.", "classifier.")]
        elif src in sd and sd[src].shape == new[k].shape:
            new[k] = sd[src]
    lf.load_state_dict(new)
    return lf


def to_hf_bigbird(model_dir: str, max_positions: int, block_size: int = 64, num_random_blocks: int = 3):
    """Convert a BERT classifier into HF BigBird (block-sparse attention; same layer names, positions copied)."""
    from transformers import BigBirdConfig, BigBirdForSequenceClassification

    bert = models.load_hf_model(model_dir)
    c = bert.config
    cfg = BigBirdConfig(vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers,
                        num_attention_heads=c.num_attention_heads, intermediate_size=c.intermediate_size,
                        hidden_act=c.hidden_act, layer_norm_eps=c.layer_norm_eps, type_vocab_size=c.type_vocab_size,
                        max_position_embeddings=max_positions, pad_token_id=c.pad_token_id or 0,
                        attention_type="block_sparse", block_size=block_size, num_random_blocks=num_random_blocks,
                        num_labels=c.num_labels, id2label=c.id2label, label2id=c.label2id)
    bb = BigBirdForSequenceClassification(cfg).eval()
    sd = bert.state_dict()
    new = bb.state_dict()
    for k in new:
        if k == "bert.embeddings.position_embeddings.weight":
            old = sd[k]
            for start in range(0, max_positions, old.shape[0]):
                n = min(old.shape[0], max_positions - start)
                new[k][start : start + n] = old[:n]
        elif k.startswith("classifier.dense."):
            new[k] = sd[k.replace("classifier.dense.", "bert.pooler.dense.")]
        elif k.startswith("classifier.out_proj."):
            new[k] = sd[k.replace("classifier.out_proj.", "classifier.")]
        elif k in sd and sd[k].shape == new[k].shape:
            new[k] = sd[k]
    bb.load_state_dict(new)
    return bb


def trained_chunk_tokens(model_dir: str) -> int:
    """The input length a truncate/chunked classifier was trained at (`train_long` writes ``train.chunk_tokens`` as
    the folder's ``max_length``); 512 for any other classifier folder."""
    try:
        manifest = models.read_manifest(model_dir)
    except FileNotFoundError:
        return 512
    trained_as = (manifest.get("train") or {}).get("mechanism")
    return int(manifest["max_length"]) if trained_as in ("truncate-512", "chunked-512") else 512


def classifier_for(mechanism: str, model_dir: str, long_cfg: LongConfig | dict, model=None,
                   chunk_tokens: int | None = None):
    """-> (callable(text) -> logits[1, C], tokenizer). The model runs on ``long_cfg.device`` (bf16 autocast on CUDA
    when ``autocast_bf16`` and the GPU supports it); the callable's ``backends`` counts the attention implementation
    that served each document (sliding-window). ``model``: an in-memory model of the mechanism (training's
    validation passes the one being trained; ``model_dir`` then only provides the tokenizer). ``chunk_tokens``:
    truncate/chunked input length (default: what the folder was trained at, see :func:`trained_chunk_tokens`)."""
    long_cfg = LongConfig.model_validate(long_cfg)
    given = model
    tokenizer = models.load_tokenizer(model_dir)
    tokenizer.model_max_length = 10**9
    max_tokens = long_cfg.max_tokens
    device = models.pick_device(long_cfg.device)
    amp = long_cfg.autocast_bf16 and device.type == "cuda" and torch.cuda.is_bf16_supported()
    backends: Counter = Counter()

    def encode(text: str, **kw):
        return {k: v.to(device) for k, v in tokenizer(text, return_tensors="pt", **kw).items()}

    if mechanism in ("truncate-512", "chunked-512"):
        model = given if given is not None else models.load_hf_model(model_dir)
        chunk = chunk_tokens or trained_chunk_tokens(model_dir)

        def forward(text: str):
            if mechanism == "truncate-512":
                enc = encode(text, truncation=True, max_length=chunk)
                return model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
            ids = tokenizer(text, add_special_tokens=False)["input_ids"][: max_tokens]
            size = chunk - 2  # room for [CLS] and [SEP], as train_long.chunk_texts cuts them
            chunks = [ids[i : i + size] for i in range(0, max(1, len(ids)), size)]
            batch = tokenizer.pad({"input_ids": [[tokenizer.cls_token_id] + ch + [tokenizer.sep_token_id] for ch in chunks]},
                                  return_tensors="pt")
            return model(input_ids=batch["input_ids"].to(device),
                         attention_mask=batch["attention_mask"].to(device)).logits.mean(0, keepdim=True)
    elif mechanism == "hierarchical":
        if given is None and not hierarchical.is_hierarchical(model_dir):
            raise ValueError(f"hierarchical: {model_dir} is not a trained hierarchical model folder (the long-document "
                             "flow trains one: keep 'hierarchical' in mechanisms)")
        model = given if given is not None else hierarchical.load(model_dir)

        def forward(text: str):
            enc = encode(text, truncation=True, max_length=max_tokens)
            return model(enc["input_ids"], enc["attention_mask"])
    elif mechanism in ("sliding-window", "full-long"):
        mode = "sliding" if mechanism == "sliding-window" else "full"
        if given is not None:
            model = given
        elif longify.is_long(model_dir):  # trained on long inputs (train_long.py)
            model = longify.load_long(model_dir, long_cfg.attention_backend)
            model.set_mode(mode)
        else:  # an ordinary classifier folder, long-ified as it is
            model = longify.longify(model_dir, long_cfg.max_positions, long_cfg.attention_window, mode,
                                    long_cfg.attention_backend)

        def forward(text: str):
            enc = encode(text, truncation=True, max_length=max_tokens)
            logits = model(enc["input_ids"], enc["attention_mask"])
            backends[model.last_backend] += 1  # e.g. dense for short documents, flex for long ones
            return logits
    elif mechanism == "hf-longformer":
        model = to_hf_longformer(model_dir, long_cfg.max_positions, long_cfg.attention_window)

        def forward(text: str):
            enc = encode(text, truncation=True, max_length=max_tokens)
            glob = torch.zeros_like(enc["input_ids"])
            glob[:, 0] = 1
            return model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                         global_attention_mask=glob).logits
    elif mechanism == "bigbird":
        model = to_hf_bigbird(model_dir, long_cfg.max_positions)

        def forward(text: str):
            enc = encode(text, truncation=True, max_length=max_tokens)
            return model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    else:
        raise ValueError(f"unknown mechanism {mechanism!r}")
    if given is None:
        model.to(device).eval()

    def run(text: str):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            return forward(text).float()

    run.backends = backends
    return run, tokenizer


def bucket_name(lo: int, hi: int | None) -> str:
    return f"{lo}_{hi}" if hi is not None else f"{lo}_plus"


def score_by_length(preds: list[int], labels: list[int], lengths: list[int], label_names: list[str],
                    buckets: list[int], majority: int | None = None) -> dict:
    """Accuracy / macro-F1 overall and per document-length bucket (lengths in tokens, before any truncation), beside
    the majority-class baseline (``majority``: the most frequent *training* label). ``eval/degenerate`` is 1 when the
    model predicts a single class or does no better than that baseline on macro-F1 (the flow flags it loudly)."""
    from sklearn.metrics import accuracy_score, f1_score

    ids = list(range(len(label_names)))

    def f1(y, p, subset: bool = True):  # in a length bucket: over the classes that occur there (true or predicted)
        return float(f1_score(y, p, labels=sorted(set(y) | set(p)) if subset else ids, average="macro",
                              zero_division=0))

    metrics = {"eval/accuracy": float(accuracy_score(labels, preds)), "eval/macro_f1": f1(labels, preds, False),
               "eval/num_docs": len(labels), "eval/distinct_predictions": len(set(preds))}
    if majority is not None:
        base = [majority] * len(labels)
        metrics["eval/majority_accuracy"] = float(accuracy_score(labels, base))
        metrics["eval/majority_macro_f1"] = f1(labels, base, False)
    metrics["eval/degenerate"] = float(len(set(preds)) <= 1 or (
        majority is not None and metrics["eval/macro_f1"] <= metrics["eval/majority_macro_f1"]))
    edges = [0, *buckets, None]
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = [i for i, n in enumerate(lengths) if n > lo and (hi is None or n <= hi)]
        name = bucket_name(lo, hi)
        metrics[f"eval/num_docs_len_{name}"] = len(sel)
        if sel:
            y, p = [labels[i] for i in sel], [preds[i] for i in sel]
            metrics[f"eval/accuracy_len_{name}"] = float(accuracy_score(y, p))
            metrics[f"eval/macro_f1_len_{name}"] = f1(y, p)
    for edge in (1024, 2048):  # the long tail, whatever the buckets
        tail = [i for i, n in enumerate(lengths) if n > edge]
        if tail:
            metrics[f"eval/macro_f1_len_gt_{edge}"] = f1([labels[i] for i in tail], [preds[i] for i in tail])
    return metrics


@torch.inference_mode()
def evaluate_by_length(mechanism: str, model_dir: str, texts: list[str], labels: list[int], label_names: list[str],
                       long_cfg: LongConfig | dict, buckets: list[int], majority: int | None = None) -> dict:
    """One mechanism over the documents: :func:`score_by_length` plus seconds per document and the attention
    implementation that served each document."""
    from tqdm.auto import tqdm

    run, tok = classifier_for(mechanism, model_dir, long_cfg)
    lengths = token_lengths(tok, texts)
    preds, t0 = [], time.perf_counter()
    for text in tqdm(texts, desc=f"evaluate {mechanism}", unit="doc", mininterval=5.0):
        preds.append(int(run(text).argmax(-1)))
    seconds = time.perf_counter() - t0
    metrics = score_by_length(preds, labels, lengths, label_names, buckets, majority)
    metrics["eval/seconds_per_doc"] = seconds / max(1, len(texts))
    for backend, count in sorted(run.backends.items()):
        metrics[f"eval/num_docs_attention_{backend}"] = count
    return {"metrics": metrics, "predictions": preds, "lengths": lengths}


def token_lengths(tokenizer, texts: list[str]) -> list[int]:
    tokenizer.model_max_length = 10**9
    return [len(x) for x in tokenizer(texts, add_special_tokens=True)["input_ids"]]


def majority_label(data_info: dict) -> int:
    """The most frequent training label (ties: the first in label order): the baseline every table shows."""
    train = data_mod.load_split(data_info["paths"]["train"])
    counts = train["label"].value_counts()
    return data_info["labels"].index(sorted(counts[counts == counts.max()].index)[0])


@task(name="evaluate-mechanism", cache_policy=CACHE, persist_result=True, retries=1, retry_delay_seconds=2)
def evaluate_task(mechanism: str, model_dir: str, data_info: dict, long_cfg: LongConfig,
                  eval_cfg: LongEvalConfig) -> dict:
    """Accuracy of one mechanism on the test split, overall and per length bucket."""
    test = data_mod.load_split(data_info["paths"]["test"])
    if eval_cfg.max_docs:
        test = test.iloc[: eval_cfg.max_docs]
    labels = data_info["labels"]
    res = evaluate_by_length(mechanism, model_dir, test["text"].tolist(), [labels.index(l) for l in test["label"]],
                             labels, long_cfg, eval_cfg.buckets, majority_label(data_info))
    return {"metrics": res["metrics"]}
