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
from tasks.measure import latency  # the child's code: part of this task's code version


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
    return {"metrics": metrics, "artifacts": {"benchmark": str(result)}}


benchmark_task = task(benchmark, name="benchmark", cache_policy=CACHE, persist_result=True, retries=2,
                      retry_delay_seconds=2)
