"""The search's Optuna study: where it is stored, which sampler asks, how a killed search resumes, and how a front
is scored (hypervolume).

Storage lives beside the MLflow store: a sqlite tracking store ``…/mlflow.db`` gets ``…/mlflow.optuna.db`` (Optuna
and MLflow both keep their schema revision in an ``alembic_version`` table, so one sqlite file cannot hold both —
tried: Optuna 5.0 refuses it); a PostgreSQL store gets the schema ``optuna`` in the same database. An ``http(s)``
tracking server hides its database: set ``search.storage`` to share a study, else it is a sqlite file in the output
folder.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

from tasks.core.config import ConfigError, SearchConfig
from tasks.search.recipes import PARAMS_VERSION

log = logging.getLogger(__name__)

# objective -> (metric key, direction); the metric keys are the ones every variant run carries
OBJECTIVES = {"accuracy": ("val/accuracy", "maximize"), "latency": ("bench/latency_ms_p50_b1_t1", "minimize"),
              "size": ("size/disk_mb", "minimize"), "runtime_rss": ("bench/runtime_rss_mb", "minimize")}
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def storage_url(tracking_uri: str, output_dir: str | Path, explicit: str | None = None) -> str:
    if explicit:
        return explicit
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        return f"sqlite:///{db.with_name(db.stem + '.optuna.db')}"
    if tracking_uri.startswith(("postgresql", "postgres")):
        import sqlalchemy as sa

        url = sa.engine.make_url(tracking_uri)
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE SCHEMA IF NOT EXISTS optuna"))
        engine.dispose()
        return url.update_query_dict({"options": "-csearch_path=optuna"}).render_as_string(hide_password=False)
    path = Path(output_dir).resolve() / "search.optuna.db"
    log.warning("MLflow tracking URI %s hides its database: the search study is stored in %s (set search.storage "
                "to a database URL to share it)", tracking_uri, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def sampler(cfg: SearchConfig) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if cfg.sampler == "tpe":
            # constant_liar: trials asked together (a parallel batch) are steered apart
            return optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=cfg.startup_trials, multivariate=True,
                                              constant_liar=True)
        if cfg.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=cfg.seed, population_size=cfg.population_size)
        return optuna.samplers.RandomSampler(seed=cfg.seed)


def open_study(name: str, storage: str, cfg: SearchConfig) -> optuna.Study:
    """Create the study or load it to resume; refuse when another live search process owns it."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = [OBJECTIVES[o][1] for o in cfg.objectives]
    study = optuna.create_study(study_name=name, storage=storage, directions=directions, sampler=sampler(cfg),
                                load_if_exists=True)
    owner = study.user_attrs.get("owner")
    if owner and not _mine(owner) and alive(owner, study):
        where = "this host" if owner["host"] == socket.gethostname() else f"host {owner['host']} (heartbeat " \
            f"{time.time() - study.user_attrs[_beat_key(owner)]:.0f} s ago)"
        raise ConfigError("effilm search", "search.study_name",
                          f"study '{name}' is being searched by process {owner['pid']} on {where}; wait for it, "
                          "or give this search another search.study_name")
    version = study.user_attrs.get("params_version")
    if version is None and study.get_trials(deepcopy=False):
        version = 1  # a study of an effilm before the params version was recorded
    if version not in (None, PARAMS_VERSION):
        raise ConfigError("effilm search", "search.study_name",
                          f"study '{name}' was begun by an earlier effilm whose trials name their recipes differently "
                          f"(params version {version}, this one {PARAMS_VERSION}): its trials cannot be resumed; "
                          "give this search another search.study_name (or leave it unset)")
    study.set_user_attr("params_version", PARAMS_VERSION)
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    study.set_user_attr(_beat_key(me), time.time())  # alive from the moment it owns the study (see heartbeat)
    study.set_user_attr("owner", me)
    return study


def first_limits(study: optuna.Study, limits: dict) -> dict:
    """The absolute constraint limits the study was first run with (stored then); ``limits`` on its first run. A
    relative limit (``min_speedup``) resolves against the teacher as measured, so without this a resumed study
    whose teacher benchmark was re-measured would judge its later trials by other limits than its earlier ones."""
    stored = study.user_attrs.get("constraint_limits")
    if stored is None:
        study.set_user_attr("constraint_limits", limits)
        return limits
    return stored


def _alive(pid: int) -> bool:
    from tasks.core.tracking import pid_alive

    return pid > 0 and pid_alive(pid)


BEAT_SECONDS = 60.0  # a search process records its heartbeat in the study this often while it holds the study
STALE_SECONDS = 300.0  # another host's process silent this long is gone (hosts' clocks assumed within minutes)


def _beat_key(owner: dict) -> str:
    return f"heartbeat:{owner.get('host')}:{owner.get('pid')}"


def _mine(owner: dict) -> bool:
    return owner.get("host") == socket.gethostname() and owner.get("pid") == os.getpid()


def alive(owner: dict | None, study: optuna.Study) -> bool:
    """Whether the search process that owns a trial (or the study) still runs: on this host, its pid; on another
    host (a study shared through PostgreSQL), a heartbeat in the study within ``STALE_SECONDS``."""
    if not owner:
        return False
    if owner.get("host") == socket.gethostname():
        return _mine(owner) or _alive(int(owner.get("pid", -1)))
    beat = study.user_attrs.get(_beat_key(owner))
    return beat is not None and time.time() - float(beat) < STALE_SECONDS


@contextmanager
def heartbeat(study: optuna.Study, every: float = BEAT_SECONDS):
    """While the search holds the study, this process's heartbeat in it every ``every`` seconds: how a search resumed on
    another host tells a live searcher's RUNNING trials from a killed one's (a pid means nothing across hosts).
    Optuna's own heartbeat (``RDBStorage(heartbeat_interval=...)``) serves ``study.optimize`` only, not ask/tell."""
    key, stop = _beat_key({"host": socket.gethostname(), "pid": os.getpid()}), threading.Event()
    study.set_user_attr(key, time.time())  # the first beat before anything else runs

    def beat() -> None:
        while not stop.wait(every):
            try:
                study.set_user_attr(key, time.time())
            except Exception as exc:  # a storage hiccup must not stop the search; the next beat tries again
                log.warning("search heartbeat not recorded: %s", exc)

    thread = threading.Thread(target=beat, name="effilm-search-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)


MAX_RETRIES = 2  # an interrupted trial is queued again at most this many times (a recipe that kills the process)


def claim(trial) -> None:
    """Mark a trial as this process's (``recover_interrupted`` tells a dead owner's trial from a live one's)."""
    trial.set_user_attr("owner", {"host": socket.gethostname(), "pid": os.getpid()})


def recover_interrupted(study: optuna.Study) -> list[int]:
    """Trials left RUNNING by a killed search process (of this host: its pid is gone; of another host sharing the
    study: its heartbeat is older than ``STALE_SECONDS``): mark each FAIL and queue its recipe again (the enqueued
    values included), so the trial is neither lost nor counted twice (its built folders are reused). A live
    process's trial is left alone. -> the recovered trial numbers."""
    recovered = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if alive(t.user_attrs.get("owner"), study):
            continue
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        retries = int(t.user_attrs.get("retries", 0))
        if retries >= MAX_RETRIES:
            log.warning("trial %d was interrupted %d times: not queued again", t.number, retries + 1)
            continue
        params = params_of(t)
        attrs = {k: v for k, v in t.user_attrs.items() if k in ("seed_recipe", "follow_up_of")}
        study.enqueue_trial(params, user_attrs={**attrs, "retry_of": t.number, "retries": retries + 1})
        recovered.append(t.number)
    return recovered


def params_of(t) -> dict:
    """A trial's recipe params, also for a trial still queued or cut short (its enqueued, fixed params)."""
    return {**t.system_attrs.get("fixed_params", {}), **t.params}


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The study's results: trials that completed or stopped early, less repeats of an earlier recipe."""
    return [t for t in study.get_trials(deepcopy=False, states=FINISHED) if "duplicate_of" not in t.user_attrs]


def repeats(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials whose recipe the sampler had drawn before: told the earlier trial's values, not built again."""
    return [t for t in study.get_trials(deepcopy=False, states=FINISHED) if "duplicate_of" in t.user_attrs]


def spent(study: optuna.Study, budget: int | None) -> int:
    """Trials counted against ``--trials``: the finished ones; a repeat only once there have been ``budget`` of
    them (a small space the sampler has exhausted still ends). No budget: the finished trials."""
    return len(finished(study)) + (max(0, len(repeats(study)) - budget) if budget is not None else 0)


def to_ask(study: optuna.Study, trials: int | None, deadline: float | None, batch: int) -> int:
    """How many trials the next batch asks for: 0 once ``trials`` are spent or the deadline (``time.monotonic``)
    has passed; with no count (a time budget alone), 0 also once the sampler has drawn more repeats than new
    recipes (a small space used up: asking on would only repeat until the deadline)."""
    if deadline is not None and time.monotonic() >= deadline:
        return 0
    if trials is None:
        return 0 if len(repeats(study)) > max(len(finished(study)), 1) else batch
    return max(0, min(batch, trials - spent(study, trials)))


def wall_seconds(study: optuna.Study) -> float | None:
    """From the first finished trial's start to the last one's end, across resumes (idle time between runs
    included): what the study's trials cost, whichever process ran them."""
    done = [t for t in finished(study) if t.datetime_start and t.datetime_complete]
    if not done:
        return None
    return round((max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds(), 1)


def losses(rows: list[dict], teacher: dict, objectives: list[str]) -> np.ndarray:
    """Objectives as losses relative to the teacher: accuracy drop in points, and latency / size / RSS as a fraction
    of the teacher's — one scale for every study of the same teacher."""
    out = []
    for r in rows:
        vec = []
        for o in objectives:
            key = OBJECTIVES[o][0]
            vec.append(100 * (teacher[key] - r[key]) if o == "accuracy" else r[key] / teacher[key])
        out.append(vec)
    return np.array(out, dtype=float).reshape(len(rows), len(objectives))


REFERENCE_DROP_POINTS = 10.0  # a recipe that loses more than 10 points, or is not faster/smaller, adds no volume


def hypervolume(rows: list[dict], teacher: dict, objectives: list[str]) -> float:
    """Hypervolume of the rows' objectives (as ``losses``) against the reference point (10 points of accuracy
    drop, the teacher's latency / size / RSS). Optuna's exact WFG implementation (``optuna._hypervolume``: not public
    API, hence the optuna<5.1 pin)."""
    from optuna._hypervolume import compute_hypervolume

    ref = np.array([REFERENCE_DROP_POINTS if o == "accuracy" else 1.0 for o in objectives])
    pts = losses(rows, teacher, objectives)
    pts = pts[(pts < ref).all(axis=1)] if len(pts) else pts
    return float(compute_hypervolume(pts, ref)) if len(pts) else 0.0


def non_dominated(rows: list[dict], teacher: dict, objectives: list[str]) -> list[dict]:
    pts = losses(rows, teacher, objectives)
    keep = []
    for i, p in enumerate(pts):
        if not any((q <= p).all() and (q < p).any() for j, q in enumerate(pts) if j != i):
            keep.append(rows[i])
    return keep


def redacted(url: str) -> str:
    """A storage URL fit for a log line or a tag (no password)."""
    import sqlalchemy as sa

    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a database URL: say nothing about it
        return "<storage>"
