"""Helpers for benchmark scripts: machine description and JSON + markdown result files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))


def machine_info() -> dict:
    from tasks.core.tracking import environment, git_sha

    info = environment()
    try:
        import psutil

        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    info["git_sha"] = git_sha()
    info["date"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    return info


def write_results(name: str, data: dict, markdown_body: str) -> tuple[Path, Path]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    payload = {"benchmark": name, "machine": info, **data}
    js = RESULTS / f"{name}.json"
    js.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")
    machine = ", ".join(f"{k}: {v}" for k, v in info.items())
    md = RESULTS / f"{name}.md"
    md.write_text(f"# {name}\n\nMachine — {machine}\n\n{markdown_body}\n")
    return js, md


def run(cmd: list[str], env: dict | None = None, log: Path | None = None) -> float:
    t0 = time.perf_counter()
    with open(log or os.devnull, "w") as fh:
        subprocess.run(cmd, check=True, env={**os.environ, **(env or {})}, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    return time.perf_counter() - t0
