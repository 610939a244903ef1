"""Pruning.

* **Unstructured** L1 magnitude pruning of the encoder's Linear weights (``torch.nn.utils.prune``, made permanent),
  stored sparse on disk (non-zero values + a bit mask: the ``hf-sparse`` format). Dense kernels still run at load
  time, so latency does not improve — the benchmark says so honestly.
* **Structured** pruning that physically removes attention heads and FFN neurons (importance from weight norms or
  first-order gradient saliency), followed by a short recovery fine-tune: smaller matrices, real speed-up.

    compress_unstructured(model_dir, cfg) -> model_dir    cfg: {"sparsity": 0.5, "scope": "global" | "layer"}
    compress_structured(model_dir, cfg) -> model_dir      cfg: {"ffn_fraction": 0.5, "heads_fraction": 0.0,
                                                                 "importance": "weight" | "gradient", "recovery": {...}}
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from tasks.core import data as data_mod
from tasks.core import models, preprocess, train
from tasks.core.config import PruneStructuredStep, PruneUnstructuredStep, StepContext

log = logging.getLogger(__name__)


def encoder_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    base = getattr(model, model.base_model_prefix)
    return [(f"{model.base_model_prefix}.encoder.{n}", m) for n, m in base.encoder.named_modules() if isinstance(m, nn.Linear)]


# ------------------------------------------------------------------------------------------ unstructured


def magnitude_prune(model: nn.Module, sparsity: float, scope: str = "global") -> float:
    """Zero the smallest-|w| fraction of encoder Linear weights, permanently. Returns the achieved sparsity."""
    import torch.nn.utils.prune as tprune

    linears = encoder_linears(model)
    if scope == "global":
        tprune.global_unstructured([(m, "weight") for _, m in linears], pruning_method=tprune.L1Unstructured, amount=sparsity)
    else:
        for _, m in linears:
            tprune.l1_unstructured(m, "weight", amount=sparsity)
    for _, m in linears:
        tprune.remove(m, "weight")  # bake the mask into the weight: no mask buffers, no re-parametrisation
    zeros = sum(int((m.weight == 0).sum()) for _, m in linears)
    return zeros / sum(m.weight.numel() for _, m in linears)


def save_sparse(model: nn.Module, tokenizer, out_dir: str | Path, **manifest) -> str:
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    sparse = []
    for name, m in encoder_linears(model):
        w = m.weight.detach()
        mask = (w != 0).flatten().numpy()
        del state[f"{name}.weight"]
        state[f"{name}.weight_values"] = w.flatten()[torch.from_numpy(mask)].contiguous()
        state[f"{name}.weight_bitmask"] = torch.from_numpy(np.packbits(mask))
        sparse.append({"name": name, "shape": list(w.shape)})
    with models.atomic_dir(out_dir) as tmp:
        save_file(state, str(tmp / "model.safetensors"))
        model.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        models.write_manifest(tmp, **{**manifest, "format": "hf-sparse", "sparse": sparse,
                                      "structure": manifest.get("structure"), "params": models.count_params(model)})
    return str(out_dir)


def load_sparse_model(model_dir: str | Path, manifest: dict):
    """Densify the stored sparse weights into a regular model (dense kernels at run time)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_config(config)
    if manifest.get("structure"):
        models.apply_structure(model, manifest["structure"])
    state = load_file(str(Path(model_dir) / "model.safetensors"))
    for item in manifest["sparse"]:
        name, shape = item["name"], item["shape"]
        n = int(np.prod(shape))
        mask = torch.from_numpy(np.unpackbits(state.pop(f"{name}.weight_bitmask").numpy())[:n].astype(bool))
        dense = torch.zeros(n, dtype=torch.float32)
        dense[mask] = state.pop(f"{name}.weight_values")
        state[f"{name}.weight"] = dense.view(shape)
    model.load_state_dict(state, strict=False)
    return model.eval()


def compress_unstructured(model_dir: str, step: PruneUnstructuredStep, ctx: StepContext) -> str:
    from transformers import AutoTokenizer

    manifest = models.read_manifest(model_dir)
    model = models.load_hf_model(model_dir, manifest)
    achieved = magnitude_prune(model, step.sparsity, step.scope)
    return save_sparse(model, AutoTokenizer.from_pretrained(model_dir), ctx.out_dir, **models.inherited(manifest),
                       structure=manifest.get("structure"), sparsity=round(achieved, 4), pruned_from=str(model_dir))


# --------------------------------------------------------------------------------------------- structured


def _head_slices(n_heads: int, head_size: int, keep: list[int]) -> torch.Tensor:
    return torch.cat([torch.arange(h * head_size, (h + 1) * head_size) for h in keep])


def _select_linear(lin: nn.Linear, idx: torch.Tensor, dim: int) -> nn.Linear:
    """New Linear keeping output rows (dim=0) or input columns (dim=1) ``idx``."""
    w = lin.weight.detach().index_select(dim, idx).clone()
    new = nn.Linear(w.shape[1], w.shape[0], bias=lin.bias is not None)
    new.weight.data.copy_(w)
    if lin.bias is not None:
        new.bias.data.copy_(lin.bias.detach()[idx] if dim == 0 else lin.bias.detach())
    return new


def importance(model: nn.Module, mode: str, batches: list[dict] | None = None) -> list[dict]:
    """Per layer: scores for each head and each FFN neuron (higher = more important)."""
    layers = models.encoder_layers(model)
    if mode == "gradient":
        if not batches:
            raise ValueError("gradient importance needs calibration batches")
        model.zero_grad(set_to_none=True)
        model.train()
        for batch in batches:
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            torch.nn.functional.cross_entropy(out.logits, batch["labels"]).backward()
        model.eval()
    scores = []
    for layer in layers:
        att, hs = layer.attention.self, layer.attention.self.attention_head_size
        n_heads = att.query.out_features // hs
        if mode == "gradient":
            def sal(lin: nn.Linear) -> torch.Tensor:  # first-order Taylor: |w * dL/dw|
                return (lin.weight * lin.weight.grad).abs().detach()
        else:
            def sal(lin: nn.Linear) -> torch.Tensor:
                return lin.weight.abs().detach()
        qkv = sum(sal(getattr(att, n)).sum(1) for n in ("query", "key", "value"))  # per output row
        out_cols = sal(layer.attention.output.dense).sum(0)  # per input column
        head = (qkv + out_cols).view(n_heads, hs).sum(1)
        ffn = sal(layer.intermediate.dense).sum(1) + sal(layer.output.dense).sum(0)
        scores.append({"heads": head, "ffn": ffn})
    model.zero_grad(set_to_none=True)
    return scores


def prune_structure(model: nn.Module, scores: list[dict], ffn_fraction: float, heads_fraction: float) -> list[dict]:
    """Physically remove the least important heads / FFN neurons in every layer; returns the new structure."""
    for layer, sc in zip(models.encoder_layers(model), scores):
        att, hs = layer.attention.self, layer.attention.self.attention_head_size
        n_heads = len(sc["heads"])
        keep_heads = max(1, n_heads - int(round(heads_fraction * n_heads)))
        if keep_heads < n_heads:
            heads = sorted(torch.topk(sc["heads"], keep_heads).indices.tolist())
            idx = _head_slices(n_heads, hs, heads)
            for name in ("query", "key", "value"):
                setattr(att, name, _select_linear(getattr(att, name), idx, 0))
            att.num_attention_heads, att.all_head_size = keep_heads, keep_heads * hs
            layer.attention.output.dense = _select_linear(layer.attention.output.dense, idx, 1)
        width = len(sc["ffn"])
        keep_ffn = max(1, width - int(round(ffn_fraction * width)))
        if keep_ffn < width:
            idx = torch.sort(torch.topk(sc["ffn"], keep_ffn).indices).values
            layer.intermediate.dense = _select_linear(layer.intermediate.dense, idx, 0)
            layer.output.dense = _select_linear(layer.output.dense, idx, 1)
    return models.structure_of(model)


def compress_structured(model_dir: str, step: PruneStructuredStep, ctx: StepContext) -> str:
    """Remove heads/FFN neurons, then recover with a short fine-tune on the training split."""
    from transformers import AutoTokenizer

    manifest = models.read_manifest(model_dir)
    model = models.load_hf_model(model_dir, manifest)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    labels = manifest["labels"]
    train_df = data_mod.load_split(ctx.data["paths"]["train"])
    label_ids = [labels.index(l) for l in train_df["label"]]
    max_length = manifest["max_length"]
    before = models.count_params(model)
    batches = None
    if step.importance == "gradient":
        rng = np.random.default_rng(ctx.seed)
        pick = rng.permutation(len(train_df))[: step.calibration_batches * 8]
        batches = []
        for i in range(0, len(pick), 8):
            sel = pick[i : i + 8]
            texts = preprocess.normalize(train_df["text"].iloc[sel].tolist(), manifest.get("preprocess"))
            enc = models.encode(tokenizer, texts, max_length)
            batches.append({**enc, "labels": torch.tensor([label_ids[j] for j in sel])})
    scores = importance(model, step.importance, batches)
    prune_structure(model, scores, step.ffn_fraction, step.heads_fraction)
    after = models.count_params(model)
    log.info("structured pruning: %d -> %d parameters (%.1f%%)", before, after, 100 * after / before)
    stats = {}
    if step.recovery.epochs or step.recovery.max_steps:  # a recovery fine-tune only when one is asked for
        stats = train.finetune_model(model, tokenizer, manifest, ctx, step.recovery, ctx.out_dir + ".work",
                                     desc="recovery fine-tune")
    out = models.save_hf(model.cpu(), tokenizer, ctx.out_dir, **models.inherited(manifest), pruned_from=str(model_dir),
                         params_before=before, recovery={k: v for k, v in stats.items() if k != "losses"})
    return out
