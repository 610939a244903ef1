"""Case study 2 scaling benchmark: latency and peak memory of each attention mechanism as documents grow.

    python benchmarks/long_attention.py [--lengths 512 1024 2048 4096] [--window 256] [--iters 3]   # 20+ min on 2 cores
    python benchmarks/long_attention.py --lengths 256 --mechanisms chunked-512 --iters 1 --results-dir /tmp/bench  # trial

Same MiniLM-sized encoder for every mechanism (6 layers, 384 hidden, 12 heads x 32), batch 1, all cores, each
(mechanism, length) in a fresh process (tasks/longdoc/scaling.py) so peak RSS is its own:
full-long (SDPA full attention on the long-ified model), sliding-window (ours: blocked sliding window, 128 each
side, + global [CLS]), hf-longformer (Hugging Face Longformer, attention_window 256), chunked-512, bigbird
(Hugging Face block-sparse). Writes <results-dir>/long_attention.{json,md} and *_time.png / *_memory.png.
"""

from __future__ import annotations

import sys

from common import markdown_table, parser, write_results

from tasks.longdoc import scaling

MECHANISMS = ["full-long", "sliding-window", "hf-longformer", "chunked-512", "bigbird"]


def table(rows: list[dict]) -> str:
    """One row per length, one "ms / MB" column per mechanism (an error cell where a measurement failed)."""
    mechs = list(dict.fromkeys(r["mechanism"] for r in rows))
    get = {(r["mechanism"], r["length"]): r for r in rows}

    def cell(r: dict) -> str:
        return f"{r['latency_ms']} / {r['peak_rss_mb']}" if "latency_ms" in r else f"error: {r.get('error', '?')[:60]}"

    return markdown_table([{"length": n, **{f"{m} ms / MB": cell(get.get((m, n), {})) for m in mechs}}
                           for n in sorted({r["length"] for r in rows})], disable_numparse=True)


def main() -> int:
    ap = parser(__doc__)
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    ap.add_argument("--mechanisms", nargs="+", default=MECHANISMS)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--iters", type=int, default=3)
    a = ap.parse_args()
    rows = []
    for n in a.lengths:
        for m in a.mechanisms:
            rows.append(scaling.measure(m, n, a.window, a.iters))
            print(rows[-1], flush=True)
    out = a.results_dir
    out.mkdir(parents=True, exist_ok=True)
    scaling.plot(rows, "latency_ms", "forward latency (ms)", out / "long_attention_time.png")
    scaling.plot(rows, "peak_rss_mb", "peak RSS of the process (MB)", out / "long_attention_memory.png")
    get = {(r["mechanism"], r["length"]): r for r in rows}
    checks = {}
    for n in a.lengths:
        ours, full, hf = (get.get((m, n), {}) for m in ("sliding-window", "full-long", "hf-longformer"))
        if "latency_ms" in ours and "latency_ms" in full:
            checks[n] = {"speedup_vs_full": round(full["latency_ms"] / ours["latency_ms"], 2),
                         "speedup_vs_hf_longformer": round(hf["latency_ms"] / ours["latency_ms"], 2) if "latency_ms" in hf else None,
                         "memory_ours_mb": ours["peak_rss_mb"], "memory_full_mb": full["peak_rss_mb"]}
    md = ["Batch 1, all cores, median of the timed forwards after one warm-up; each cell in its own process.", "",
          table(rows), "", "Ours (sliding-window) against the others:", ""]
    md += [f"- {n} tokens: " + ", ".join(f"{k}={v}" for k, v in c.items()) for n, c in checks.items()]
    if 4096 in checks:
        c = checks[4096]
        md += ["", f"Targets at 4096 tokens: >= 3x faster than HF Longformer -> {c['speedup_vs_hf_longformer']}x; "
               f">= 1.8x faster than SDPA full -> {c['speedup_vs_full']}x; peak memory no higher than full -> "
               f"{c['memory_ours_mb']} vs {c['memory_full_mb']} MB. Faster than full from 2048 on -> "
               f"{all(checks[n]['speedup_vs_full'] > 1 for n in checks if n >= 2048)}."]
    md += ["", "![time](long_attention_time.png) ![memory](long_attention_memory.png)"]
    write_results("long_attention", {"window": a.window, "rows": rows, "checks": checks}, "\n".join(md), out)
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
