"""Case study 2 scaling benchmark: latency and peak memory of each attention mechanism as documents grow.

    python benchmarks/long_attention.py [--lengths 512 1024 2048 4096] [--window 256]

Every mechanism runs the same MiniLM-sized encoder (6 layers, 384 hidden, 12 heads x 32; the packaged
all-MiniLM-L6-v2 weights where the architecture allows), batch 1, all cores, each (mechanism, length) in a fresh
process so peak RSS is its own:

* ``full-sdpa``   — the long-ified model with SDPA full attention over the whole input (O(n²));
* ``sliding-ours``— the long-ified model with our blocked sliding-window attention (window = 128 each side) + global [CLS];
* ``hf-longformer``— Hugging Face ``LongformerForSequenceClassification``, same sizes, ``attention_window`` 256;
* ``chunked-512`` — the 512-token model over ceil(n / 512) chunks in one batch;
* ``bigbird``     — Hugging Face ``BigBirdForSequenceClassification`` block-sparse (block 64, 3 random blocks).

Hugging Face models use random weights of the same sizes: only time and memory are measured here.
Writes benchmarks/results/long_attention.{json,md} and long_attention_{time,memory}.png.
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

from common import RESULTS, ROOT, write_results

MECHANISMS = ["full-sdpa", "sliding-ours", "hf-longformer", "chunked-512", "bigbird"]


def build(mechanism: str, length: int, window: int):
    import torch

    from tasks import longify, models

    base = models.load_classifier("packaged:minilm-l6", ["a", "b", "c", "d", "e"]).eval()
    cfg = base.config
    ids = torch.randint(1000, 20000, (1, length))
    ids[0, 0] = 101
    mask = torch.ones_like(ids)
    if mechanism in ("full-sdpa", "sliding-ours"):
        long = longify.LongClassifier(base, max(4096, length), window, "full" if mechanism == "full-sdpa" else "sliding").eval()
        return lambda: long(ids, mask)
    if mechanism == "chunked-512":
        n = -(-length // 512)
        chunks = torch.randint(1000, 20000, (n, 512))
        cmask = torch.ones_like(chunks)
        return lambda: base(input_ids=chunks, attention_mask=cmask).logits.mean(0)
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
    raise ValueError(mechanism)


def child(mechanism: str, length: int, window: int, iters: int) -> dict:
    import torch

    from tasks.benchmark import peak_rss_mb

    torch.manual_seed(0)
    fn = build(mechanism, length, window)
    with torch.inference_mode():
        fn()  # warm-up
        times = []
        for _ in range(iters):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return {"mechanism": mechanism, "length": length, "latency_s": round(statistics.median(times), 4),
            "peak_rss_mb": peak_rss_mb(), "iters": iters}


def plot(rows: list[dict], key: str, ylabel: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mech in MECHANISMS:
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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    ap.add_argument("--mechanisms", nargs="+", default=MECHANISMS)
    ap.add_argument("--window", type=int, default=256, help="attention_window (both sides together), as Longformer")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--child", nargs=2, metavar=("MECHANISM", "LENGTH"))
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], int(a.child[1]), a.window, a.iters)))
        return 0
    rows = []
    for length in a.lengths:
        for mech in a.mechanisms:
            proc = subprocess.run([sys.executable, __file__, "--child", mech, str(length), "--window", str(a.window),
                                   "--iters", str(a.iters)], capture_output=True, text=True, cwd=ROOT,
                                  env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if proc.returncode != 0:
                rows.append({"mechanism": mech, "length": length, "error": proc.stderr.strip().splitlines()[-1][:300]})
            else:
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(rows, "latency_s", "forward latency (s)", RESULTS / "long_attention_time.png")
    plot(rows, "peak_rss_mb", "peak RSS of the process (MB)", RESULTS / "long_attention_memory.png")

    def get(m, n, k):
        return next((r.get(k) for r in rows if r["mechanism"] == m and r["length"] == n), None)

    lines = ["| length | " + " | ".join(f"{m} s / MB" for m in a.mechanisms) + " |", "|---" * (len(a.mechanisms) + 1) + "|"]
    for n in a.lengths:
        lines.append(f"| {n} | " + " | ".join(f"{get(m, n, 'latency_s')} / {get(m, n, 'peak_rss_mb')}" for m in a.mechanisms) + " |")
    checks = {}
    for n in a.lengths:
        ours, full, hf = get("sliding-ours", n, "latency_s"), get("full-sdpa", n, "latency_s"), get("hf-longformer", n, "latency_s")
        if ours and full:
            checks[n] = {"speedup_vs_full": round(full / ours, 2), "speedup_vs_hf_longformer": round(hf / ours, 2) if hf else None,
                         "memory_ours_mb": get("sliding-ours", n, "peak_rss_mb"), "memory_full_mb": get("full-sdpa", n, "peak_rss_mb")}
    target_n = 4096 if 4096 in checks else max(checks) if checks else None
    md = ["Batch 1, all cores, median of the timed forwards; each cell in its own process.", "", *lines, "",
          "Ours vs the others:", ""] + [f"- {n} tokens: " + ", ".join(f"{k}={v}" for k, v in c.items()) for n, c in checks.items()]
    if target_n:
        c = checks[target_n]
        md += ["", f"Targets at {target_n} tokens: >= 3x faster than HF Longformer -> {c['speedup_vs_hf_longformer']}x; "
               f">= 1.8x faster than SDPA full -> {c['speedup_vs_full']}x; memory no higher than full -> "
               f"{c['memory_ours_mb']} vs {c['memory_full_mb']} MB."]
    md += ["", "![time](long_attention_time.png) ![memory](long_attention_memory.png)"]
    write_results("long_attention", {"window": a.window, "rows": rows, "checks": checks}, "\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
