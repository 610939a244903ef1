"""Quantization: int8 weights for Linear layers (dynamic int8 activations at run time) and int8 weight-only
embeddings, stored as int8 + per-channel scales in safetensors (the ``int8`` model-folder format).

    compress(model_dir, cfg) -> model_dir        cfg: {"embeddings": bool, "linear": bool, "out_dir": ...}

At load time Linear layers become ``torch.ao.nn.quantized.dynamic.Linear`` (fbgemm int8 GEMM with per-channel
weight scales) and embeddings an :class:`Int8Embedding` that dequantizes only the looked-up rows, so both disk
and memory shrink. ONNX Runtime int8 (the peer every user would try) lives in ``tasks/compress/export.py``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from tasks.core import models
from tasks.core.config import QuantizeStep, StepContext

log = logging.getLogger(__name__)


class Int8Embedding(nn.Module):
    """Weight-only int8 embedding table with one fp32 scale per row."""

    def __init__(self, weight_int8: torch.Tensor, scale: torch.Tensor, padding_idx: int | None = None):
        super().__init__()
        self.register_buffer("weight_int8", weight_int8)
        self.register_buffer("scale", scale)
        self.padding_idx = padding_idx
        self.num_embeddings, self.embedding_dim = weight_int8.shape

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.weight_int8[ids].to(torch.float32) * self.scale[ids].unsqueeze(-1)


def quantize_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8, one scale per output row: w ≈ q * scale[:, None]."""
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-8).float()
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    *path, leaf = name.split(".")
    mod = model
    for part in path:
        mod = getattr(mod, part)
    return mod, leaf


def save_int8(model: nn.Module, tokenizer, out_dir: str | Path, linear: bool = True, embeddings: bool = True,
              **manifest) -> str:
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    q_linear, q_emb = [], []
    for name, mod in model.named_modules():
        if linear and isinstance(mod, nn.Linear):
            q, s = quantize_per_channel(mod.weight.detach().float())
            del state[f"{name}.weight"]
            state[f"{name}.weight_int8"], state[f"{name}.weight_scale"] = q, s
            q_linear.append(name)
        elif embeddings and isinstance(mod, nn.Embedding) and mod.num_embeddings >= 1000:
            q, s = quantize_per_channel(mod.weight.detach().float())
            del state[f"{name}.weight"]
            state[f"{name}.weight_int8"], state[f"{name}.weight_scale"] = q, s
            q_emb.append(name)
    # tied / shared tensors must not alias in safetensors
    state = {k: v.clone() for k, v in state.items()}
    with models.atomic_dir(out_dir) as tmp:
        save_file(state, str(tmp / "model.safetensors"))
        model.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        structure = models.structure_of(model)
        cfg = model.config
        uniform = structure is None or all(st == {"heads": cfg.num_attention_heads, "intermediate": cfg.intermediate_size} for st in structure)
        models.write_manifest(tmp, **{**manifest, "format": "int8", "quantized_linear": q_linear,
                                      "quantized_embeddings": q_emb, "structure": None if uniform else structure,
                                      "params": models.count_params(model)})
    return str(out_dir)


def load_int8_model(model_dir: str | Path, manifest: dict) -> nn.Module:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
        if manifest.get("structure"):
            models.apply_structure(model, manifest["structure"])
    state = load_file(str(Path(model_dir) / "model.safetensors"))
    qtensors = {k: state.pop(k) for k in [k for k in state if k.endswith((".weight_int8", ".weight_scale"))]}
    qbias = {n: state.pop(f"{n}.bias", None) for n in manifest.get("quantized_linear", [])}
    model.load_state_dict(state, strict=False, assign=True)  # the fp32 remainder, before modules are swapped
    for name in manifest.get("quantized_linear", []):
        parent, leaf = _parent(model, name)
        old = getattr(parent, leaf)
        q8, scale = qtensors[f"{name}.weight_int8"], qtensors[f"{name}.weight_scale"]
        bias = qbias[name]
        qlin = torch.ao.nn.quantized.dynamic.Linear(old.in_features, old.out_features, dtype=torch.qint8)
        qweight = torch._make_per_channel_quantized_tensor(q8, scale.double(), torch.zeros(len(scale), dtype=torch.long), 0)
        qlin.set_weight_bias(qweight, bias)
        setattr(parent, leaf, qlin)
    for name in manifest.get("quantized_embeddings", []):
        parent, leaf = _parent(model, name)
        old = getattr(parent, leaf)
        setattr(parent, leaf, Int8Embedding(qtensors[f"{name}.weight_int8"], qtensors[f"{name}.weight_scale"], old.padding_idx))
    # non-persistent buffers (position ids, default token types) are rebuilt, not stored
    for mod in model.modules():
        for bname, buf in list(mod.named_buffers(recurse=False)):
            if buf is not None and buf.is_meta:
                if bname == "position_ids":
                    mod.register_buffer(bname, torch.arange(buf.shape[-1]).expand(buf.shape), persistent=False)
                else:
                    mod.register_buffer(bname, torch.zeros(buf.shape, dtype=buf.dtype), persistent=False)
    leftover = [n for n, p in model.named_parameters() if p.is_meta]
    if leftover:
        raise ValueError(f"{model_dir}: weights missing for {leftover[:3]}")
    return model.eval()


def compress(model_dir: str, step: QuantizeStep, ctx: StepContext) -> str:
    """fp32 model folder -> int8 model folder (Linear weights and/or embedding tables)."""
    manifest = models.read_manifest(model_dir)
    if manifest.get("format") not in ("hf", None):
        raise ValueError(f"quantize needs an fp32 'hf' model folder, got format {manifest.get('format')!r} at {model_dir}")
    model = models.load_hf_model(model_dir, manifest)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return save_int8(model, tokenizer, ctx.out_dir, linear=step.linear, embeddings=step.embeddings,
                     **models.inherited(manifest), quantized_from=str(model_dir))
