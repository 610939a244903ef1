"""Classic peers of the neural long-document mechanisms, in the same table: TF-IDF + logistic regression
(scikit-learn) on each document's first 512 tokens (``tfidf-first512``) and on the whole document (``tfidf-whole``).
What a user with long documents tries first; a long model that does not beat it is not yet worth its cost.

Hyper-parameters (C of the logistic regression) are chosen on the validation split by macro-F1, never on test.
"""

from __future__ import annotations

import time

from prefect import task

from tasks.core import data as data_mod
from tasks.core import models
from tasks.core.config import LongEvalConfig, ModelConfig
from tasks.core.orchestrate import CACHE
from tasks.longdoc.mechanisms import majority_label, score_by_length, token_lengths

CLASSIC = ("tfidf-first512", "tfidf-whole")
C_GRID = (0.3, 1.0, 3.0, 10.0, 30.0)


def first_tokens(tokenizer, texts: list[str], n: int) -> list[str]:
    """Each text cut after its first ``n`` tokens of ``tokenizer``, as a substring of the original (token offsets)."""
    out = []
    for text in texts:
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"][:n]
        out.append(text[: offsets[-1][1]] if offsets else text)
    return out


def fit_predict(name: str, train: tuple[list[str], list[int]], val: tuple[list[str], list[int]], test_texts: list[str],
                n_labels: int) -> tuple[list[int], dict]:
    """Fit on train with each C, keep the best on validation macro-F1, refit on train + validation, predict test."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.pipeline import make_pipeline

    def model(c: float):
        return make_pipeline(TfidfVectorizer(sublinear_tf=True, min_df=2, max_df=0.95),
                             LogisticRegression(C=c, class_weight="balanced", max_iter=3000))

    ids = list(range(n_labels))
    scores = {c: f1_score(val[1], model(c).fit(*train).predict(val[0]), labels=ids, average="macro", zero_division=0)
              for c in C_GRID}
    best = max(C_GRID, key=lambda c: (scores[c], -c))
    final = model(best).fit(train[0] + val[0], train[1] + val[1])
    return [int(p) for p in final.predict(test_texts)], {"C": best, "val_macro_f1": round(float(scores[best]), 4)}


def evaluate(name: str, data_info: dict, model_cfg: ModelConfig, eval_cfg: LongEvalConfig) -> dict:
    """-> {"metrics": {...same keys as the neural mechanisms...}, "params": {"C", "val_macro_f1"}, "predictions"}."""
    if name not in CLASSIC:
        raise ValueError(f"unknown classic peer {name!r}; choose from {', '.join(CLASSIC)}")
    labels = data_info["labels"]
    splits = {s: data_mod.load_split(data_info["paths"][s]) for s in ("train", "val", "test")}
    test = splits["test"].iloc[: eval_cfg.max_docs] if eval_cfg.max_docs else splits["test"]
    tok = models.load_tokenizer(model_cfg.source, model_cfg.trust_remote_code, model_cfg.revision)

    def texts(df):
        t = df["text"].tolist()
        return first_tokens(tok, t, 510) if name == "tfidf-first512" else t

    t0 = time.perf_counter()
    y = {s: [labels.index(x) for x in df["label"]] for s, df in splits.items()}
    preds, params = fit_predict(name, (texts(splits["train"]), y["train"]), (texts(splits["val"]), y["val"]),
                                texts(test), len(labels))
    seconds = time.perf_counter() - t0
    metrics = score_by_length(preds, y["test"][: len(test)], token_lengths(tok, test["text"].tolist()), labels,
                              eval_cfg.buckets, majority_label(data_info))
    metrics["eval/seconds_per_doc"] = seconds / max(1, len(test))  # fit and predict, per test document
    return {"metrics": metrics, "params": params, "predictions": preds}


evaluate_task = task(evaluate, name="evaluate-classic", cache_policy=CACHE, persist_result=True)
