"""Fine-tune a sequence classifier: seeded, progress bar, resumable checkpoints written atomically.

``fine_tune`` is a plain function: the Prefect task in the flow wraps it. A killed run leaves
``<work_dir>/checkpoint``; calling again with the same work dir resumes from that step.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from prefect import task
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from tasks.core import data as data_mod
from tasks.core import distributed, models, preprocess
from tasks.core.config import (
    AugmentConfig,
    FinetuneOverrides,
    ModelConfig,
    PreprocessConfig,
    StepContext,
    TrainConfig,
    train_with,
)
from tasks.core.orchestrate import CACHE

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.pt"
BEST_FILE = "best.safetensors"  # the weights of the best validation score so far (score_fn)


def set_seed(seed: int) -> None:
    """Seed every RNG training touches (transformers' ``set_seed``: Python, NumPy, torch, CUDA) and ask for
    deterministic kernels, warning instead of failing where an op has none (``effilm reproduce`` re-runs exactly;
    transformers' ``enable_full_determinism`` would raise on such ops instead)."""
    from transformers import set_seed as hf_set_seed

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    hf_set_seed(seed)


def batches(n: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    order = np.random.default_rng(seed + epoch).permutation(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def _save_checkpoint(model, tokenizer, optimizer, scheduler, step: int, ckpt: Path, extra: dict,
                     best_weights: dict | None = None) -> None:
    tmp = ckpt.with_name(ckpt.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    if best_weights is not None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in best_weights.items()}, tmp / BEST_FILE)
    tokenizer.save_pretrained(tmp)
    torch.save(
        {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
         "torch_rng": torch.get_rng_state(),
         # every GPU's generator too, so a resumed GPU run draws what an uninterrupted one would
         **({"cuda_rng": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {}), **extra},
        tmp / STATE_FILE,
    )
    old = ckpt.with_name(ckpt.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if ckpt.exists():
        ckpt.rename(old)
    tmp.rename(ckpt)
    shutil.rmtree(old, ignore_errors=True)


def train_loop(
    model: torch.nn.Module,
    tokenizer,
    train_texts: list[str],
    train_labels: list[int],
    cfg: TrainConfig | dict,
    seed: int,
    max_length: int,
    work_dir: str | Path,
    loss_fn: Callable | None = None,
    desc: str = "fine-tune",
    score_fn: Callable | None = None,
    score_at_start: bool = False,
) -> dict:
    """Generic resumable loop. ``loss_fn(model, batch, idx) -> loss`` defaults to cross-entropy on the labels.

    ``score_fn(model) -> float`` (higher is better, e.g. validation macro-F1): called after every epoch and at the
    end; the weights of the best call are restored at the end ("choose on validation"). Only when training lasts more
    than one epoch (one call would choose nothing) and in a single process. ``score_at_start``: the untrained model
    is a candidate too (epoch 0: a head that starts from a linear probe may already beat every fine-tuned epoch).
    The best weights ride in the checkpoint,
    so a resumed run still knows them.

    Inside a torchrun job (``tasks.core.distributed``) the model is wrapped in DDP and each rank trains on its share of
    every global batch (``idx[rank::world]``); losses are averaged over ranks; only rank 0 writes checkpoints.
    """
    cfg = TrainConfig.model_validate(cfg)
    set_seed(seed)
    work = Path(work_dir)
    ckpt = work / "checkpoint"
    rank, world = distributed.rank(), distributed.world_size()
    device = models.pick_device(cfg.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    model.to(device).train()
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    enc = tokenizer(list(train_texts), truncation=True, max_length=max_length)
    labels = torch.tensor(train_labels, dtype=torch.long)
    n, bs = len(train_labels), cfg.batch_size
    steps_per_epoch = math.ceil(n / bs)
    total = cfg.max_steps or max(1, math.ceil(steps_per_epoch * cfg.epochs))

    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    groups = [
        {"params": [p for nm, p in model.named_parameters() if p.requires_grad and not nm.endswith(no_decay)], "weight_decay": cfg.weight_decay},
        {"params": [p for nm, p in model.named_parameters() if p.requires_grad and nm.endswith(no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate)
    warmup = int(total * cfg.warmup_ratio)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, total)

    step, losses, resumed_from = 0, [], 0
    selecting = score_fn is not None and total > steps_per_epoch and world == 1
    best: dict | None = None  # {"score", "epoch", "weights"}
    scores: list[tuple[float, float]] = []  # (epoch, score)

    def consider() -> None:
        nonlocal best
        model.eval()
        score = float(score_fn(model))
        model.train()
        epoch = round(step / steps_per_epoch, 3)
        scores.append((epoch, score))
        log.info("%s: validation score %.4f after epoch %g", desc, score, epoch)
        if best is None or score > best["score"]:
            best = {"score": score, "epoch": epoch,
                    "weights": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}}
    if (ckpt / STATE_FILE).is_file():
        from safetensors.torch import load_file

        state = torch.load(ckpt / STATE_FILE, weights_only=True, map_location="cpu")
        weights = load_file(ckpt / "model.safetensors")
        model.load_state_dict(weights, strict=False)
        model.to(device)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        step = resumed_from = int(state["step"])
        losses = [tuple(x) for x in state.get("losses", [])]
        if (ckpt / BEST_FILE).is_file() and "best" in state:
            best = {**state["best"], "weights": load_file(ckpt / BEST_FILE)}
        scores = list(state.get("scores", []))
        log.info("resuming %s from checkpoint at step %d/%d (%s)", desc, step, total, ckpt)

    def collate(idx: np.ndarray) -> dict:
        feats = [{k: enc[k][i] for k in enc.keys()} for i in idx]
        batch = tokenizer.pad(feats, return_tensors="pt")
        batch["labels"] = labels[idx]
        return {k: v.to(device) for k, v in batch.items()}

    if loss_fn is None:
        def loss_fn(m, batch, idx):  # noqa: E306
            return torch.nn.functional.cross_entropy(
                m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  **({"token_type_ids": batch["token_type_ids"]} if "token_type_ids" in batch else {})).logits,
                batch["labels"])

    if selecting and score_at_start and step == 0:
        consider()
    t0 = time.perf_counter()
    seen = 0
    bar = tqdm(total=total, initial=step, desc=desc, unit="step", dynamic_ncols=True, mininterval=2.0)
    running = None
    while step < total:
        epoch, within = divmod(step, steps_per_epoch)
        for idx in batches(n, bs, seed, epoch)[within:]:
            if step >= total:
                break
            local = idx[rank::world] if world > 1 and len(idx) >= world else idx
            batch = collate(local)
            loss = loss_fn(net, batch, local)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            seen += len(idx)
            value = float(loss.detach())
            if world > 1:
                reduced = loss.detach().clone()
                torch.distributed.all_reduce(reduced)
                value = float(reduced) / world
            running = value if running is None else 0.9 * running + 0.1 * value
            losses.append((step, value))
            bar.update(1)
            bar.set_postfix(loss=f"{running:.3f}")
            if selecting and (step % steps_per_epoch == 0 or step == total):
                consider()
            if step % cfg.checkpoint_every == 0 and step < total and rank == 0:
                extra = {"losses": losses, "scores": scores}
                if best is not None:
                    extra["best"] = {"score": best["score"], "epoch": best["epoch"]}
                _save_checkpoint(model, tokenizer, optimizer, scheduler, step, ckpt, extra,
                                 best["weights"] if best is not None else None)
    bar.close()
    elapsed = time.perf_counter() - t0
    chosen = {}
    if best is not None:
        model.load_state_dict(best["weights"])
        chosen = {"best_epoch": best["epoch"], "best_val_score": best["score"], "val_scores": scores}
        log.info("%s: restored the weights of epoch %g (validation score %.4f)", desc, best["epoch"], best["score"])
    model.eval()
    return {
        **chosen,
        "steps": step,
        "resumed_from_step": resumed_from,
        "train_seconds": round(elapsed, 2),
        "samples_per_second": round(seen / elapsed, 2) if elapsed > 0 and seen else None,
        "final_loss": running,
        "losses": losses[:: max(1, len(losses) // 200)],
    }


def finetune_model(model, tokenizer, manifest: dict, ctx: StepContext, finetune: FinetuneOverrides | None, work: str,
                   loss_fn=None, desc: str = "fine-tune", preprocess_cfg: PreprocessConfig | None = None,
                   augment_cfg: AugmentConfig | None = None) -> dict:
    """Fine-tune a compressed model on the training split (the flow's ``train`` section with the step's overrides),
    with the step's normalization (else the source model's) and augmentation applied."""
    labels = manifest["labels"]
    df = data_mod.load_split(ctx.data["paths"]["train"])
    texts, ys = preprocess.augment(df["text"].tolist(), [labels.index(l) for l in df["label"]], augment_cfg, ctx.seed)
    texts = preprocess.normalize(texts, preprocess_cfg or manifest.get("preprocess"))
    return train_loop(model, tokenizer, texts, ys, train_with(ctx.train, finetune), ctx.seed,
                      manifest["max_length"], work, loss_fn=loss_fn, desc=desc)


def fine_tune(model_cfg: ModelConfig | dict, train_cfg: TrainConfig | dict, data: dict, seed: int, work_dir: str) -> dict:
    """Fine-tune ``model_cfg.source`` on ``data`` (the output of ``tasks.core.data.prepare``) -> model folder + stats.

    With ``train_cfg.nproc_per_node > 1`` this relaunches itself under torchrun (DDP, see tasks/core/distributed.py).
    """
    model_cfg, train_cfg = ModelConfig.model_validate(model_cfg), TrainConfig.model_validate(train_cfg)
    work = Path(work_dir)
    final = work / "model"
    nproc = distributed.wanted(train_cfg.nproc_per_node)
    if nproc > 1 and not (final / models.MANIFEST).is_file():
        return distributed.launch("tasks.core.train:fine_tune", {
            "model_cfg": model_cfg.model_dump(mode="json"), "train_cfg": train_cfg.model_dump(mode="json"),
            "data": data, "seed": seed, "work_dir": str(work_dir)}, nproc, work)
    if (final / models.MANIFEST).is_file():
        log.info("fine-tuned model already complete at %s; reusing it", final)
        return {"model_dir": str(final), "reused": True, **models.read_manifest(final).get("train", {})}
    work.mkdir(parents=True, exist_ok=True)
    labels = data["labels"]
    set_seed(seed)
    tokenizer = models.load_tokenizer(model_cfg.source, model_cfg.trust_remote_code, model_cfg.revision)
    model = models.load_classifier(model_cfg.source, labels, model_cfg.trust_remote_code, model_cfg.revision)
    train = data_mod.load_split(data["paths"]["train"])
    label_ids = {l: i for i, l in enumerate(labels)}
    stats = train_loop(model, tokenizer, train["text"].tolist(), [label_ids[l] for l in train["label"]],
                       train_cfg, seed, model_cfg.max_length, work)
    summary = {k: v for k, v in stats.items() if k != "losses"}
    summary["processes"] = distributed.world_size()
    if distributed.rank() != 0:
        return {"model_dir": str(final), "reused": False, **stats}
    models.save_hf(model.cpu(), tokenizer, final, labels=labels, max_length=model_cfg.max_length,
                   source=model_cfg.source, train=summary)
    shutil.rmtree(work / "checkpoint", ignore_errors=True)
    return {"model_dir": str(final), "reused": False, **stats}


# The Prefect task: skipped when inputs and training code are unchanged; a retry resumes from the checkpoint.
fine_tune_task = task(fine_tune, name="fine-tune", cache_policy=CACHE, persist_result=True, retries=1,
                      retry_delay_seconds=2)
