"""The one module that talks to MLflow. Runs are addressed by explicit ``run_id`` (MLflow's active run is per
thread), so tasks never depend on ambient state.

Default store: embedded sqlite ``mlflow.db`` in the working directory, artifacts beside it in ``mlartifacts/``;
``MLFLOW_TRACKING_URI`` overrides (e.g. a team ``mlflow server`` on PostgreSQL).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import platform
import re
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import yaml

log = logging.getLogger(__name__)
T = TypeVar("T")
from tasks import PROJECT_ROOT  # noqa: E402

# MLflow's sqlite store logs migrations at INFO on first use; keep the flow log readable.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
logging.getLogger("alembic").setLevel(logging.WARNING)


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


_READY: set[str] = set()


def _init_sqlite_store(uri: str) -> None:
    """Create/migrate an embedded sqlite store under a file lock: two flows starting at once on a fresh store
    would otherwise race in MLflow's schema migrations ("duplicate column name")."""
    import fcntl

    from mlflow import MlflowClient

    m = re.match(r"sqlite:///(.+)$", uri)
    if not m:
        return
    db = Path(m.group(1))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(str(db) + ".effilm-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# Errors that mean "another writer got there first / the store is momentarily busy": the write did not happen (or
# happened identically), so it is safe to try again. Seen with several flows at once: sqlite "database is locked",
# and two runs inserting the same dataset/tag row at once (sqlite "UNIQUE constraint", PostgreSQL "duplicate key").
_TRANSIENT = ("database is locked", "database is busy", "unique constraint", "duplicate key value", "deadlock detected",
              "could not serialize access", "temporarily unavailable", "too many 500 error responses",
              "too many 503 error responses", "connection reset", "remote end closed connection")
RETRIES = 6

# Calls that create a new object under a server-chosen id (a run, a model version): after an error the first
# attempt may still have taken effect on the server (the answer was lost, or MLflow's own HTTP layer retried a POST),
# so a blind retry can make a second one. The retrying client never retries these; ``create_once`` does, after
# looking for what the failed attempt may have created.
NOT_IDEMPOTENT = frozenset({"create_run", "create_model_version", "create_logged_model", "create_prompt",
                            "create_webhook"})


def _transient(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(t in text for t in _TRANSIENT)


def _pause(seconds: float) -> None:
    """The retry policy's sleep. Its own name so a test can make the backoff instant without patching ``time.sleep``
    for every thread in the process (Prefect's background services sleep too, and spin without it)."""
    time.sleep(seconds)


def _retrying(what: str):
    """tenacity policy for the store: transient errors only, exponential backoff with jitter, then re-raise."""
    from tenacity import (
        Retrying,
        retry_if_exception,
        stop_after_attempt,
        wait_random_exponential,
    )

    def warn(state) -> None:
        exc = state.outcome.exception()
        log.warning("MLflow %s: transient store error (%s); retry %d/%d in %.1fs", what,
                    str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__, state.attempt_number, RETRIES,
                    state.next_action.sleep if state.next_action else 0.0)

    return Retrying(retry=retry_if_exception(_transient), stop=stop_after_attempt(RETRIES + 1),
                    wait=wait_random_exponential(multiplier=0.25, max=4.0), reraise=True, before_sleep=warn,
                    sleep=lambda s: _pause(s))


class _RetryingClient:
    """``MlflowClient`` whose idempotent calls are retried (with backoff) on transient store contention only;
    creating calls (``NOT_IDEMPOTENT``) go through unretried (use ``create_once``)."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if not callable(attr) or name in NOT_IDEMPOTENT:
            return attr

        def call(*args, **kwargs):
            return _retrying(name)(attr, *args, **kwargs)

        return call


def create_once(what: str, create: Callable[[], T], find: Callable[[], list[T]],
                discard: Callable[[T], None] | None = None) -> T:
    """Create one object over a store that may fail transiently, exactly once.

    ``create`` makes it, carrying a unique token; ``find`` lists the objects carrying that token. A failed attempt is
    followed by ``find`` before anything is created again (the first attempt may have taken effect), and after
    success ``find`` must show exactly what was made: extra copies (an HTTP-level retry of the same request) are
    removed with ``discard``, the oldest is kept. Non-transient errors, and a create that ``find`` cannot see
    afterwards, raise."""
    for attempt in _retrying(what):
        with attempt:
            if attempt.retry_state.attempt_number > 1 and find():
                log.warning("MLflow %s: the failed attempt had taken effect; not creating it again", what)
                break
            create()
    found = _retrying(f"{what} (check)")(find)
    if not found:
        raise RuntimeError(f"MLflow {what}: the store reported success but the created object cannot be found")
    if len(found) > 1 and discard is not None:
        log.warning("MLflow %s: %d copies of one request were created (HTTP-level retry); keeping the first",
                    what, len(found))
        for extra in found[1:]:
            _retrying(f"{what} (remove duplicate)")(discard, extra)
    return found[0]


def client():
    from mlflow import MlflowClient

    uri = tracking_uri()
    if uri not in _READY:
        _init_sqlite_store(uri)
        _READY.add(uri)
    return _RetryingClient(MlflowClient(tracking_uri=uri, registry_uri=os.environ.get("MLFLOW_REGISTRY_URI") or uri))


def _local_artifact_root(uri: str) -> str | None:
    """For an embedded sqlite store, keep artifacts next to the database instead of ./mlruns."""
    m = re.match(r"sqlite:///(.+)$", uri)
    if not m:
        return None
    return str(Path(m.group(1)).resolve().parent / "mlartifacts")


# MLflow 3's UI opens an experiment on its GenAI overview unless the experiment says it is model training; with
# this tag it opens on the runs table, where variants line up (and the compare view is one click away).
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development", "effilm": "true"}


def experiment_id(name: str) -> str:
    c = client()
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            c.restore_experiment(exp.experiment_id)
        if exp.tags.get("mlflow.experimentKind") is None:
            c.set_experiment_tag(exp.experiment_id, "mlflow.experimentKind", EXPERIMENT_TAGS["mlflow.experimentKind"])
        return exp.experiment_id
    root = _local_artifact_root(tracking_uri())
    location = Path(root, re.sub(r"[^A-Za-z0-9_.-]+", "-", name)).as_uri() if root else None
    try:
        return c.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)
    except Exception:  # created concurrently by another flow run
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def git_sha(ignore: str | None = None) -> str:
    """HEAD, ``-dirty`` when a tracked file (outside the folder ``ignore``, when given) was modified."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return "unknown"
        only = ["--", ".", f":(exclude){ignore}"] if ignore else []
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", *only], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment() -> dict[str, Any]:
    import torch
    import transformers

    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                env["cpu_model"] = line.split(":", 1)[1].strip()
                break
    return env


def pip_freeze() -> str:
    dists = sorted({f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions() if d.metadata["Name"]}, key=str.lower)
    return "\n".join(dists) + "\n"


# ------------------------------------------------------------------------------------------------ runs


class TrackingStoreBusy(RuntimeError):
    """The embedded sqlite store could not take the write load (several flows at once)."""


def _busy(exc: Exception) -> bool:
    return "database is locked" in str(exc) or "database is busy" in str(exc)


def start_run(experiment: str, run_name: str, tags: dict[str, Any], parent_run_id: str | None = None) -> str:
    """Create a run tagged with this process (host + pid), so a later flow can tell a killed run from a live one."""
    all_tags = {k: str(v) for k, v in tags.items() if v is not None}
    all_tags.update({"effilm.host": socket.gethostname(), "effilm.pid": str(os.getpid())})
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    c, exp_id, token = client(), experiment_id(experiment), uuid.uuid4().hex
    all_tags["effilm.create_token"] = token
    try:
        run = create_once(
            "create_run", lambda: c.create_run(exp_id, tags=all_tags, run_name=run_name),
            lambda: c.search_runs([exp_id], filter_string=f"tags.`effilm.create_token` = '{token}'",
                                  order_by=["attributes.start_time ASC"], max_results=10),
            lambda r: c.delete_run(r.info.run_id))
    except Exception as exc:
        if _busy(exc):
            raise TrackingStoreBusy(
                f"the MLflow store {tracking_uri()} is locked by another writer ({exc}). The embedded sqlite store "
                "takes one busy writer at a time: run flows one after another, or point MLFLOW_TRACKING_URI at an "
                "`mlflow server` (see docs/reliability.md)") from exc
        raise
    return run.info.run_id


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_stale_runs(experiment: str) -> list[str]:
    """Mark KILLED the RUNNING runs whose process (same host) is gone — e.g. a flow killed with SIGKILL, which
    cannot clean up after itself. Runs of live processes and of other hosts are left alone."""
    c = client()
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return []
    host = socket.gethostname()
    reaped = []
    for r in c.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000):
        tags = r.data.tags
        if tags.get("effilm.host") != host or not tags.get("effilm.pid", "").isdigit():
            continue
        if not pid_alive(int(tags["effilm.pid"])):
            c.set_tag(r.info.run_id, "effilm.reaped", time.strftime("%Y-%m-%d %H:%M:%S"))
            c.set_terminated(r.info.run_id, "KILLED")
            reaped.append(r.info.run_id)
    return reaped


def end_run(run_id: str, status: str = "FINISHED") -> None:
    client().set_terminated(run_id, status)


@contextlib.contextmanager
def run(experiment: str, run_name: str, tags: dict[str, Any], parent_run_id: str | None = None) -> Iterator[str]:
    """Open a run; it ends FINISHED, FAILED on an exception, KILLED on Ctrl-C — never left RUNNING."""
    run_id = start_run(experiment, run_name, tags, parent_run_id)
    try:
        yield run_id
    except KeyboardInterrupt:
        end_run(run_id, "KILLED")
        raise
    except BaseException as exc:
        with contextlib.suppress(Exception):
            client().set_tag(run_id, "error", f"{type(exc).__name__}: {exc}"[:5000])
        end_run(run_id, "FAILED")
        raise
    else:
        end_run(run_id, "FINISHED")


def log_metrics(run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step) for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None]
    for i in range(0, len(items), 900):
        client().log_batch(run_id, metrics=items[i : i + 900])


def log_metric_history(run_id: str, key: str, points: list[tuple[int, float]]) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(key, float(v), now, int(s)) for s, v in points]
    for i in range(0, len(items), 900):
        client().log_batch(run_id, metrics=items[i : i + 900])


def log_params(run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 90):
        client().log_batch(run_id, params=items[i : i + 90])


def set_tags(run_id: str, tags: dict[str, Any]) -> None:
    from mlflow.entities import RunTag

    client().log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items() if v is not None])


def log_artifact(run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    p = Path(path)
    if p.is_dir():
        client().log_artifacts(run_id, str(p), artifact_path)
    else:
        client().log_artifact(run_id, str(p), artifact_path)


def log_text(run_id: str, text: str, artifact_file: str) -> None:
    client().log_text(run_id, text, artifact_file)


def log_config(run_id: str, resolved: dict, flat_params: dict[str, str]) -> None:
    log_params(run_id, flat_params)
    log_text(run_id, yaml.safe_dump(resolved, sort_keys=False), "config/resolved.yaml")


def log_environment(run_id: str) -> dict:
    env = environment()
    log_text(run_id, pip_freeze(), "environment/requirements-freeze.txt")
    log_text(run_id, json.dumps(env, indent=2), "environment/environment.json")
    set_tags(run_id, {"env.torch": env["torch"], "env.transformers": env["transformers"],
                      "env.cpu": env.get("cpu_model", env["processor"]), "env.gpu": env["cuda"] or "none"})
    return env


def log_dataset(run_id: str, split_paths: dict[str, str], name: str, source: str, digest: str) -> None:
    """Log each split with ``mlflow.data`` (schema, digest, source) as run inputs."""
    import mlflow.data
    import pandas as pd
    from mlflow.entities import DatasetInput, InputTag

    inputs = []
    for context, path in split_paths.items():
        df = pd.read_parquet(path)
        ds = mlflow.data.from_pandas(df, source=str(Path(path).resolve()), targets="label", name=f"{name}-{context}",
                                     digest=f"{digest[:8]}-{context}")
        inputs.append(DatasetInput(dataset=ds._to_mlflow_entity(),
                                   tags=[InputTag("mlflow.data.context", context), InputTag("effilm.origin", source[:250])]))
    client().log_inputs(run_id, datasets=inputs)


def log_model(run_id: str, model_dir: str, python_model, pip_requirements: list[str], code_paths: list[str],
              artifact_path: str = "model") -> str:
    """Log a model folder as an MLflow pyfunc model (weights stay safetensors/ONNX/PTE inside it); the pyfunc
    wrapper and what it needs come from the caller (``tasks.measure.serving.pyfunc_spec``).

    Load it back with ``mlflow.pyfunc.load_model(f"runs:/{run_id}/model")`` or ``download_model``.
    """
    import mlflow.pyfunc

    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / artifact_path
        mlflow.pyfunc.save_model(str(target), python_model=python_model, artifacts={"model_dir": str(model_dir)},
                                 pip_requirements=pip_requirements, code_paths=code_paths)
        client().log_artifacts(run_id, str(target), artifact_path)
    return f"runs:/{run_id}/{artifact_path}"


def register_model(run_id: str, name: str, alias: str | None, tags: dict | None = None,
                   description: str = "") -> str:
    """Register ``runs:/<run_id>/model`` as a new version of ``name`` and point ``alias`` at it -> the version.

    Safe with many flows registering at once: the registered model is created by whoever comes first; the version is
    created exactly once (a failed attempt is looked up by its registration token before another is made) and read
    back to check it points at ``run_id``; anything else raises, so the flow ends FAILED instead of reporting a
    version that does not exist."""
    c = client()
    if not c.search_registered_models(filter_string=f"name = '{name}'", max_results=1):
        try:
            c.create_registered_model(name, description=description)
        except Exception as exc:  # another flow created it in the meantime (any other error: it will not exist)
            if not c.search_registered_models(filter_string=f"name = '{name}'", max_results=1):
                raise
            log.info("registered model %s was created concurrently (%s)", name, str(exc).splitlines()[0][:120])
    token = uuid.uuid4().hex
    version_tags = {**{k: str(v) for k, v in (tags or {}).items()}, "effilm.registration_token": token}

    def mine():
        found = c.search_model_versions(f"name = '{name}' and tags.`effilm.registration_token` = '{token}'")
        return sorted(found, key=lambda v: int(v.version))

    mv = create_once(f"create_model_version {name}",
                     lambda: c.create_model_version(name, f"runs:/{run_id}/model", run_id=run_id, tags=version_tags),
                     mine, lambda v: c.delete_model_version(name, v.version))
    version = str(mv.version)
    back = c.get_model_version(name, version)
    if back.run_id != run_id:
        raise RuntimeError(f"registry check failed: {name} version {version} points at run {back.run_id}, not {run_id}")
    if alias:
        c.set_registered_model_alias(name, alias, version)  # idempotent: the last flow to set it wins
    return version


def set_alias(name: str, alias: str, version: str) -> None:
    client().set_registered_model_alias(name, alias, version)


def alias_run(name: str, alias: str):
    """The run behind ``name@alias`` (None when the model or the alias does not exist yet)."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    return client().get_run(mv.run_id) if mv.run_id else None


def download_model(run_id: str, artifact_path: str = "model", dst: str | None = None) -> str:
    """-> local effilm model folder (the safetensors folder inside the logged pyfunc model)."""
    local = client().download_artifacts(run_id, artifact_path, dst or tempfile.mkdtemp(prefix="effilm-model-"))
    found = sorted(p.parent for p in (Path(local) / "artifacts").rglob("effilm.json"))
    if not found:
        raise FileNotFoundError(f"run {run_id}: no effilm model folder inside artifact '{artifact_path}'")
    return str(found[0])


def get_run(run_id: str):
    return client().get_run(run_id)


def child_runs(parent_run_id: str) -> list:
    run = client().get_run(parent_run_id)
    return client().search_runs([run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=1000)


# ------------------------------------------------------------------------------------------- reading back


def latest_parent_run(experiment: str, status: str | None = "FINISHED"):
    """The newest flow (parent) run of an experiment, or None."""
    c = client()
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return None
    flt = "tags.variant = 'parent'" + (f" and attributes.status = '{status}'" if status else "")
    runs = c.search_runs([exp.experiment_id], filter_string=flt, order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def experiment_names() -> list[str]:
    return [e.name for e in client().search_experiments()]


def download_text(run_id: str, artifact_file: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        return Path(client().download_artifacts(run_id, artifact_file, tmp)).read_text()


def ui_compare_url(base: str, experiment_id: str | list[str], run_ids: list[str]) -> str:
    """The MLflow UI's compare-runs page for these runs (open it in `effilm ui` / a tracking server)."""
    from urllib.parse import quote

    experiments = [experiment_id] if isinstance(experiment_id, str) else list(experiment_id)
    return f"{base.rstrip('/')}/#/compare-runs?runs={quote(json.dumps(run_ids))}&experiments={quote(json.dumps(experiments))}"


def search_runs_frame(experiment_id: str, filter_string: str = "", order_by: list[str] | None = None,
                      max_results: int = 1000):
    """``mlflow.search_runs`` on this project's store (``tracking_uri()``) -> pandas DataFrame, one row per run:
    ``run_id``, ``status``, ``start_time``, ..., and ``metrics.*``, ``params.*``, ``tags.*`` columns.

    The fluent API reads MLflow's process-wide tracking URI; it is pointed at ``tracking_uri()`` for this call and
    put back afterwards (the environment variable included), so ``MLFLOW_TRACKING_URI`` keeps working as before."""
    import mlflow
    from mlflow.tracking._tracking_service import utils as mlflow_uri

    uri = tracking_uri()
    client()  # an embedded sqlite store is created/migrated (under its lock) before the first read
    explicit, env = getattr(mlflow_uri, "_tracking_uri", None), os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        return _retrying("search_runs")(mlflow.search_runs, experiment_ids=[experiment_id], filter_string=filter_string,
                                        order_by=order_by, max_results=max_results, output_format="pandas")
    finally:
        mlflow.set_tracking_uri(explicit)
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env
