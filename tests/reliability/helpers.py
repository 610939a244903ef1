"""Run the real `effilm` CLI in a subprocess against a given MLflow store (Prefect: see `env_for`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def tiny_args(model_dir, out, **extra) -> list[str]:
    sets = {"model.source": str(model_dir), "model.max_length": 64, "output_dir": str(out), "data.max_samples": 120,
            "train.max_steps": 4, "train.batch_size": 8, "benchmark.seq_len": 32, "benchmark.batch_sizes": "[1]",
            "benchmark.threads": "[1]", "benchmark.iters": 3, "benchmark.warmup": 0, "benchmark.max_seconds": 1,
            "variants": "[]", **extra}
    args = ["run", "mobile-bert", "--profile", "quick"]
    for k, v in sets.items():
        args += ["--set", f"{k}={v}"]
    return args


def env_for(tmp: Path, uri: str, own_prefect_server: bool = False, **extra) -> dict:
    """The environment of an `effilm` subprocess storing into ``uri``. Prefect: the test session's server (as on a
    machine where `effilm server start` runs; saves each process the ~13 s start of a temporary server), or with
    ``own_prefect_server`` the temporary server each `effilm` command starts for itself, as `make run` does."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PREFECT_LOCAL_STORAGE_PATH": str(tmp / "prefect-results"),
           "HF_HUB_OFFLINE": "1", "EFFILM_LOG_LEVEL": "WARNING", **extra}
    env.pop("PREFECT_API_URL", None)
    if not own_prefect_server:
        from prefect.settings import PREFECT_API_URL

        if PREFECT_API_URL.value():  # the session's prefect_test_harness server
            env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    return env


def effilm(args: list[str], env: dict, module: str = "flows.cli", **kw) -> subprocess.Popen:
    """The `effilm` CLI as a user runs it (``module="tests.reliability.inject"``: with a test fault installed)."""
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, **kw)


def flows_at_once(model_dir, tmp: Path, uri: str, n: int, timeout: float = 900, own_prefect_server: bool = True,
                  **extra) -> list:
    """Start ``n`` tiny mobile-bert flows as separate `effilm` processes against ``uri``; all must succeed.
    ``own_prefect_server``: each flow starts its own temporary Prefect server, as `make run` on separate machines
    does; else all report to the session's Prefect server, as a team's flows report to its one server.
    Returns the MLflow runs of the experiment afterwards."""
    from mlflow import MlflowClient

    env = env_for(tmp, uri, own_prefect_server=own_prefect_server)
    procs = [effilm(tiny_args(model_dir, tmp / f"out{i}", seed=i, **extra), env) for i in range(n)]
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    c = MlflowClient(uri)
    return c.search_runs([c.get_experiment_by_name("effilm/mobile-bert").experiment_id])
