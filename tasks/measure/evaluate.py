"""Evaluate a model folder on the test split (or the validation split, for choices such as a search): accuracy, macro-F1, per-class P/R/F1, confusion-matrix PNG."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from prefect import task
from tqdm.auto import tqdm

from tasks.core import data as data_mod
from tasks.core import models, preprocess
from tasks.core.config import EvaluateConfig
from tasks.core.orchestrate import CACHE
from tasks.measure import runtimes


@torch.inference_mode()
def predict(model_dir: str, texts: list[str], batch_size: int = 64, max_length: int | None = None,
            device: str = "cpu") -> np.ndarray:
    run, tokenizer, manifest = runtimes.load_for_inference(model_dir, device)
    max_length = max_length or manifest["max_length"]
    texts = preprocess.normalize(texts, manifest.get("preprocess"))
    preds = []
    for i in tqdm(range(0, len(texts), batch_size), desc="evaluate", unit="batch", mininterval=2.0, leave=False):
        enc = models.encode(tokenizer, texts[i : i + batch_size], max_length)
        preds.append(run(enc["input_ids"], enc["attention_mask"]).argmax(-1).cpu().numpy())
    return np.concatenate(preds) if preds else np.zeros(0, dtype=int)


def classification_metrics(y_true: list[int], y_pred: list[int], labels: list[str]) -> tuple[dict, dict, np.ndarray]:
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
    )

    ids = list(range(len(labels)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=ids, zero_division=0)
    metrics = {
        "eval/accuracy": float(accuracy_score(y_true, y_pred)),
        "eval/macro_f1": float(f1_score(y_true, y_pred, labels=ids, average="macro", zero_division=0)),
    }
    per_class = {lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])} for i, lab in enumerate(labels)}
    for lab, d in per_class.items():
        metrics[f"eval/f1_{lab}"] = d["f1"]
    return metrics, per_class, confusion_matrix(y_true, y_pred, labels=ids)


def plot_confusion(cm: np.ndarray, labels: list[str], path: Path, title: str) -> None:
    # matplotlib's object API (no pyplot global state): safe when evaluations run in parallel threads
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.2 * len(labels) + 2, 1.1 * len(labels) + 1.5))
    ax = fig.subplots()
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def token_stats(model_dir: str, texts: list[str]) -> dict:
    """Mean token count (before truncation) and truncated fraction of the texts as this model sees them."""
    from transformers import AutoTokenizer

    manifest = models.read_manifest(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.model_max_length = 10**9  # we count untruncated lengths on purpose; no "longer than max" warning
    lengths = [len(ids) for ids in tok(preprocess.normalize(texts, manifest.get("preprocess")))["input_ids"]]
    limit = manifest["max_length"]
    return {"eval/mean_tokens": float(np.mean(lengths)), "eval/truncated_fraction": float(np.mean([n > limit for n in lengths]))}


def evaluate(model_dir: str, data: dict, eval_cfg: EvaluateConfig | dict, work_dir: str, variant: str = "model",
             split: str = "test") -> dict:
    """-> {"metrics": {...}, "artifacts": {name: path}} (predictions saved for agreement checks). ``split``: test,
    or val — then the metrics are named ``val/*`` so a choice made on them is never mistaken for a test result."""
    out = Path(work_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = data["labels"]
    if split not in ("test", "val"):
        raise ValueError(f"evaluate: split must be 'test' or 'val', not {split!r}")
    test = data_mod.load_split(data["paths"][split])
    label_ids = {l: i for i, l in enumerate(labels)}
    y_true = [label_ids[l] for l in test["label"]]
    t0 = time.perf_counter()
    eval_cfg = EvaluateConfig.model_validate(eval_cfg)
    y_pred = predict(model_dir, test["text"].tolist(), eval_cfg.batch_size, device=eval_cfg.device)
    seconds = time.perf_counter() - t0
    metrics, per_class, cm = classification_metrics(y_true, y_pred.tolist(), labels)
    metrics["eval/seconds"] = round(seconds, 3)
    metrics.update(token_stats(model_dir, test["text"].tolist()))
    metrics["eval/num_samples"] = len(y_true)
    cm_path = out / "confusion_matrix.png"
    plot_confusion(cm, labels, cm_path, f"{variant}: accuracy {metrics['eval/accuracy']:.3f}")
    (out / "per_class.json").write_text(json.dumps(per_class, indent=2))
    np.save(out / "predictions.npy", y_pred)
    if split == "val":
        metrics = {k.replace("eval/", "val/", 1): v for k, v in metrics.items()}
    return {
        "metrics": metrics,
        "artifacts": {"confusion_matrix": str(cm_path), "per_class": str(out / "per_class.json"), "predictions": str(out / "predictions.npy")},
    }


@task(name="evaluate", cache_policy=CACHE, persist_result=True, retries=1, retry_delay_seconds=2)
def evaluate_task(model_dir: str, data_info: dict, eval_cfg: EvaluateConfig, work: str, variant: str,
                  split: str = "test") -> dict:
    """Evaluate one variant (fans out on the task runner; ``pid`` tells which worker process ran it)."""
    return {**evaluate(model_dir, data_info, eval_cfg, work, variant, split), "pid": os.getpid()}


def agreement(predictions: str, source_predictions: str) -> float:
    """Share of test documents on which a variant predicts what its source predicts (two saved predictions files)."""
    return float(np.mean(np.load(predictions) == np.load(source_predictions)))
