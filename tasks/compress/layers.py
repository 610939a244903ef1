"""Layer reduction: keep k of the N encoder layers (e.g. every other one), then fine-tune.

    compress(model_dir, cfg) -> model_dir     cfg: {"keep": [0, 2, 4] | "every_other" | k, "finetune": {...}}
"""

from __future__ import annotations

import torch.nn as nn

from tasks.core import config, models, train
from tasks.core.config import LayerReduceStep, StepContext


def keep_indices(n_layers: int, keep) -> list[int]:
    if keep == "every_other":
        return list(range(0, n_layers, 2))
    if isinstance(keep, int):
        if not 1 <= keep <= n_layers:
            raise ValueError(f"keep={keep}: must be between 1 and {n_layers}")
        step = n_layers / keep  # spread k layers evenly, always keeping the first
        return sorted({int(i * step) for i in range(keep)})
    idx = sorted(set(int(i) for i in keep))
    if not idx or idx[0] < 0 or idx[-1] >= n_layers:
        raise ValueError(f"keep={keep}: layer indices must be within 0..{n_layers - 1}")
    return idx


def drop_layers(model: nn.Module, keep) -> list[int]:
    """Keep only the given encoder layers (in place); updates the config. Returns the kept indices."""
    base = getattr(model, model.base_model_prefix)
    layers = base.encoder.layer
    idx = keep_indices(len(layers), keep)
    base.encoder.layer = nn.ModuleList([layers[i] for i in idx])
    model.config.num_hidden_layers = len(idx)
    return idx


def compress(model_dir: str, step: LayerReduceStep, ctx: StepContext) -> str:
    from transformers import AutoTokenizer

    manifest = models.read_manifest(model_dir)
    model = models.load_hf_model(model_dir, manifest)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    kept = drop_layers(model, step.keep)
    stats = {}
    if config.train_with(ctx.train, step.finetune).epochs or step.finetune.max_steps:  # epochs: 0 -> no fine-tune
        stats = train.finetune_model(model, tokenizer, manifest, ctx, step.finetune, ctx.out_dir + ".work",
                                     desc=f"fine-tune {len(kept)} layers", preprocess_cfg=step.preprocess,
                                     augment_cfg=step.augment)
    inherited = models.inherited(manifest)
    if step.preprocess is not None:  # the normalization it was trained with is applied at inference too
        inherited["preprocess"] = step.preprocess.model_dump()
    return models.save_hf(model.cpu(), tokenizer, ctx.out_dir, **inherited, kept_layers=kept, reduced_from=str(model_dir),
                          train={k: v for k, v in stats.items() if k != "losses"})
