"""Each long-document mechanism trained for what it does, from the same pretrained checkpoint and with the same
number of optimizer steps (recorded per run):

* ``truncate-512`` — the classifier fine-tuned on each document's first ``chunk_tokens`` tokens;
* ``chunked-512`` — fine-tuned on ``chunk_tokens``-token chunks that carry their document's label (at inference the
  chunks' logits are averaged, ``tasks/longdoc/mechanisms.py``);
* ``hierarchical`` — chunks encoded on their own, their [CLS] vectors mixed by one small transformer layer, trained
  end to end on documents up to ``long_train.max_tokens`` (``tasks/longdoc/hierarchical.py``);
* ``sliding-window`` / ``full-long`` — long-ified first (``tasks/longdoc/longify.py``), then fine-tuned on inputs
  up to ``long_train.max_tokens``: Longformer's recipe (a long model that never saw a long input cannot use one).

Head: a linear probe's (``long_train.head_init: probe``, ``tasks/core/probe.py``, LP-FT): logistic regression on the
pretrained encoder's features of each training document's first ``chunk_tokens`` tokens (computed once, shared by
every mechanism), C on validation; the fine-tune starts from it instead of a random head.

Class imbalance: class-weighted cross-entropy (``long_train.class_weights``). Choice on validation: after every
epoch the mechanism is scored on the validation split (macro-F1, as it classifies at inference) and the best epoch's
weights are kept (``long_train.select_on_validation``). Steps: ``max_steps``, else epochs over
the training *documents* (the same for every mechanism, so chunked training sees more chunks per step, not more
steps). The shared loop is ``tasks.core.train.train_loop`` (resumable checkpoints, progress bar, DDP).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
from prefect import task
from tqdm.auto import tqdm

from tasks.core import data as data_mod
from tasks.core import models, probe
from tasks.core.config import LongConfig, LongTrainConfig, ModelConfig
from tasks.core.orchestrate import CACHE
from tasks.core.train import set_seed, train_loop
from tasks.longdoc import hierarchical, longify, mechanisms

log = logging.getLogger(__name__)

SHORT = ("truncate-512", "chunked-512")
LONG = ("sliding-window", "full-long", "hierarchical")


def class_weights(labels: list[int], n_classes: int) -> torch.Tensor:
    """scikit-learn's "balanced" weights for the classes present in training; a class absent from it gets 1."""
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(labels)
    w = np.ones(n_classes)
    w[present] = compute_class_weight("balanced", classes=present, y=labels)
    return torch.tensor(w, dtype=torch.float32)


def chunk_texts(tokenizer, texts: list[str], labels: list[int], chunk_tokens: int, max_tokens: int):
    """Cut each document into pieces of ``chunk_tokens - 2`` tokens (room for [CLS]/[SEP]), up to ``max_tokens``, as
    substrings of the original text (token offsets, so nothing is lost to decoding); each keeps the label."""
    out_texts, out_labels = [], []
    size = chunk_tokens - 2
    for text, label in zip(texts, labels):
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"][:max_tokens]
        for start in range(0, max(1, len(offsets)), size):
            piece = offsets[start : start + size]
            out_texts.append(text[piece[0][0] : piece[-1][1]] if piece else text)
            out_labels.append(label)
    return out_texts, out_labels


def validation_scorer(mechanism: str, tokenizer_source: str, long_cfg: LongConfig, data: dict, chunk_tokens: int):
    """-> score(model) = validation macro-F1 of the model being trained, classified as at inference."""
    from sklearn.metrics import f1_score

    labels = data["labels"]
    val = data_mod.load_split(data["paths"]["val"])
    texts, y = val["text"].tolist(), [labels.index(x) for x in val["label"]]

    def score(model) -> float:
        run, _ = mechanisms.classifier_for(mechanism, tokenizer_source, long_cfg, model=model, chunk_tokens=chunk_tokens)
        with torch.inference_mode():
            preds = [int(run(t).argmax(-1)) for t in texts]
        return float(f1_score(y, preds, labels=list(range(len(labels))), average="macro", zero_division=0))

    return score


def first_tokens_features(model_cfg: ModelConfig, labels: list[str], texts: list[str], chunk_tokens: int,
                          device: torch.device, desc: str = "") -> tuple[np.ndarray, np.ndarray]:
    """The pretrained classifier's (head inputs, [CLS] vectors) over each text's first ``chunk_tokens`` tokens."""
    tokenizer = models.load_tokenizer(model_cfg.source, model_cfg.trust_remote_code, model_cfg.revision)
    model = models.load_classifier(model_cfg.source, labels, model_cfg.trust_remote_code, model_cfg.revision).to(device)

    def forward(m, batch):
        enc = tokenizer(batch, truncation=True, max_length=chunk_tokens, padding=True, return_tensors="pt").to(device)
        return m(**enc, output_hidden_states=True).hidden_states[-1][:, 0]

    batches = [texts[i : i + 16] for i in range(0, len(texts), 16)]
    return probe.head_inputs(model, forward, tqdm(batches, desc=f"probe features ({desc})", unit="batch",
                                                  mininterval=2.0))


def base_features(model_cfg: ModelConfig, data: dict, chunk_tokens: int, device: torch.device) -> dict:
    """The pretrained classifier's head inputs and [CLS] vectors over the first ``chunk_tokens`` tokens of the train
    and validation documents: {"train_head", "train_cls", "val_head", "val_cls"}. Cached beside the data splits (one
    forward pass over the training set, shared by every mechanism and seed)."""
    import hashlib
    import json
    import os

    key = hashlib.sha256(json.dumps([model_cfg.source, model_cfg.revision, chunk_tokens]).encode()).hexdigest()[:12]
    cache = Path(data["dir"]) / f"probe-features-{key}.npz"
    if cache.is_file():
        with np.load(cache) as f:
            return {k: f[k] for k in f.files}
    out = {}
    for split in ("train", "val"):
        texts = data_mod.load_split(data["paths"][split])["text"].tolist()
        out[f"{split}_head"], out[f"{split}_cls"] = first_tokens_features(model_cfg, data["labels"], texts,
                                                                          chunk_tokens, device, split)
    tmp = cache.with_name(f"{cache.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **out)
    os.replace(tmp, cache)
    return out


def init_head(mechanism: str, target, model_cfg: ModelConfig, train_cfg: LongTrainConfig, data: dict) -> dict:
    """Set ``target``'s head to a linear probe fitted on the pretrained encoder's features (see the module docstring)
    -> {"probe_C", "probe_val_macro_f1"}. The hierarchical model's head reads its chunk mixer's output: its features
    are each document's first-chunk [CLS] vector through that (fresh) mixer."""
    labels = data["labels"]
    feats = base_features(model_cfg, data, train_cfg.chunk_tokens, models.pick_device(train_cfg.device))
    y = {s: [labels.index(x) for x in data_mod.load_split(data["paths"][s])["label"]] for s in ("train", "val")}
    if mechanism == "hierarchical":
        was = target.training
        target.eval()
        with torch.inference_mode():
            def pooled(cls):
                v = torch.from_numpy(cls).to(target.chunk_position.weight)[:, None, :]
                return target.pool(v, torch.ones(v.shape[:2], dtype=torch.bool, device=v.device)).float().cpu().numpy()
            x = {s: pooled(feats[f"{s}_cls"]) for s in ("train", "val")}
        target.train(was)
    else:
        x = {s: feats[f"{s}_head"] for s in ("train", "val")}
    weight, bias, info = probe.fit((x["train"], y["train"]), (x["val"], y["val"]), len(labels),
                                   balanced=train_cfg.class_weights)
    probe.set_head(target, weight, bias)
    log.info("%s: head from a linear probe (C=%g, validation macro-F1 %.4f on first-%d-token features)",
             mechanism, info["C"], info["val_macro_f1"], train_cfg.chunk_tokens)
    return {"probe_C": info["C"], "probe_val_macro_f1": info["val_macro_f1"]}


def steps_for(n_docs: int, cfg: LongTrainConfig) -> int:
    return cfg.max_steps or max(1, math.ceil(math.ceil(n_docs / cfg.batch_size) * cfg.epochs))


def train_mechanism(mechanism: str, model_cfg: ModelConfig, long_cfg: LongConfig, train_cfg: LongTrainConfig,
                    data: dict, seed: int, work_dir: str) -> dict:
    """-> {"model_dir", "mechanism", "steps", "train_seconds", ...}. Resumes from its checkpoint; a finished folder
    (manifest written last) is reused."""
    if mechanism not in SHORT + LONG:
        raise ValueError(f"unknown mechanism {mechanism!r}: trainable ones are {', '.join(SHORT + LONG)}")
    work = Path(work_dir)
    final = work / "model"
    if (final / models.MANIFEST).is_file():
        return {"model_dir": str(final), "mechanism": mechanism, "reused": True,
                **models.read_manifest(final).get("train", {})}
    work.mkdir(parents=True, exist_ok=True)
    set_seed(seed)
    labels = data["labels"]
    train = data_mod.load_split(data["paths"]["train"])
    texts, ys = train["text"].tolist(), [labels.index(x) for x in train["label"]]
    tokenizer = models.load_tokenizer(model_cfg.source, model_cfg.trust_remote_code, model_cfg.revision)
    tokenizer.model_max_length = 10**9
    steps = steps_for(len(texts), train_cfg)
    cfg = train_cfg.model_copy(update={"max_steps": steps})
    weights = class_weights(ys, len(labels)) if train_cfg.class_weights else None
    model = models.load_classifier(model_cfg.source, labels, model_cfg.trust_remote_code, model_cfg.revision)
    scorer = (validation_scorer(mechanism, model_cfg.source, long_cfg, data, train_cfg.chunk_tokens)
              if train_cfg.select_on_validation else None)

    head = (lambda target: init_head(mechanism, target, model_cfg, train_cfg, data)
            if train_cfg.head_init == "probe" else {})

    if mechanism in SHORT:
        probed = head(model)
        if mechanism == "chunked-512":
            texts, ys = chunk_texts(tokenizer, texts, ys, train_cfg.chunk_tokens, long_cfg.max_tokens)

        def loss_fn(m, batch, idx):
            logits = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            return torch.nn.functional.cross_entropy(logits, batch["labels"], weight=_on(weights, logits))

        stats = train_loop(model, tokenizer, texts, ys, cfg, seed, train_cfg.chunk_tokens, work, loss_fn=loss_fn,
                           desc=f"train {mechanism}", score_fn=scorer,
                           score_at_start=bool(probed))
        summary = {**{k: v for k, v in stats.items() if k != "losses"}, **probed}
        models.save_hf(model.cpu(), tokenizer, final, labels=labels, max_length=train_cfg.chunk_tokens,
                       source=model_cfg.source, train={**summary, "mechanism": mechanism, "documents": len(train)})
    elif mechanism == "hierarchical":
        max_tokens = min(train_cfg.max_tokens, long_cfg.max_tokens)
        hier = hierarchical.from_classifier(model, len(labels), train_cfg.chunk_tokens, long_cfg.max_tokens)
        probed = head(hier)

        def loss_fn(m, batch, idx):
            logits = m(batch["input_ids"], batch["attention_mask"])
            return torch.nn.functional.cross_entropy(logits, batch["labels"], weight=_on(weights, logits))

        stats = train_loop(hier, tokenizer, texts, ys, cfg, seed, max_tokens, work, loss_fn=loss_fn,
                           desc=f"train {mechanism}", score_fn=scorer,
                           score_at_start=bool(probed))
        summary = {**{k: v for k, v in stats.items() if k != "losses"}, **probed}
        hierarchical.save(hier.cpu(), tokenizer, final, labels=labels, source=model_cfg.source,
                          train={**summary, "mechanism": mechanism, "documents": len(train),
                                 "train_max_tokens": max_tokens})
    else:
        long = longify.LongClassifier(model, long_cfg.max_positions, long_cfg.attention_window,
                                      "sliding" if mechanism == "sliding-window" else "full", long_cfg.attention_backend)
        if train_cfg.gradient_checkpointing:
            long.gradient_checkpointing = True
        probed = head(long)

        def loss_fn(m, batch, idx):
            logits = m(batch["input_ids"], batch["attention_mask"])
            return torch.nn.functional.cross_entropy(logits, batch["labels"], weight=_on(weights, logits))

        stats = train_loop(long, tokenizer, texts, ys, cfg, seed, min(train_cfg.max_tokens, long_cfg.max_positions),
                           work, loss_fn=loss_fn, desc=f"train {mechanism}", score_fn=scorer,
                           score_at_start=bool(probed))
        summary = {**{k: v for k, v in stats.items() if k != "losses"}, **probed}
        longify.save_long(long.cpu(), tokenizer, final, labels=labels, source=model_cfg.source,
                          train={**summary, "mechanism": mechanism, "documents": len(train),
                                 "train_max_tokens": min(train_cfg.max_tokens, long_cfg.max_positions)})
    return {"model_dir": str(final), "mechanism": mechanism, "reused": False, **summary}


def _on(weights: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    return None if weights is None else weights.to(like.device)


def metrics(trained: dict | None) -> dict:
    """The training record of a mechanism (steps, time) under stable metric keys; nothing for untrained ones."""
    if not trained:
        return {}
    keys = {"steps": "train/steps", "train_seconds": "train/seconds", "samples_per_second": "train/samples_per_second",
            "final_loss": "train/final_loss", "best_epoch": "train/best_epoch",
            "best_val_score": "train/best_val_macro_f1", "probe_val_macro_f1": "train/probe_val_macro_f1"}
    return {k2: trained[k] for k, k2 in keys.items() if trained.get(k) is not None}


train_mechanism_task = task(train_mechanism, name="train-mechanism", cache_policy=CACHE, persist_result=True,
                            retries=1, retry_delay_seconds=2)
