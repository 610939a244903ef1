"""Benchmark a model folder in a fresh process: latency p50/p95 per (batch size, threads), throughput, peak RSS,
size on disk and parameter count.

Running in a child process keeps the numbers honest: peak RSS is the inference process's own, nothing else in the
flow shares its threads, and the flow runs benchmarks one at a time. ``python -m tasks.benchmark`` is the child.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch


def peak_rss_mb() -> float:
    """Peak RSS of this process. VmHWM belongs to the current address space; ru_maxrss would inherit the
    forking parent's high-water mark across exec and overstate a child started from a big flow process."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def thread_tag(t: int | str) -> str:
    return "tall" if t == "all" else f"t{t}"


def _inputs(tokenizer, texts: list[str], batch: int, seq_len: int) -> dict[str, torch.Tensor]:
    chosen = [texts[i % len(texts)] for i in range(batch)]
    return tokenizer(chosen, truncation=True, max_length=seq_len, padding="max_length", return_tensors="pt")


@torch.inference_mode()
def measure(model_dir: str, texts: list[str], cfg: dict) -> dict:
    from tasks import models, preprocess

    t0 = time.perf_counter()
    run, tokenizer, manifest = models.load_for_inference(model_dir)
    load_s = time.perf_counter() - t0
    texts = preprocess.normalize(texts, manifest.get("preprocess"))
    supported = getattr(run, "batch_sizes", None)  # e.g. an ExecuTorch program exported for batch 1
    all_threads = os.cpu_count() or 1
    metrics: dict[str, float] = {"bench/load_seconds": round(load_s, 3), "bench/threads_all": all_threads, "bench/seq_len": cfg["seq_len"]}
    for threads in cfg["threads"]:
        torch.set_num_threads(all_threads if threads == "all" else int(threads))
        for batch in cfg["batch_sizes"]:
            if supported is not None and batch not in supported:
                continue
            enc = _inputs(tokenizer, texts, batch, cfg["seq_len"])
            ids, mask = enc["input_ids"], enc["attention_mask"]
            for _ in range(cfg["warmup"]):
                run(ids, mask)
            times = []
            start = time.perf_counter()
            while len(times) < cfg["iters"] and (len(times) < 3 or time.perf_counter() - start < cfg["max_seconds"]):
                t = time.perf_counter()
                run(ids, mask)
                times.append((time.perf_counter() - t) * 1000)
            tag = f"b{batch}_{thread_tag(threads)}"
            times.sort()
            metrics[f"bench/latency_ms_p50_{tag}"] = round(statistics.median(times), 3)
            metrics[f"bench/latency_ms_p95_{tag}"] = round(times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))], 3)
            metrics[f"bench/throughput_{tag}"] = round(batch * 1000 / statistics.mean(times), 2)
            metrics[f"bench/iters_{tag}"] = len(times)
    big = max(cfg["batch_sizes"])
    if f"bench/throughput_b{big}_tall" in metrics:
        metrics[f"bench/throughput_b{big}"] = metrics[f"bench/throughput_b{big}_tall"]
    metrics["bench/peak_rss_mb"] = peak_rss_mb()
    metrics["size/disk_mb"] = round(models.disk_size_mb(model_dir), 3)
    model = getattr(run, "model", None)
    if isinstance(model, torch.nn.Module):
        metrics["size/params"] = models.count_params(model)
    elif "params" in manifest:
        metrics["size/params"] = manifest["params"]
    return metrics


def benchmark(model_dir: str, texts_path: str, cfg: dict, work_dir: str, timeout_s: float = 1800) -> dict:
    """Run ``measure`` in a child process; returns {"metrics": {...}, "artifacts": {"benchmark": json path}}."""
    out = Path(work_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = out / "benchmark.json"
    cmd = [sys.executable, "-m", "tasks.benchmark", "--model-dir", str(model_dir), "--texts", str(texts_path),
           "--config", json.dumps(cfg), "--out", str(result)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env,
                          cwd=str(Path(__file__).resolve().parent.parent))
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark of {model_dir} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    metrics = json.loads(result.read_text())
    return {"metrics": metrics, "artifacts": {"benchmark": str(result)}}


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    p = argparse.ArgumentParser(description="effilm benchmark child process")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--texts", required=True, help="parquet file with a 'text' column")
    p.add_argument("--config", required=True, help="benchmark config slice as JSON")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    texts = pd.read_parquet(a.texts)["text"].tolist()[:256]
    metrics = measure(a.model_dir, texts, json.loads(a.config))
    tmp = Path(a.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True))
    tmp.replace(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
