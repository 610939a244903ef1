"""Orchestration: Prefect's cache policy for effilm tasks, the work folders they write, and cached task calls.

A task is skipped when its inputs (config slice, data fingerprint, upstream paths) and the code it runs are unchanged
and the files its cached result points to still exist. The code it runs is the task's module and every effilm module
that module imports, directly or not: a work folder is keyed by the same code version, so a changed technique writes
a new folder instead of returning the old one, and an unchanged technique's folder is reused.
"""

from __future__ import annotations

import functools
import hashlib
import json
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.cache_policies import CachePolicy
from pydantic import BaseModel

from tasks import PROJECT_ROOT
from tasks.core.config import ExecutionConfig


def _hash_files(paths) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.relative_to(PROJECT_ROOT).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def _import_graph():
    import grimp

    return grimp.build_graph("tasks", cache_dir=None)


def _module_file(module: str) -> Path:
    rel = Path(*module.split("."))
    return PROJECT_ROOT / (rel / "__init__.py" if (PROJECT_ROOT / rel).is_dir() else rel.with_suffix(".py"))


@functools.lru_cache(maxsize=None)
def code_version(module: str | types.ModuleType | None = None) -> str:
    """Hash of the code a module runs: its source and that of every effilm module it imports, directly or not
    (grimp's import graph). Without a module: all of effilm's sources (tasks/ and flows/), as recorded on runs."""
    if module is None:
        return _hash_files([p for folder in ("tasks", "flows") for p in (PROJECT_ROOT / folder).rglob("*.py")])
    name = module if isinstance(module, str) else module.__name__
    graph = _import_graph()
    if name not in graph.modules:
        raise ValueError(f"code_version: {name} is not an effilm module under tasks/")
    return _hash_files({_module_file(m) for m in {name, *graph.find_upstream_modules(name)}})


def _jsonable(value: Any) -> Any:
    """Typed config slices (pydantic models) hash by their JSON content; anything else by its text."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return str(value)


def stable_hash(*parts: Any, length: int = 12) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=_jsonable).encode()).hexdigest()[:length]


def safe_join(root: str | Path, *parts: str) -> Path:
    """``root/parts`` that is guaranteed to stay inside ``root`` (no ``..``, no absolute parts)."""
    base = Path(root).resolve()
    path = base.joinpath(*parts).resolve()
    if path != base and base not in path.parents:
        raise ValueError(f"refusing to write outside the output folder {base}: {'/'.join(parts)}")
    return path


def work_dir(root: str | Path, name: str, *key_parts: Any, code: str | types.ModuleType) -> str:
    """Deterministic folder for a task's outputs, keyed by its inputs and by the code version of ``code`` (the module
    that writes it): the same inputs and code land in the same place, so a killed run resumes there; changed code
    gets a new folder, never the stale one."""
    return str(safe_join(root, name, stable_hash(*key_parts, code_version(code))))


@dataclass
class InputsAndCode(CachePolicy):
    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any) -> str | None:
        try:
            payload = json.dumps(inputs, sort_keys=True, default=_jsonable)
        except (TypeError, ValueError):
            return None
        code = code_version(task_ctx.task.fn.__module__)
        return hashlib.sha256(f"{task_ctx.task.name}|{code}|{payload}".encode()).hexdigest()


CACHE = InputsAndCode()


def result_paths(result: Any) -> list[str]:
    """Paths a task result points to (``*_dir`` keys and ``artifacts`` values), to check a cache hit is usable."""
    found: list[str] = []
    if isinstance(result, dict):
        for k, v in result.items():
            if isinstance(v, str) and (k.endswith("_dir") or k == "path"):
                found.append(v)
            elif k in ("artifacts", "paths") and isinstance(v, dict):
                found.extend(str(x) for x in v.values() if isinstance(x, str))
    return found


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


def task_runner(execution: ExecutionConfig):
    """The Prefect task runner for a flow's fan-out: threads (default) or Dask (a local cluster of processes, or an
    existing cluster at ``dask_address`` — its workers need the same code and a shared filesystem for model folders)."""
    if execution.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if execution.dask_address:
            return DaskTaskRunner(address=execution.dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": execution.max_workers, "threads_per_worker": 1,
                                              "processes": True, "dashboard_address": None})
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=execution.max_workers)


def call_many(task_fn, calls: dict[str, dict], execution: ExecutionConfig,
              return_exceptions: bool = False) -> dict[str, Any]:
    """Run independent calls of one task in parallel on the configured task runner; same cache rules as ``call``.

    Returns when every call has finished, so nothing started here is still running afterwards (benchmarks rely on
    that: they run alone, after the fan-out). ``return_exceptions``: a failed call's exception is its result instead
    of raising (the others' results are kept)."""
    if not calls:
        return {}
    with task_runner(execution) as runner:
        futures = {label: runner.submit(task_fn, parameters=kwargs) for label, kwargs in calls.items()}
        for f in futures.values():
            f.wait()
        out = {}
        for label, f in futures.items():
            try:
                out[label] = _usable(task_fn, f"{label}/{task_fn.name}", calls[label], f.state)
            except Exception as exc:
                if not return_exceptions:
                    raise
                out[label] = exc
        return out
