"""Pieces every effilm flow uses: the start of a flow run, cached task calls that notice missing outputs, task
runners for fan-out, and the run tags."""

from __future__ import annotations

import contextlib
import functools
import os
import time
from pathlib import Path
from typing import Any, Iterator

from prefect import get_run_logger, task

from tasks import config, data, models, tracking, train
from tasks.caching import CACHE, code_version, result_paths


# Transient failures are retried by Prefect; MLflow runs are opened by the flows, not by tasks, so a retry never
# duplicates a run. Training resumes from its checkpoint when retried.
@task(name="load-data", retries=1, retry_delay_seconds=2)
def load_data(data_cfg: dict, seed: int, out_root: str) -> dict:
    return data.prepare(data_cfg, seed, out_root)


@task(name="fine-tune", cache_policy=CACHE, persist_result=True, retries=1, retry_delay_seconds=2)
def fine_tune(model_cfg: dict, train_cfg: dict, data_info: dict, seed: int, work: str) -> dict:
    return train.fine_tune(model_cfg, train_cfg, data_info, seed, work)


@contextlib.contextmanager
def flow_run(cfg, study: str) -> Iterator[tuple[str, dict]]:
    """How every case-study flow starts: mark runs of killed flow processes KILLED; preflight (bad data or an
    unavailable model fails here, before any MLflow run exists); open the parent run and record the config, the
    environment and the data. Yields ``(parent_run_id, data_info)``; the parent run ends with the ``with`` block."""
    logger = get_run_logger()
    reaped = tracking.reap_stale_runs(cfg.experiment)
    if reaped:
        logger.warning("marked %d run(s) of killed flow processes as KILLED: %s", len(reaped), ", ".join(reaped))
    data_info = load_data(config.slice_dict(cfg.data), cfg.seed, str(Path(cfg.output_dir)))
    models.check_source(cfg.model.source, cfg.model.trust_remote_code, cfg.model.revision)

    with tracking.run(cfg.experiment, f"{study}-{cfg.profile}-{time.strftime('%Y%m%d-%H%M%S')}",
                      {**base_tags(study, cfg.profile, data_info["fingerprint"]), "variant": "parent"}) as parent:
        tracking.log_config(parent, cfg.model_dump(mode="json"), config.to_flat_params(cfg))
        tracking.log_environment(parent)
        tracking.log_metrics(parent, {f"data/{k}": v for k, v in data_info["stats"].items()})
        tracking.log_dataset(parent, data_info["paths"], "bbc" if cfg.data.source == "bbc" else cfg.data.source,
                             data_info["source"], data_info["fingerprint"])
        logger.info("data: %s", data_info["stats"])
        yield parent, data_info


def call(task_fn, label: str, **kwargs: Any) -> Any:
    """Run a Prefect task; on a cache hit whose files are gone, run it again with a refreshed cache."""
    state = task_fn(**kwargs, return_state=True)
    return _usable(task_fn, label, kwargs, state)


def _usable(task_fn, label: str, kwargs: dict, state) -> Any:
    """The result of a finished task run, recomputed (cache refreshed) when it is a cache hit whose files are gone."""
    logger = get_run_logger()
    result = state.result()
    if state.name == "Cached":
        missing = [p for p in result_paths(result) if not Path(p).exists()]
        if missing:
            logger.warning("%s: cached result points to missing %s; recomputing", label, missing[0])
            return task_fn.with_options(refresh_cache=True)(**kwargs)
        logger.info("%s: inputs and code unchanged -> cached result reused (skipped)", label)
    return result


def task_runner(execution: dict):
    """The Prefect task runner for a flow's fan-out: threads (default) or Dask (a local cluster of processes, or an
    existing cluster at ``dask_address`` — its workers need the same code and a shared filesystem for model folders)."""
    if execution.get("task_runner") == "dask":
        from prefect_dask import DaskTaskRunner

        if execution.get("dask_address"):
            return DaskTaskRunner(address=execution["dask_address"])
        return DaskTaskRunner(cluster_kwargs={"n_workers": execution.get("max_workers", 2), "threads_per_worker": 1,
                                              "processes": True, "dashboard_address": None})
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=execution.get("max_workers", 2))


def call_many(task_fn, calls: dict[str, dict], execution: dict) -> dict[str, Any]:
    """Run independent calls of one task in parallel on the configured task runner; same cache rules as ``call``.

    Returns when every call has finished, so nothing started here is still running afterwards (benchmarks rely on
    that: they run alone, after the fan-out)."""
    with task_runner(execution) as runner:
        futures = {label: runner.submit(task_fn, parameters=kwargs) for label, kwargs in calls.items()}
        for f in futures.values():
            f.wait()
        return {label: _usable(task_fn, f"{label}/{task_fn.name}", calls[label], f.state) for label, f in futures.items()}


def base_tags(case_study: str, profile: str, fingerprint: str | None = None) -> dict[str, str]:
    tags = {
        "case_study": case_study,
        "profile": profile,
        "git_sha": tracking.git_sha(),
        "code_version": code_version(),
    }
    if fingerprint:
        tags["data_fingerprint"] = fingerprint
    flow_run = os.environ.get("PREFECT__FLOW_RUN_ID")
    try:
        from prefect.runtime import flow_run as fr

        flow_run = fr.id or flow_run
    except Exception:  # pragma: no cover - outside a flow
        pass
    if flow_run:
        tags["prefect_flow_run_id"] = str(flow_run)
    tags.update(env_tags())
    return tags


@functools.lru_cache(maxsize=1)
def env_tags() -> dict[str, str]:
    """Environment on every run (the parent also gets pip freeze + environment.json as artifacts)."""
    env = tracking.environment()
    return {"env.python": env["python"], "env.torch": env["torch"], "env.transformers": env["transformers"],
            "env.cpu": str(env.get("cpu_model", env["processor"])), "env.cpu_count": str(env["cpu_count"]),
            "env.gpu": env["cuda"] or "none"}
