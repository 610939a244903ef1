"""Knowledge distillation: a student trained on the teacher's soft targets.

loss = α · T² · KL(softmax(z_t / T) ‖ softmax(z_s / T)) + (1 − α) · CE(z_s, y) + β · Σ MSE(h_s[i], h_t[map(i)])

The student is a layer-reduced copy of the teacher (``keep``) or any configured smaller model (``student``).

    compress(teacher_dir, cfg) -> model_dir   cfg: {"keep": "every_other", "student": None, "temperature": 2.0,
                                                    "alpha": 0.5, "hidden_mse": 0.0, "finetune": {...}}
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tasks.compress import layers
from tasks.core import distributed, models, train


def kd_loss(student_logits, teacher_logits, labels, temperature: float, alpha: float) -> torch.Tensor:
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, -1), F.softmax(teacher_logits / t, -1), reduction="batchmean") * t * t
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)


def make_loss(teacher, temperature: float, alpha: float, hidden_mse: float, layer_map: list[int] | None):
    teacher.eval()

    def loss_fn(student, batch, idx):
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        want_hidden = hidden_mse > 0 and layer_map is not None
        with torch.no_grad():
            t_out = teacher(**inputs, output_hidden_states=want_hidden)
        s_out = student(**inputs, output_hidden_states=want_hidden)
        loss = kd_loss(s_out.logits, t_out.logits, batch["labels"], temperature, alpha)
        if want_hidden:
            mask = batch["attention_mask"].unsqueeze(-1).float()
            for s_i, t_i in enumerate(layer_map):  # hidden_states[0] is the embedding output
                diff = (s_out.hidden_states[s_i + 1] - t_out.hidden_states[t_i + 1]) * mask
                loss = loss + hidden_mse * diff.pow(2).sum() / (mask.sum() * diff.shape[-1])
        return loss

    return loss_fn


def compress(model_dir: str, cfg: dict) -> str:
    """With ``train.nproc_per_node > 1`` (or ``finetune.nproc_per_node``) the student trains under torchrun + DDP."""
    from transformers import AutoTokenizer

    nproc = distributed.wanted({**(cfg.get("train") or {}), **(cfg.get("finetune") or {})})
    if nproc > 1:
        return distributed.launch("tasks.compress.distill:compress", {"model_dir": model_dir, "cfg": cfg}, nproc,
                                  cfg["out_dir"] + ".work")

    manifest = models.read_manifest(model_dir)
    teacher = models.load_hf_model(model_dir, manifest)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    layer_map = None
    if cfg.get("student"):
        student = models.load_classifier(cfg["student"], manifest["labels"])
        student_tok = AutoTokenizer.from_pretrained(models.resolve_source(cfg["student"]))
        if student_tok.get_vocab() != tokenizer.get_vocab():
            raise ValueError(f"distill: student {cfg['student']!r} uses a different vocabulary than the teacher")
    else:
        student = models.load_hf_model(model_dir, manifest)
        layer_map = layers.drop_layers(student, cfg.get("keep", "every_other"))
    loss_fn = make_loss(teacher, cfg.get("temperature", 2.0), cfg.get("alpha", 0.5), cfg.get("hidden_mse", 0.0), layer_map)
    stats = train.finetune_model(student, tokenizer, manifest, cfg, cfg["out_dir"] + ".work", loss_fn=loss_fn,
                                  desc="distill")
    stats["processes"] = distributed.world_size()
    if distributed.rank() != 0:  # rank 0 alone writes the model folder
        return cfg["out_dir"]
    keep = {k: manifest.get(k) for k in ("labels", "max_length", "preprocess")}
    out = models.save_hf(student.cpu(), tokenizer, cfg["out_dir"], **keep, source=cfg.get("student") or model_dir,
                         distilled_from=str(model_dir), kept_layers=layer_map,
                         train={k: v for k, v in stats.items() if k != "losses"})
    models.write_manifest(out, **{**models.read_manifest(out), "loss_curve": stats.get("losses", [])[-50:]})
    return out
