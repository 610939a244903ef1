"""``effilm serve``: both case-study flows as Prefect deployments with the schedules from their YAML files.

A long-running process (``prefect.serve``) registers the deployments with the Prefect server, polls it, and runs
each scheduled flow run in a subprocess. The same deployments for a work pool + workers live in ``prefect.yaml``
(``prefect deploy --all``); docs/scaling-out.md shows both.
"""

from __future__ import annotations

import os
from datetime import timedelta

from flows import server
from tasks.core import config
from tasks.core.config import ConfigError


def deployment_name(study: str, profile: str) -> str:
    return f"{study}-{profile}"


def schedule_args(schedule: config.ScheduleConfig, cron: str | None = None, interval: int | None = None) -> dict:
    """Keyword arguments for ``Flow.to_deployment`` (command-line values win over the case-study file)."""
    if cron or interval:
        schedule = config.ScheduleConfig(cron=cron, interval_seconds=interval, timezone=schedule.timezone)
    if not schedule.active or not (schedule.cron or schedule.interval_seconds):
        return {}
    if schedule.cron:
        from prefect.client.schemas.schedules import CronSchedule

        return {"schedule": CronSchedule(cron=schedule.cron, timezone=schedule.timezone)}
    from prefect.client.schemas.schedules import IntervalSchedule

    return {"schedule": IntervalSchedule(interval=timedelta(seconds=schedule.interval_seconds), timezone=schedule.timezone)}


def build_deployments(studies: list[str], profile: str, overrides: list[str] | None, config_path: str | None,
                      cron: str | None = None, interval: int | None = None) -> list:
    from flows import catalog

    flows = catalog.flows()
    deployments = []
    for study in studies:
        cfg = config.load_config(study, profile, overrides, config_path)  # a bad config fails here, not at 2 a.m.
        params = {"profile": profile, "overrides": list(overrides or []),
                  "config_path": os.path.abspath(config_path) if config_path else None}
        deployments.append(flows[study].to_deployment(
            name=deployment_name(study, profile), parameters=params, tags=["effilm", study, profile],
            description=f"effilm {study} ({profile} profile)", **schedule_args(cfg.schedule, cron, interval)))
    return deployments


def serve(studies: list[str], profile: str, overrides: list[str] | None, config_path: str | None,
          cron: str | None = None, interval: int | None = None, limit: int | None = None) -> None:
    url = server.api_url()
    if not url:
        raise ConfigError("effilm serve", "PREFECT_API_URL",
                          "no Prefect server: schedules need one (the temporary server has no scheduler). Run "
                          "`effilm server start` first, or set PREFECT_API_URL to your team's server")
    os.environ["PREFECT_API_URL"] = url
    deployments = build_deployments(studies, profile, overrides, config_path, cron, interval)
    from prefect import serve as prefect_serve

    prefect_serve(*deployments, limit=limit)
