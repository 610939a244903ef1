"""Knowledge distillation: a student trained on the teacher's soft targets.

loss = α · T² · KL(softmax(z_t / T) ‖ softmax(z_s / T)) + (1 − α) · CE(z_s, y) + β · Σ MSE(h_s[i], h_t[map(i)])

The student is a layer-reduced copy of the teacher (``keep``) or any configured smaller model (``student``).

    compress(teacher_dir, step: DistillStep, ctx) -> model_dir   (step: keep, student, temperature, alpha, hidden_mse,
                                                                   finetune; defaults in tasks/core/config.py)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tasks.compress import layers
from tasks.core import distributed, models, train
from tasks.core.config import DistillStep, StepContext


def kd_loss(student_logits, teacher_logits, labels, temperature: float, alpha: float) -> torch.Tensor:
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, -1), F.softmax(teacher_logits / t, -1), reduction="batchmean") * t * t
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)


def make_loss(teacher, temperature: float, alpha: float, hidden_mse: float, layer_map: list[int] | None):
    teacher.eval()

    def loss_fn(student, batch, idx):
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if next(teacher.parameters()).device != batch["input_ids"].device:  # the teacher lives where the student trains
            teacher.to(batch["input_ids"].device)
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


def compress_json(model_dir: str, step: dict, ctx: dict) -> str:
    """``compress`` from JSON arguments: the entry point of each torchrun process."""
    return compress(model_dir, DistillStep.model_validate(step), StepContext.model_validate(ctx))


def compress(model_dir: str, step: DistillStep, ctx: StepContext) -> str:
    """With ``train.nproc_per_node > 1`` the student trains under torchrun + DDP."""
    from transformers import AutoTokenizer

    nproc = distributed.wanted(ctx.train.nproc_per_node)
    if nproc > 1:
        return distributed.launch("tasks.compress.distill:compress_json", {
            "model_dir": model_dir, "step": step.model_dump(mode="json"), "ctx": ctx.model_dump(mode="json")},
            nproc, ctx.out_dir + ".work")

    manifest = models.read_manifest(model_dir)
    teacher = models.load_hf_model(model_dir, manifest)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    layer_map = None
    if step.student:
        student = models.load_classifier(step.student, manifest["labels"])
        student_tok = AutoTokenizer.from_pretrained(models.resolve_source(step.student))
        if student_tok.get_vocab() != tokenizer.get_vocab():
            raise ValueError(f"distill: student {step.student!r} uses a different vocabulary than the teacher")
    else:
        student = models.load_hf_model(model_dir, manifest)
        layer_map = layers.drop_layers(student, step.keep)
    loss_fn = make_loss(teacher, step.temperature, step.alpha, step.hidden_mse, layer_map)
    stats = train.finetune_model(student, tokenizer, manifest, ctx, step.finetune, ctx.out_dir + ".work", loss_fn=loss_fn,
                                  desc="distill")
    stats["processes"] = distributed.world_size()
    if distributed.rank() != 0:  # rank 0 alone writes the model folder
        return ctx.out_dir
    out = models.save_hf(student.cpu(), tokenizer, ctx.out_dir, **{**models.inherited(manifest),
                                                                   "source": step.student or str(model_dir)},
                         distilled_from=str(model_dir), kept_layers=layer_map,
                         train={k: v for k, v in stats.items() if k != "losses"},
                         loss_curve=stats.get("losses", [])[-50:])
    return out
