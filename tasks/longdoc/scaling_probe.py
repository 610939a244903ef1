"""One (mechanism, length) measurement of latency and peak memory in *this* process:
``python -m tasks.longdoc.scaling_probe`` is the child that ``tasks/longdoc/scaling.py`` starts for each point, so
the peak is that mechanism's own (no Prefect, no MLflow loaded). On CPU: wall time and peak RSS; on CUDA: CUDA-event
time and ``torch.cuda.max_memory_allocated`` (weights, activations and masks; not the CUDA context)."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def build(mechanism: str, length: int, window: int, model_dir: str | None = None, device: str = "cpu",
          dtype: str = "fp32", batch: int = 1, backend: str = "auto"):
    """-> (forward: callable running one batch, backend: callable naming the attention implementation it used)."""
    import torch

    from tasks.core import models
    from tasks.longdoc import longify

    dev, dt = torch.device(device), {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    src = model_dir or models.resolve_source("packaged:minilm-l6")
    base = models.load_hf_model(src) if model_dir else models.load_classifier(src, ["a", "b", "c", "d", "e"]).eval()
    cfg = base.config
    ids = torch.randint(1000, 20000, (batch, length), device=dev)
    ids[:, 0] = 101
    mask = torch.ones_like(ids)

    def ready(m):
        return m.to(device=dev, dtype=dt).eval()

    if mechanism in ("full-long", "sliding-window"):
        long = ready(longify.LongClassifier(base, max(4096, length), window,
                                            "full" if mechanism == "full-long" else "sliding", backend))
        return (lambda: long(ids, mask)), (lambda: long.last_backend)
    if mechanism in ("chunked-512", "truncate-512"):
        base = ready(base)
        n = 1 if mechanism == "truncate-512" else -(-length // 512)
        chunks = torch.randint(1000, 20000, (batch * n, min(512, length)), device=dev)
        return (lambda: base(input_ids=chunks, attention_mask=torch.ones_like(chunks)).logits), (lambda: "sdpa")
    common = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
                  num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.intermediate_size, num_labels=5)
    if mechanism == "hf-longformer":
        from transformers import LongformerConfig, LongformerForSequenceClassification

        m = ready(LongformerForSequenceClassification(LongformerConfig(**common, attention_window=window,
                                                                       max_position_embeddings=max(4096, length) + 2)))
        glob = torch.zeros_like(ids)
        glob[:, 0] = 1
        return (lambda: m(input_ids=ids, attention_mask=mask, global_attention_mask=glob).logits), (lambda: "hf")
    if mechanism == "bigbird":
        from transformers import BigBirdConfig, BigBirdForSequenceClassification

        m = ready(BigBirdForSequenceClassification(BigBirdConfig(**common, attention_type="block_sparse", block_size=64,
                                                                 num_random_blocks=3,
                                                                 max_position_embeddings=max(4096, length))))
        return (lambda: m(input_ids=ids, attention_mask=mask).logits), (lambda: "hf")
    raise ValueError(f"unknown mechanism {mechanism!r}")


def child(mechanism: str, length: int, window: int, iters: int, model_dir: str | None = None, device: str = "cpu",
          dtype: str = "fp32", batch: int = 1, backend: str = "auto") -> dict:
    import torch

    from tasks.core import models
    from tasks.measure.latency import peak_rss_mb

    torch.manual_seed(0)
    dev = models.pick_device(device)
    fn, which = build(mechanism, length, window, model_dir, str(dev), dtype, batch, backend)
    cuda = dev.type == "cuda"
    with torch.inference_mode():
        fn()  # warm-up (and compile)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(iters):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1000)
            else:
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
    row = {"mechanism": mechanism, "length": length, "latency_ms": round(1000 * statistics.median(times), 2),
           "device": dev.type, "dtype": dtype, "batch": batch, "attention_backend": which(), "iters": iters}
    if cuda:
        row["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    else:
        row["peak_rss_mb"] = peak_rss_mb()
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="one (mechanism, length) measurement; prints JSON")
    ap.add_argument("mechanism")
    ap.add_argument("length", type=int)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--model-dir")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--backend", default="auto", help="sliding attention: auto | dense | flex | blocked")
    a = ap.parse_args(argv)
    print(json.dumps(child(a.mechanism, a.length, a.window, a.iters, a.model_dir, a.device, a.dtype, a.batch,
                           a.backend)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
