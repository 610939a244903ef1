"""Scaling of attention mechanisms with document length: latency and peak memory per (mechanism, length), batch 1,
each measured in a fresh child process (``tasks/longdoc/scaling_probe.py``) so peak RSS is its own.

The long-ified mechanisms use the packaged MiniLM weights (or a given model folder); Hugging Face Longformer and
BigBird use random weights of the same sizes (only time and memory are measured).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from prefect import task

from tasks import PROJECT_ROOT
from tasks.core.config import ScalingConfig
from tasks.core.orchestrate import CACHE
from tasks.longdoc import (
    scaling_probe,  # the child's code: part of this task's code version
)


def measure(mechanism: str, length: int, window: int, iters: int, model_dir: str | None = None, timeout: int = 900,
            device: str = "cpu", dtype: str = "fp32", batch: int = 1) -> dict:
    """One point in a fresh child process; on ``cuda`` CUDA-event time and peak CUDA memory, else wall time and RSS."""
    cmd = [sys.executable, "-m", scaling_probe.__name__, mechanism, str(length), "--window", str(window), "--iters",
           str(iters), "--device", device, "--dtype", dtype, "--batch", str(batch)]
    if model_dir:
        cmd += ["--model-dir", str(model_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=PROJECT_ROOT,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if proc.returncode != 0:
        return {"mechanism": mechanism, "length": length, "device": device, "dtype": dtype, "batch": batch,
                "error": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]}
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


def peak_mb(row: dict) -> float | None:
    """The point's peak memory: CUDA memory allocated on a GPU, the process's RSS on CPU."""
    return row.get("peak_cuda_mb", row.get("peak_rss_mb"))


def table(rows: list[dict]) -> str:
    """Markdown: one row per length, one column per mechanism ("ms / MB", or the error of that measurement)."""
    import pandas as pd

    cells = {(r["length"], f"{r['mechanism']} ms / MB"): f"{r['latency_ms']} / {peak_mb(r)}" if "latency_ms" in r
             else f"error: {r.get('error', '?')[:60]}" for r in rows}
    frame = pd.Series(cells).unstack()
    frame = frame[list(dict.fromkeys(f"{r['mechanism']} ms / MB" for r in rows))].sort_index()
    return frame.rename_axis("length").to_markdown()


@task(name="scaling-benchmark", cache_policy=CACHE, persist_result=True)
def sweep_task(scaling_cfg: ScalingConfig, window: int, model_dir: str, work: str) -> dict:
    """Latency and memory of every mechanism at every length, with plots and a table in ``work``."""
    rows = sweep(scaling_cfg.mechanisms, scaling_cfg.lengths, window, scaling_cfg.iters, model_dir)
    out = Path(work)
    out.mkdir(parents=True, exist_ok=True)
    artifacts = {"time_plot": plot(rows, "latency_ms", "forward latency (ms)", out / "scaling_time.png"),
                 "memory_plot": plot(rows, "peak_rss_mb", "peak RSS (MB)", out / "scaling_memory.png")}
    table_path = out / "scaling.md"
    table_path.write_text(table(rows) + "\n")
    artifacts["table"] = str(table_path)
    return {"rows": rows, "artifacts": artifacts}
