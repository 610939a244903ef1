"""Peers of the fine-tuned long-document mechanisms, in the same table — what a user with long documents tries first;
a long model that does not beat them is not yet worth its cost:

- ``tfidf-first512`` / ``tfidf-whole``: TF-IDF + logistic regression (scikit-learn) on each document's first 512
  tokens / on the whole document.
- ``embed-chunks``: the pretrained encoder, frozen, reads the document in 256-token chunks (up to ``long.max_tokens``);
  each chunk's mean-pooled, L2-normalised token states are averaged into one vector per document (sentence-embedding
  style: all-MiniLM-L6-v2 was trained that way), and logistic regression classifies it. No fine-tuning.
- ``hybrid``: the average of ``tfidf-whole``'s and ``embed-chunks``' class probabilities, the embedding's share chosen
  like C (a bag of words and a neural reader of the whole document; reported as a hybrid, not as a neural model).

Hyper-parameters (C, the hybrid's share) are chosen by stratified k-fold cross-validation macro-F1 on train +
validation together (5 folds, fewer when a class has fewer documents), never on test; the chosen model is refitted on
train + validation. (The validation split alone, 65 KEPs over 14 classes, picked C by noise: one document moves
macro-F1 by about a point.) Encoder features are computed once per split and cached beside the data splits.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
from prefect import task

from tasks.core import data as data_mod
from tasks.core import models
from tasks.core.config import LongConfig, LongEvalConfig, ModelConfig
from tasks.core.orchestrate import CACHE
from tasks.longdoc.mechanisms import majority_label, score_by_length, token_lengths

CLASSIC = ("tfidf-first512", "tfidf-whole", "embed-chunks", "hybrid")
C_GRID = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
EMBED_SHARES = (0.25, 0.5, 0.75)  # hybrid: the embedding model's share of the averaged probabilities
EMBED_CHUNK = 256  # tokens per chunk, [CLS] and [SEP] included (all-MiniLM-L6-v2's training length)
FOLDS = 5


def first_tokens(tokenizer, texts: list[str], n: int) -> list[str]:
    """Each text cut after its first ``n`` tokens of ``tokenizer``, as a substring of the original (token offsets)."""
    out = []
    for text in texts:
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"][:n]
        out.append(text[: offsets[-1][1]] if offsets else text)
    return out


def chunk_embeddings(model_cfg: ModelConfig, texts: list[str], max_tokens: int, device, desc: str = "") -> np.ndarray:
    """(len(texts), hidden): per document, the mean over its ``EMBED_CHUNK``-token chunks (the first ``max_tokens``
    tokens) of each chunk's mask-averaged, L2-normalised last hidden states, from the frozen pretrained encoder."""
    import torch
    from tqdm.auto import tqdm

    tok = models.load_tokenizer(model_cfg.source, model_cfg.trust_remote_code, model_cfg.revision)
    encoder = models.load_classifier(model_cfg.source, ["a", "b"], model_cfg.trust_remote_code,
                                     model_cfg.revision).base_model.to(device).eval()
    body = EMBED_CHUNK - 2
    chunks, owner = [], []
    for i, text in enumerate(texts):
        ids = tok(text, add_special_tokens=False)["input_ids"][:max_tokens] or [tok.unk_token_id]
        for j in range(0, len(ids), body):
            chunks.append([tok.cls_token_id, *ids[j : j + body], tok.sep_token_id])
            owner.append(i)
    order = sorted(range(len(chunks)), key=lambda k: len(chunks[k]))  # similar lengths together: little padding
    vectors = torch.zeros(len(chunks), encoder.config.hidden_size)
    with torch.inference_mode():
        for b in tqdm(range(0, len(order), 32), desc=f"chunk embeddings ({desc})", unit="batch", mininterval=2.0):
            idx = order[b : b + 32]
            width = max(len(chunks[k]) for k in idx)
            ids = torch.tensor([chunks[k] + [tok.pad_token_id] * (width - len(chunks[k])) for k in idx])
            mask = torch.tensor([[1] * len(chunks[k]) + [0] * (width - len(chunks[k])) for k in idx])
            hidden = encoder(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state.float()
            m = mask.to(hidden.device, hidden.dtype)[..., None]
            pooled = (hidden * m).sum(1) / m.sum(1)
            vectors[idx] = torch.nn.functional.normalize(pooled, dim=-1).cpu()
    out = torch.zeros(len(texts), vectors.shape[1]).index_add_(0, torch.tensor(owner), vectors)
    return (out / torch.bincount(torch.tensor(owner), minlength=len(texts))[:, None]).numpy()


def split_embeddings(model_cfg: ModelConfig, data_info: dict, split: str, max_tokens: int, device) -> np.ndarray:
    """:func:`chunk_embeddings` of one data split, cached beside the splits (shared by both peers and every run)."""
    key = hashlib.sha256(json.dumps([model_cfg.source, model_cfg.revision, max_tokens, EMBED_CHUNK, split,
                                     data_info.get("fingerprint")]).encode()).hexdigest()[:12]
    cache = Path(data_info["dir"]) / f"chunk-embeddings-{key}.npy"
    if cache.is_file():
        return np.load(cache)
    texts = data_mod.load_split(data_info["paths"][split])["text"].tolist()
    x = chunk_embeddings(model_cfg, texts, max_tokens, device, split)
    tmp = cache.with_name(f"{cache.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, x)
    os.replace(tmp, cache)
    return x


def _models(name: str) -> dict:
    """The candidate estimators of one peer: {C: estimator} (the hybrid combines its two parts' candidates)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    def lr(c):
        return LogisticRegression(C=c, class_weight="balanced", max_iter=3000)

    if name.startswith("tfidf"):
        return {c: make_pipeline(TfidfVectorizer(sublinear_tf=True, min_df=2, max_df=0.95), lr(c)) for c in C_GRID}
    return {c: lr(c) for c in C_GRID}


def _select(parts: dict[str, tuple], y: np.ndarray, n_labels: int) -> tuple[dict, float, int]:
    """Cross-validated choice. ``parts``: {part: (train+val inputs, {C: estimator})}. Out-of-fold class probabilities
    are computed once per part and C (scikit-learn's ``cross_val_predict``), then every combination is scored on
    them: GridSearchCV would refit both parts for every hybrid share. -> (choice, its CV macro-F1, folds)."""
    from sklearn.metrics import f1_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    classes = np.unique(y)
    folds = min(FOLDS, int(np.bincount(y)[classes].min()))
    if folds < 2:  # a class with one document: nothing to cross-validate; scikit-learn's defaults
        return {p: 1.0 for p in parts} | ({"embed_share": 0.5} if len(parts) > 1 else {}), float("nan"), 0
    cv = StratifiedKFold(folds, shuffle=True, random_state=0)
    oof = {p: {c: cross_val_predict(est, x, y, cv=cv, method="predict_proba", n_jobs=-1) for c, est in cands.items()}
           for p, (x, cands) in parts.items()}
    ids = list(range(n_labels))

    def score(proba):
        return f1_score(y, classes[proba.argmax(1)], labels=ids, average="macro", zero_division=0)

    if len(parts) == 1:
        (p, by_c), = oof.items()
        scores = {c: score(pr) for c, pr in by_c.items()}
        best = max(scores, key=lambda c: (scores[c], -c))  # ties: the stronger regularisation
        return {p: best}, scores[best], folds
    (pt, t), (pe, e) = oof.items()
    scores = {(ct, ce, s): score((1 - s) * t[ct] + s * e[ce]) for ct in t for ce in e for s in EMBED_SHARES}
    ct, ce, s = max(scores, key=lambda k: (scores[k], -k[0], -k[1]))
    return {pt: ct, pe: ce, "embed_share": s}, scores[(ct, ce, s)], folds


def fit_predict(inputs: dict[str, tuple], y_trainval: list[int], n_labels: int) -> tuple[list[int], dict]:
    """``inputs``: {part: (train+val inputs, test inputs)} — "tfidf" (texts) and/or "embed" (vectors). Chooses C
    (and the hybrid's share) by cross-validation, refits on train + validation, predicts test."""
    y = np.asarray(y_trainval)
    cands = {p: _models("tfidf" if p == "tfidf" else "embed") for p in inputs}
    choice, cv_f1, folds = _select({p: (x, cands[p]) for p, (x, _) in inputs.items()}, y, n_labels)
    proba = None
    for p, (x, x_test) in inputs.items():
        est = cands[p][choice[p]].fit(x, y)
        pr = est.predict_proba(x_test)
        share = 1.0 if len(inputs) == 1 else (choice["embed_share"] if p == "embed" else 1 - choice["embed_share"])
        proba = share * pr if proba is None else proba + share * pr
        classes = est.classes_
    params = {("C" if len(inputs) == 1 else f"C_{p}"): c for p, c in choice.items() if p != "embed_share"}
    if "embed_share" in choice:
        params["embed_share"] = choice["embed_share"]
    params |= {"cv_macro_f1": round(float(cv_f1), 4), "cv_folds": folds}
    return [int(c) for c in classes[proba.argmax(1)]], params


def evaluate(name: str, data_info: dict, model_cfg: ModelConfig, eval_cfg: LongEvalConfig,
             long_cfg: LongConfig | None = None) -> dict:
    """-> {"metrics": {...same keys as the neural mechanisms...}, "params": {"C" or "C_tfidf", "C_embed",
    "embed_share", "cv_macro_f1", "cv_folds"}, "predictions"}. ``long_cfg``: how far ``embed-chunks`` reads
    (``max_tokens``) and on which device."""
    if name not in CLASSIC:
        raise ValueError(f"unknown classic peer {name!r}; choose from {', '.join(CLASSIC)}")
    long_cfg = long_cfg or LongConfig()
    labels = data_info["labels"]
    splits = {s: data_mod.load_split(data_info["paths"][s]) for s in ("train", "val", "test")}
    n_test = min(eval_cfg.max_docs or len(splits["test"]), len(splits["test"]))
    test = splits["test"].iloc[:n_test]
    tok = models.load_tokenizer(model_cfg.source, model_cfg.trust_remote_code, model_cfg.revision)
    y = [labels.index(x) for s in ("train", "val") for x in splits[s]["label"]]

    t0 = time.perf_counter()
    inputs = {}
    if name.startswith("tfidf") or name == "hybrid":
        def texts(df):
            t = df["text"].tolist()
            return first_tokens(tok, t, 510) if name == "tfidf-first512" else t

        inputs["tfidf"] = (texts(splits["train"]) + texts(splits["val"]), texts(test))
    if name in ("embed-chunks", "hybrid"):
        device = models.pick_device(long_cfg.device)
        vec = {s: split_embeddings(model_cfg, data_info, s, long_cfg.max_tokens, device) for s in splits}
        inputs["embed"] = (np.vstack([vec["train"], vec["val"]]), vec["test"][:n_test])
    preds, params = fit_predict(inputs, y, len(labels))
    seconds = time.perf_counter() - t0
    metrics = score_by_length(preds, [labels.index(x) for x in test["label"]], token_lengths(tok, test["text"].tolist()),
                              labels, eval_cfg.buckets, majority_label(data_info))
    metrics["eval/seconds_per_doc"] = seconds / max(1, len(test))  # features (unless cached), fit and predict
    return {"metrics": metrics, "params": params, "predictions": preds}


evaluate_task = task(evaluate, name="evaluate-classic", cache_policy=CACHE, persist_result=True)
