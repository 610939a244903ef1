"""Lightweight architectures (MobileBERT, TinyBERT, DistilBERT, ... or a local folder) fine-tuned exactly like the
teacher, as variants beside the compressed ones.

    compress(model_dir, step: ArchitectureStep, ctx) -> model_dir   (step.model: "google/mobilebert-uncased", ...)

``model_dir`` (the teacher) only provides the label set and sequence length: the architecture starts from its
own pretrained weights.
"""

from __future__ import annotations

from tasks.core import models, train
from tasks.core.config import ArchitectureStep, StepContext


def compress(model_dir: str, step: ArchitectureStep, ctx: StepContext) -> str:
    manifest = models.read_manifest(model_dir)
    tokenizer = models.load_tokenizer(step.model, step.trust_remote_code)
    model = models.load_classifier(step.model, manifest["labels"], step.trust_remote_code)
    stats = train.finetune_model(model, tokenizer, manifest, ctx, step.finetune, ctx.out_dir + ".work",
                                 desc=f"fine-tune {step.model}")
    return models.save_hf(model.cpu(), tokenizer, ctx.out_dir, **{**models.inherited(manifest), "source": step.model},
                          train={k: v for k, v in stats.items() if k != "losses"})
