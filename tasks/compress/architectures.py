"""Lightweight architectures (MobileBERT, TinyBERT, DistilBERT, ... or a local folder) fine-tuned exactly like the
teacher, as variants beside the compressed ones.

    compress(model_dir, cfg) -> model_dir   cfg: {"model": "google/mobilebert-uncased", "finetune": {...}}

``model_dir`` (the teacher) only provides the label set and sequence length: the architecture starts from its
own pretrained weights.
"""

from __future__ import annotations

from tasks.core import models, train


def compress(model_dir: str, cfg: dict) -> str:
    manifest = models.read_manifest(model_dir)
    tokenizer = models.load_tokenizer(cfg["model"], cfg.get("trust_remote_code", False))
    model = models.load_classifier(cfg["model"], manifest["labels"], cfg.get("trust_remote_code", False))
    stats = train.finetune_model(model, tokenizer, manifest, cfg, cfg["out_dir"] + ".work", desc=f"fine-tune {cfg['model']}")
    return models.save_hf(model.cpu(), tokenizer, cfg["out_dir"], labels=manifest["labels"],
                          max_length=manifest.get("max_length", 128), source=cfg["model"],
                          train={k: v for k, v in stats.items() if k != "losses"})
