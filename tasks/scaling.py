"""Scaling of attention mechanisms with document length: latency and peak memory per (mechanism, length), batch 1,
each measured in a fresh child process (``python -m tasks.scaling``) so peak RSS is its own.

The long-ified mechanisms use the packaged MiniLM weights (or a given model folder); Hugging Face Longformer and
BigBird use random weights of the same sizes (only time and memory are measured).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def build(mechanism: str, length: int, window: int, model_dir: str | None = None):
    import torch

    from tasks import longify, models

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

    from tasks.benchmark import peak_rss_mb

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


def measure(mechanism: str, length: int, window: int, iters: int, model_dir: str | None = None, timeout: int = 900) -> dict:
    cmd = [sys.executable, "-m", "tasks.scaling", mechanism, str(length), "--window", str(window), "--iters", str(iters)]
    if model_dir:
        cmd += ["--model-dir", str(model_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=Path(__file__).resolve().parent.parent,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if proc.returncode != 0:
        return {"mechanism": mechanism, "length": length, "error": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def sweep(mechanisms: list[str], lengths: list[int], window: int, iters: int, model_dir: str | None = None) -> list[dict]:
    rows = []
    for n in lengths:
        for m in mechanisms:
            rows.append(measure(m, n, window, iters, model_dir))
    return rows


def plot(rows: list[dict], key: str, ylabel: str, path: str | Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mech in dict.fromkeys(r["mechanism"] for r in rows):
        pts = sorted((r["length"], r[key]) for r in rows if r["mechanism"] == mech and key in r)
        if pts:
            ax.plot(*zip(*pts), marker="o", label=mech)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("document length (tokens), batch 1")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def table(rows: list[dict]) -> str:
    mechs = list(dict.fromkeys(r["mechanism"] for r in rows))
    lengths = sorted({r["length"] for r in rows})
    get = {(r["mechanism"], r["length"]): r for r in rows}
    out = ["| length | " + " | ".join(f"{m} ms / MB" for m in mechs) + " |", "|---" * (len(mechs) + 1) + "|"]
    for n in lengths:
        cells = []
        for m in mechs:
            r = get.get((m, n), {})
            cells.append(f"{r['latency_ms']} / {r['peak_rss_mb']}" if "latency_ms" in r else f"error: {r.get('error', '?')[:60]}")
        out.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(out)


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
