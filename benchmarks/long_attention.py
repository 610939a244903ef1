"""Case study 2 scaling benchmark: latency and peak memory of each attention mechanism as documents grow.

    python benchmarks/long_attention.py [--lengths 512 1024 2048 4096] [--window 256] [--iters 3] [--repeats 3]
                                                                      # ~15 min on 2 cores
    python benchmarks/long_attention.py --lengths 256 --mechanisms chunked-512 --iters 1 --repeats 1 \
        --results-dir /tmp/bench                                      # trial
    python benchmarks/long_attention.py --device cuda --dtype bf16 --batch 1 4 \\
        --lengths 1024 2048 4096 8192 16384 32768                            # GPU -> long_attention_gpu.{json,md}

Same MiniLM-sized encoder for every mechanism (6 layers, 384 hidden, 12 heads x 32), all cores, each (mechanism,
length, batch) in ``--repeats`` fresh processes (tasks/longdoc/scaling.py), the cell their median, so its peak
memory is its own (RSS on CPU,
``max_memory_allocated`` on CUDA, CUDA-event time there): full-long (SDPA full attention on the long-ified model),
sliding-window (ours, ``auto`` backend: 128 each side + global [CLS]; the row names the backend it used),
hf-longformer (Hugging Face Longformer, attention_window 256), chunked-512, bigbird (Hugging Face block-sparse).
Writes <results-dir>/long_attention[_gpu].{json,md} and *_time.png / *_memory.png.
"""

from __future__ import annotations

import statistics
import sys

from common import parser, write_results

from tasks.longdoc import scaling

MECHANISMS = ["full-long", "sliding-window", "hf-longformer", "chunked-512", "bigbird"]
# the targets: (length, speed-up over SDPA full, over HF Longformer); memory: ours <= factor x full's
TARGETS = {"cpu": {"speedup": {4096: (1.8, 3.0)}, "memory_factor": 1.0, "no_slower_than_full": [512, 1024]},
           "cuda": {"speedup": {16384: (1.5, 3.0), 32768: (5.0, None)}, "memory_factor": 1.5, "no_slower_than_full": []}}


def median_row(runs: list[dict]) -> dict:
    """One cell from its repeated processes: median latency and median peak memory, each run's figures kept."""
    if any("error" in r for r in runs):
        return next(r for r in runs if "error" in r)
    key = "peak_cuda_mb" if "peak_cuda_mb" in runs[0] else "peak_rss_mb"
    return {**runs[0], "latency_ms": round(statistics.median(r["latency_ms"] for r in runs), 2),
            key: round(statistics.median(r[key] for r in runs), 1), "repeats": len(runs),
            "latency_ms_runs": [r["latency_ms"] for r in runs], f"{key}_runs": [r[key] for r in runs]}


def main() -> int:
    ap = parser(__doc__)
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    ap.add_argument("--mechanisms", nargs="+", default=MECHANISMS)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per cell; the cell is their median "
                    "(peak RSS alone varies by ~20 MB between processes)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16"], help="default: fp32 on CPU, bf16 on CUDA")
    ap.add_argument("--batch", type=int, nargs="+", default=[1])
    a = ap.parse_args()
    dtype = a.dtype or ("bf16" if a.device == "cuda" else "fp32")
    rows = []
    for batch in a.batch:
        for n in a.lengths:
            runs: dict[str, list[dict]] = {m: [] for m in a.mechanisms}
            for _ in range(a.repeats):  # round-robin, so a slow spell of the machine hits every mechanism alike
                for m in a.mechanisms:
                    runs[m].append(scaling.measure(m, n, a.window, a.iters, device=a.device, dtype=dtype, batch=batch))
                    print(runs[m][-1], flush=True)
            rows += [{**median_row(r), "batch": batch} for r in runs.values()]
    name = "long_attention" + ("_gpu" if a.device == "cuda" else "")
    out = a.results_dir
    out.mkdir(parents=True, exist_ok=True)
    first = [r for r in rows if r["batch"] == a.batch[0]]
    memory = "peak CUDA memory allocated (MB)" if a.device == "cuda" else "peak RSS of the process (MB)"
    scaling.plot(first, "latency_ms", f"forward latency (ms), batch {a.batch[0]}", out / f"{name}_time.png")
    scaling.plot([{**r, "peak_mb": scaling.peak_mb(r)} for r in first], "peak_mb", memory, out / f"{name}_memory.png")
    target = TARGETS[a.device]
    md = [(f"Device {a.device}, {dtype}; each cell: {a.repeats} fresh processes, round-robin over the mechanisms, "
           f"each timing the median of {a.iters} forwards after one warm-up; the cell is the median over the "
           f"processes; cells are `ms / MB` ({memory})."), ""]
    checks = {}
    for batch in a.batch:
        sel = [r for r in rows if r["batch"] == batch]
        get = {(r["mechanism"], r["length"]): r for r in sel}
        md += [f"### batch {batch}", "", scaling.table(sel), ""]
        for n in a.lengths:
            ours, full, hf = (get.get((m, n), {}) for m in ("sliding-window", "full-long", "hf-longformer"))
            if "latency_ms" in ours and "latency_ms" in full:
                checks[f"b{batch}_{n}"] = c = {
                    "backend": ours.get("attention_backend"),
                    "speedup_vs_full": round(full["latency_ms"] / ours["latency_ms"], 2),
                    "speedup_vs_hf_longformer": round(hf["latency_ms"] / ours["latency_ms"], 2) if "latency_ms" in hf else None,
                    "memory_ours_mb": scaling.peak_mb(ours), "memory_full_mb": scaling.peak_mb(full)}
                md.append(f"- {n} tokens: " + ", ".join(f"{k}={v}" for k, v in c.items()))
        md.append("")
    verdicts = []
    for n, (vs_full, vs_hf) in target["speedup"].items():
        c = checks.get(f"b1_{n}")
        if not c:
            verdicts.append(f"- {n} tokens: not measured")
            continue
        ok_full = c["speedup_vs_full"] >= vs_full
        line = f"- {n} tokens: >= {vs_full}x faster than SDPA full -> {c['speedup_vs_full']}x ({'met' if ok_full else 'MISSED'})"
        if vs_hf and c["speedup_vs_hf_longformer"] is not None:
            ok = c["speedup_vs_hf_longformer"] >= vs_hf
            line += f"; >= {vs_hf}x faster than HF Longformer -> {c['speedup_vs_hf_longformer']}x ({'met' if ok else 'MISSED'})"
        ok_mem = c["memory_ours_mb"] <= target["memory_factor"] * c["memory_full_mb"]
        line += (f"; peak memory <= {target['memory_factor']}x full's -> {c['memory_ours_mb']} vs {c['memory_full_mb']} MB "
                 f"({'met' if ok_mem else 'MISSED'})")
        verdicts.append(line)
    for n in target["no_slower_than_full"]:
        c = checks.get(f"b1_{n}")
        if c:
            ok = c["speedup_vs_full"] >= 1.0
            verdicts.append(f"- {n} tokens: no slower than full -> {c['speedup_vs_full']}x with backend {c['backend']} "
                            f"({'met' if ok else 'MISSED (within run-to-run spread if >= 0.9)'})")
    md += ["Targets (batch 1):", "", *verdicts, "", f"![time]({name}_time.png) ![memory]({name}_memory.png)"]
    write_results(name, {"window": a.window, "device": a.device, "dtype": dtype, "rows": rows, "checks": checks},
                  "\n".join(md), out)
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
