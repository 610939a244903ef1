"""Pieces every effilm flow uses: the start of a flow run and the run tags. (Cached task calls and task runners are
in ``tasks/core/orchestrate.py``; every ``@task`` lives beside the code it runs, in ``tasks/``.)"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from pathlib import Path
from typing import Iterator

from prefect import get_run_logger

from tasks.core import config, data, models, tracking
from tasks.core.orchestrate import code_version


@contextlib.contextmanager
def flow_run(cfg, study: str, label: str | None = None) -> Iterator[tuple[str, dict]]:
    """How every case-study flow starts: mark runs of killed flow processes KILLED; preflight (bad data or an
    unavailable model fails here, before any MLflow run exists); open the parent run and record the config, the
    environment and the data. Yields ``(parent_run_id, data_info)``; the parent run ends with the ``with`` block.
    ``label`` names the parent run (default: the study), e.g. ``mobile-bert-search``."""
    logger = get_run_logger()
    reaped = tracking.reap_stale_runs(cfg.experiment)
    if reaped:
        logger.warning("marked %d run(s) of killed flow processes as KILLED: %s", len(reaped), ", ".join(reaped))
    data_info = data.load_data_task(cfg.data, cfg.seed, str(Path(cfg.output_dir)))
    models.check_source(cfg.model.source, cfg.model.trust_remote_code, cfg.model.revision)

    with tracking.run(cfg.experiment, f"{label or study}-{cfg.profile}-{time.strftime('%Y%m%d-%H%M%S')}",
                      {**base_tags(study, cfg.profile, data_info["fingerprint"]), "variant": "parent"}) as parent:
        tracking.log_config(parent, cfg.model_dump(mode="json"), config.to_flat_params(cfg))
        tracking.log_environment(parent)
        tracking.log_metrics(parent, {f"data/{k}": v for k, v in data_info["stats"].items()})
        tracking.log_dataset(parent, data_info["paths"], "bbc" if cfg.data.source == "bbc" else cfg.data.source,
                             data_info["source"], data_info["fingerprint"])
        logger.info("data: %s", data_info["stats"])
        yield parent, data_info


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
