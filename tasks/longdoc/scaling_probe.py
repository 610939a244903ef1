"""One (mechanism, length) measurement of latency and peak RSS, batch 1, in *this* process:
``python -m tasks.longdoc.scaling_probe`` is the child that ``tasks/longdoc/scaling.py`` starts for each point, so
the peak RSS is that mechanism's own (no Prefect, no MLflow loaded)."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def build(mechanism: str, length: int, window: int, model_dir: str | None = None):
    import torch

    from tasks.core import models
    from tasks.longdoc import longify

    src = model_dir or models.resolve_source("packaged:minilm-l6")
    base = models.load_hf_model(src) if model_dir else models.load_classifier(src, ["a", "b", "c", "d", "e"]).eval()
    cfg = base.config
    ids = torch.randint(1000, 20000, (1, length))
    ids[0, 0] = 101
    mask = torch.ones_like(ids)
    if mechanism in ("full-long", "sliding-window"):
        long = longify.LongClassifier(base, max(4096, length), window, "full" if mechanism == "full-long" else "sliding").eval()
        return lambda: long(ids, mask)
    if mechanism in ("chunked-512", "truncate-512"):
        n = 1 if mechanism == "truncate-512" else -(-length // 512)
        chunks = torch.randint(1000, 20000, (n, min(512, length)))
        return lambda: base(input_ids=chunks, attention_mask=torch.ones_like(chunks)).logits.mean(0)
    common = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
                  num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.intermediate_size, num_labels=5)
    if mechanism == "hf-longformer":
        from transformers import LongformerConfig, LongformerForSequenceClassification

        m = LongformerForSequenceClassification(LongformerConfig(**common, attention_window=window,
                                                                 max_position_embeddings=max(4096, length) + 2)).eval()
        glob = torch.zeros_like(ids)
        glob[0, 0] = 1
        return lambda: m(input_ids=ids, attention_mask=mask, global_attention_mask=glob).logits
    if mechanism == "bigbird":
        from transformers import BigBirdConfig, BigBirdForSequenceClassification

        m = BigBirdForSequenceClassification(BigBirdConfig(**common, attention_type="block_sparse", block_size=64,
                                                           num_random_blocks=3, max_position_embeddings=max(4096, length))).eval()
        return lambda: m(input_ids=ids, attention_mask=mask).logits
    raise ValueError(f"unknown mechanism {mechanism!r}")


def child(mechanism: str, length: int, window: int, iters: int, model_dir: str | None = None) -> dict:
    import torch

    from tasks.measure.latency import peak_rss_mb

    torch.manual_seed(0)
    fn = build(mechanism, length, window, model_dir)
    with torch.inference_mode():
        fn()  # warm-up
        times = []
        for _ in range(iters):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return {"mechanism": mechanism, "length": length, "latency_ms": round(1000 * statistics.median(times), 1),
            "peak_rss_mb": peak_rss_mb(), "iters": iters}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="one (mechanism, length) measurement; prints JSON")
    ap.add_argument("mechanism")
    ap.add_argument("length", type=int)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--model-dir")
    a = ap.parse_args(argv)
    print(json.dumps(child(a.mechanism, a.length, a.window, a.iters, a.model_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
