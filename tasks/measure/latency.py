from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from tasks.core.config import BenchmarkConfig


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


def current_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@torch.inference_mode()
def measure(model_dir: str, texts: list[str], cfg: BenchmarkConfig, rounds: int = 3) -> dict:
    """Latency per (threads, batch) setting. Settings are timed round-robin in ``rounds`` rounds and the samples
    pooled, so a transient disturbance on the machine spreads over all settings instead of skewing one."""
    from tasks.core import models, preprocess
    from tasks.measure import runtimes

    rss_before = current_rss_mb()
    t0 = time.perf_counter()
    run, tokenizer, manifest = runtimes.load_for_inference(model_dir)
    load_s = time.perf_counter() - t0
    texts = preprocess.normalize(texts, manifest.get("preprocess"))
    supported = getattr(run, "batch_sizes", None)  # e.g. an ExecuTorch program exported for batch 1
    thread_settings = getattr(run, "thread_settings", None)  # e.g. ExecuTorch: one threadpool size per process
    all_threads = os.cpu_count() or 1
    metrics: dict[str, float] = {"bench/load_seconds": round(load_s, 3), "bench/threads_all": all_threads,
                                 "bench/seq_len": manifest.get("seq_len", cfg.seq_len), "bench/model_rss_mb": round(current_rss_mb() - rss_before, 1)}
    settings = []
    for threads in cfg.threads:
        n_threads = all_threads if threads == "all" else int(threads)
        if thread_settings is not None and n_threads not in thread_settings:
            continue
        for batch in cfg.batch_sizes:
            if supported is not None and batch not in supported:
                continue
            enc = _inputs(tokenizer, texts, batch, cfg.seq_len)
            settings.append({"threads": threads, "n": n_threads, "batch": batch, "ids": enc["input_ids"],
                             "mask": enc["attention_mask"], "times": []})
    per_round = max(1, -(-cfg.iters // rounds))
    for r in range(rounds):
        for st in settings:
            torch.set_num_threads(st["n"])
            warm = cfg.warmup if st["batch"] <= 8 else min(1, cfg.warmup)  # a big batch warms up in one pass
            for _ in range(warm if r == 0 else 1):
                run(st["ids"], st["mask"])
            start = time.perf_counter()
            done = 0
            while done < per_round and (done < 1 or time.perf_counter() - start < cfg.max_seconds / rounds):
                t = time.perf_counter()
                run(st["ids"], st["mask"])
                st["times"].append((time.perf_counter() - t) * 1000)
                done += 1
    for st in settings:
        times = sorted(st["times"])
        tag = f"b{st['batch']}_{thread_tag(st['threads'])}"
        metrics[f"bench/latency_ms_p50_{tag}"] = round(statistics.median(times), 3)
        metrics[f"bench/latency_ms_p95_{tag}"] = round(times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))], 3)
        metrics[f"bench/throughput_{tag}"] = round(st["batch"] * 1000 / statistics.mean(times), 2)
        metrics[f"bench/iters_{tag}"] = len(times)
    big = max(cfg.batch_sizes)
    if f"bench/throughput_b{big}_tall" in metrics:
        metrics[f"bench/throughput_b{big}"] = metrics[f"bench/throughput_b{big}_tall"]
    metrics["bench/peak_rss_mb"] = peak_rss_mb()
    metrics["size/disk_mb"] = round(models.disk_size_mb(model_dir), 3)
    model = getattr(run, "model", None)
    if manifest.get("params"):  # recorded before quantization/export: what the architecture holds
        metrics["size/params"] = manifest["params"]
    elif isinstance(model, torch.nn.Module):
        metrics["size/params"] = models.count_params(model)
    return metrics


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    p = argparse.ArgumentParser(description="effilm benchmark child process")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--texts", required=True, help="parquet file with a 'text' column")
    p.add_argument("--config", required=True, help="benchmark config slice as JSON")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    texts = pd.read_parquet(a.texts)["text"].tolist()[:256]
    from tasks.core.models import read_manifest

    if read_manifest(a.model_dir).get("format") == "pte":  # ExecuTorch: threadpool sized once, at load: 1 thread
        torch.set_num_threads(1)
    metrics = measure(a.model_dir, texts, BenchmarkConfig.model_validate_json(a.config))
    tmp = Path(a.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True))
    tmp.replace(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
