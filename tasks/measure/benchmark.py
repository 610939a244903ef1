"""Benchmark a model folder in a fresh process: latency p50/p95 per (batch size, threads), throughput, peak RSS,
size on disk and parameter count.

Running in a child process keeps the numbers honest: peak RSS is the inference process's own, nothing else in the
flow shares its threads, and the flow runs benchmarks one at a time. The child is ``tasks/measure/latency.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from prefect import task

from tasks import PROJECT_ROOT
from tasks.core.config import BenchmarkConfig
from tasks.core.orchestrate import CACHE
from tasks.measure import latency, runtime_probe  # the children's code: part of this task's code version


def benchmark(model_dir: str, texts_path: str, cfg: BenchmarkConfig | dict, work_dir: str, timeout_s: float = 1800) -> dict:
    """Run ``latency.measure`` in a child process; returns {"metrics": {...}, "artifacts": {"benchmark": json path}}."""
    out = Path(work_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = out / "benchmark.json"
    cmd = [sys.executable, "-m", latency.__name__, "--model-dir", str(model_dir), "--texts", str(texts_path),
           "--config", BenchmarkConfig.model_validate(cfg).model_dump_json(), "--out", str(result)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env,
                          cwd=str(PROJECT_ROOT))
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark of {model_dir} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    metrics = json.loads(result.read_text())
    metrics.update(runtime_memory(model_dir, texts_path, metrics, out, env, timeout_s))
    return {"metrics": metrics, "artifacts": {"benchmark": str(result)}}


def runtime_memory(model_dir: str, texts_path: str, metrics: dict, out: Path, env: dict, timeout_s: float) -> dict:
    """``bench/runtime_rss_mb``: peak RSS with only the model's runtime loaded. Exported formats (ONNX, ExecuTorch)
    are measured in ``runtime_probe``'s own process; for eager / int8 PyTorch, torch *is* the runtime, so it is the
    benchmark process's peak."""
    import pandas as pd

    from tasks.core.models import read_manifest

    if read_manifest(model_dir)["format"] not in ("onnx", "pte"):
        return {"bench/runtime_rss_mb": metrics["bench/peak_rss_mb"], "bench/runtime_rss_includes_torch": 1.0}
    texts = out / "probe_texts.json"
    texts.write_text(json.dumps(pd.read_parquet(texts_path)["text"].tolist()[:64]))
    probe_out = out / "runtime_probe.json"
    cmd = [sys.executable, "-m", runtime_probe.__name__, "--model-dir", str(model_dir), "--texts", str(texts),
           "--seq-len", str(int(metrics["bench/seq_len"])), "--out", str(probe_out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env, cwd=str(PROJECT_ROOT))
    if proc.returncode != 0:
        raise RuntimeError(f"runtime memory probe of {model_dir} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(probe_out.read_text())


benchmark_task = task(benchmark, name="benchmark", cache_policy=CACHE, persist_result=True, retries=2,
                      retry_delay_seconds=2)
