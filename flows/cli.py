"""The ``effilm`` command.

    effilm run mobile-bert --profile quick --set train.epochs=1
    effilm run all --profile quick
    effilm validate mobile-bert --profile full
    effilm search mobile-bert [--trials 24 | --time-budget 2h] [--sampler tpe|nsga2|random]
    effilm compare [--experiment effilm/mobile-bert] [--run RUN_ID ...] [--metrics 'eval/*' ...]
    effilm reproduce RUN_ID [--force]
    effilm server start|stop|status          # a local Prefect server with the scheduler
    effilm serve all                         # deployments with the case-study schedules
    effilm ui
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys

from flows import catalog
from tasks.core.config import CASE_STUDIES, ConfigError, load_config

EXIT_CONFIG = 2


def _studies(name: str) -> list[str]:
    if name == "all":
        return list(CASE_STUDIES)
    if name not in CASE_STUDIES:
        raise ConfigError("effilm run", "case_study", f"unknown case study '{name}'; choose one of: all, {', '.join(CASE_STUDIES)}")
    return [name]


def cmd_validate(a) -> int:
    for study in _studies(a.case_study):
        cfg = load_config(study, a.profile, a.set, a.config)
        print(f"{study} ({a.profile}): OK")
        if a.show:
            import yaml

            print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return 0


def cmd_run(a) -> int:
    studies = _studies(a.case_study)
    if a.config and len(studies) > 1:
        raise ConfigError("--config", "case_study", "--config applies to one case study; name it instead of 'all'")
    for study in studies:  # validate everything before starting anything: a typo costs no run
        load_config(study, a.profile, a.set, a.config)
    from flows import server

    server.ensure_api()
    flows = catalog.flows()
    for study in studies:
        result = flows[study](profile=a.profile, overrides=a.set or [], config_path=a.config)
        print(f"{study}: MLflow parent run {result['parent_run_id']}; report {result['report']['markdown']}", flush=True)
    return 0


def parse_duration(text: str) -> float:
    """'2h', '90m', '45s', '1.5h' or plain minutes -> minutes."""
    units = {"h": 60.0, "m": 1.0, "s": 1 / 60}
    t = text.strip().lower()
    try:
        value = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ConfigError("--time-budget", None, f"not a duration: {text!r} (use e.g. 2h, 90m, 45s)")
    return value


def search_overrides(a) -> list[str]:
    """The search's flags as config overrides (after the user's --set ones, so the flags win)."""
    sets = list(a.set or [])
    if a.trials is not None:
        sets.append(f"search.trials={a.trials}")
    if a.time_budget is not None:
        sets.append(f"search.time_budget_minutes={parse_duration(a.time_budget)}")
        if a.trials is None and not any(x.replace(" ", "").startswith("search.trials=") for x in sets):  # alone: no count
            sets.append("search.trials=null")
    if a.sampler is not None:
        sets.append(f"search.sampler={a.sampler}")
    return sets


def cmd_search(a) -> int:
    if a.case_study != "mobile-bert":
        raise ConfigError("effilm search", "case_study", f"the recipe search is for mobile-bert, not '{a.case_study}'")
    sets = search_overrides(a)
    load_config(a.case_study, a.profile, sets, a.config)  # a typo costs no run
    from flows import server

    server.ensure_api()
    from flows.search import search_mobile_bert

    result = search_mobile_bert(profile=a.profile, overrides=sets, config_path=a.config)
    print(f"search: MLflow parent run {result['parent_run_id']}; study {result['study']} ({result['storage']}); "
          f"{len(result['rows'])} trials, hypervolume {result['hypervolume']:.4f}\n{result['selection']}\n"
          f"report {result['report']['markdown']}", flush=True)
    return 0


def cmd_compare(a) -> int:
    from tasks.core import tracking
    from tasks.measure import compare

    try:
        table = compare.collect(a.experiment, a.run, a.metrics)
    except compare.CompareError as exc:
        raise ConfigError("effilm compare", None, str(exc)) from None
    for parent in table["parents"]:
        print(f"{parent.info.run_name}  (run {parent.info.run_id}, {parent.info.status}, {tracking.tracking_uri()})")
    print(compare.render_text(table))
    paths = compare.write(table, a.out)
    print(f"\nwrote {paths['csv']} and {paths['markdown']}")
    ids = [r["run_id"] for r in table["rows"]]
    experiments = list(dict.fromkeys(p.info.experiment_id for p in table["parents"]))
    print("MLflow compare view (with `effilm ui` running):",
          tracking.ui_compare_url(f"http://127.0.0.1:{a.ui_port}", experiments, ids))
    return 0


def cmd_reproduce(a) -> int:
    from flows.reproduce import reproduce

    tolerance = {} if a.latency_tolerance is None else {"latency_tolerance": a.latency_tolerance}
    from flows import server

    server.ensure_api()
    report = reproduce(a.run_id, force=a.force, output_dir=a.output_dir, **tolerance)
    print(report.markdown())
    return 0 if report.ok else 1


def cmd_server(a) -> int:
    from flows import server

    try:
        if a.action == "start":
            info = server.start(a.host, a.port, timeout=a.timeout)
            word = "already running" if info.get("already_running") else "started"
            print(f"Prefect server {word} (pid {info['pid']}): UI {info['ui_url']}, log {info['log']}\n"
                  f"effilm commands in this folder use it; elsewhere: export PREFECT_API_URL={info['api_url']}")
        elif a.action == "stop":
            info = server.stop()
            if info is None:
                print("no Prefect server started from this folder")
            elif info["was_running"]:
                print(f"stopped Prefect server pid {info['pid']}")
            else:
                print(f"Prefect server pid {info['pid']} had already exited; its pid file is removed")
        else:
            info = server.status()
            if info and info["available"]:
                print(f"running (pid {info['pid']}, Prefect {info['server_version']}): {info['ui_url']}")
                return 0
            print(f"not answering (pid {info['pid']}, {info['api_url']}): {info['error']}" if info else "not running")
            return 1
    except RuntimeError as exc:
        print(f"effilm: error: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_serve(a) -> int:
    from flows.serve import serve

    studies = _studies(a.case_study)
    if a.config and len(studies) > 1:
        raise ConfigError("--config", "case_study", "--config applies to one case study; name it instead of 'all'")
    serve(studies, a.profile, a.set or [], a.config, cron=a.cron, interval=a.interval, limit=a.limit)
    return 0


def cmd_ui(a) -> int:
    from tasks.core import tracking

    uri = tracking.tracking_uri()
    base = f"http://{'127.0.0.1' if a.host in ('0.0.0.0', '::') else a.host}:{a.port}"
    # MLflow 3 opens an experiment on its GenAI overview (trace charts, empty here): link each runs table instead
    try:
        experiments = sorted(tracking.client().search_experiments(), key=lambda e: e.name)
    except Exception as exc:  # the links are a convenience: the UI itself still starts
        if a.links_only:
            raise
        print(f"(could not list the experiments in {uri}: {exc})")
        experiments = []
    if experiments:
        width = max(len(e.name) for e in experiments)
        print("Runs tables:")
        for e in experiments:
            print(f"  {e.name:<{width}}  {base}/#/experiments/{e.experiment_id}/runs")
    if a.links_only:
        return 0
    print(f"MLflow UI for {uri} on http://{a.host}:{a.port} (Ctrl-C to stop)", flush=True)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", a.host, "--port", str(a.port)]
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:
        return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="effilm", description="Make language models small and fast, reproducibly.")
    sub = p.add_subparsers(dest="command", required=True)

    def study_args(sp):
        sp.add_argument("case_study", help=f"one of: all, {', '.join(CASE_STUDIES)}")
        sp.add_argument("--profile", default="quick", help="profile in the case-study file (quick | full)")
        sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. train.epochs=2")
        sp.add_argument("--config", help="use this case-study YAML instead of the packaged one")

    r = sub.add_parser("run", help="run case-study flows")
    study_args(r)
    r.set_defaults(fn=cmd_run)
    v = sub.add_parser("validate", help="validate a case-study configuration and exit")
    study_args(v)
    v.add_argument("--show", action="store_true", help="print the resolved configuration")
    v.set_defaults(fn=cmd_validate)
    sr = sub.add_parser("search", help="search compression recipes (multi-objective, Optuna) under the constraints")
    study_args(sr)
    sr.add_argument("--trials", type=int, help="trials to finish, counted across resumes (default search.trials)")
    sr.add_argument("--time-budget", help="stop asking for new trials this long after the start, e.g. 2h, 90m "
                    "(alone: no trial count; with --trials: whichever comes first)")
    sr.add_argument("--sampler", choices=["tpe", "nsga2", "random"], help="default search.sampler (tpe)")
    sr.set_defaults(fn=cmd_search)
    c = sub.add_parser("compare", help="the variants of a flow run side by side (terminal, CSV, markdown)")
    c.add_argument("--experiment", help="MLflow experiment (default effilm/mobile-bert); its newest flow run is shown")
    c.add_argument("--run", nargs="+", help="a flow (parent) run id, or one of its variant runs; several: their "
                   "variants in one table (e.g. a search's trials beside `effilm run`'s variants)")
    c.add_argument("--metrics", nargs="+", metavar="PATTERN", help="metric keys or globs, e.g. 'eval/*' 'bench/*_b1_t1'")
    c.add_argument("--out", default="outputs/compare", help="folder for the CSV and markdown (default outputs/compare)")
    c.add_argument("--ui-port", type=int, default=5000, help=argparse.SUPPRESS)
    c.set_defaults(fn=cmd_compare)
    rp = sub.add_parser("reproduce", help="re-run a recorded MLflow run from its config, data and code; diff the metrics")
    rp.add_argument("run_id", help="a flow (parent) run, or one variant run (only that variant is rebuilt)")
    rp.add_argument("--force", action="store_true", help="re-run even if the code or the data changed since")
    rp.add_argument("--output-dir", help="where the re-run writes (default outputs/reproduce/<run>-<time>)")
    rp.add_argument("--latency-tolerance", type=float, default=None,
                    help="relative tolerance for medians at one thread (bench/latency_ms_p50_*_t1; default "
                         "flows.reproduce.LATENCY_TOLERANCE); tails and all-thread timings are reported, not judged; "
                         "quality metrics must match exactly")
    rp.set_defaults(fn=cmd_reproduce)
    sv = sub.add_parser("server", help="a local Prefect server (API, UI, scheduler) in the background")
    sv.add_argument("action", choices=["start", "stop", "status"])
    sv.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    sv.add_argument("--port", type=int, default=4200)
    sv.add_argument("--timeout", type=float, default=180.0, help="start: seconds to wait for the server to answer")
    sv.set_defaults(fn=cmd_server)
    se = sub.add_parser("serve", help="serve case-study flows as scheduled Prefect deployments (needs a server)")
    study_args(se)
    se.add_argument("--cron", help="override the case-study schedule with this cron expression")
    se.add_argument("--interval", type=int, help="override the schedule: run every N seconds")
    se.add_argument("--limit", type=int, help="at most this many flow runs at once")
    se.set_defaults(fn=cmd_serve)
    u = sub.add_parser("ui", help="open the MLflow UI on the tracking store")
    u.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; only change it on purpose)")
    u.add_argument("--port", type=int, default=5000)
    u.add_argument("--links-only", action="store_true", help="print each experiment's runs-table link and exit")
    u.set_defaults(fn=cmd_ui)
    return p


def main(argv: list[str] | None = None) -> int:
    # offline-friendly defaults: no telemetry from Prefect's local server (set before Prefect is imported)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Prefect's temporary server gets 20 s to start by default; several flows starting at once on a 2-core laptop
    # need longer ("Timed out while attempting to connect to ephemeral Prefect API server").
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    logging.basicConfig(level=os.environ.get("EFFILM_LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    if args.command in ("run", "serve", "reproduce", "search"):
        from flows import server

        url = server.api_url()  # a server from `effilm server start` in this folder (Prefect reads this at import)
        if url:
            os.environ["PREFECT_API_URL"] = url
    from tasks.core.tracking import TrackingStoreBusy

    try:
        return args.fn(args)
    except ConfigError as exc:
        print(f"effilm: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except TrackingStoreBusy as exc:
        print(f"effilm: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("effilm: interrupted; open MLflow runs were marked KILLED", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
