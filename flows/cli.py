"""The ``effilm`` command.

    effilm run mobile-bert --profile quick --set train.epochs=1
    effilm run all --profile quick
    effilm validate mobile-bert --profile full
    effilm ui
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys

from tasks.config import CASE_STUDIES, ConfigError, load_config

EXIT_CONFIG = 2


def _flows():
    from flows.long_document import long_document
    from flows.mobile_bert import mobile_bert

    return {"mobile-bert": mobile_bert, "long-document": long_document}


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
    flows = _flows()
    for study in studies:
        result = flows[study](profile=a.profile, overrides=a.set or [], config_path=a.config)
        print(f"{study}: MLflow parent run {result['parent_run_id']}; report {result['report']['markdown']}", flush=True)
    return 0


def cmd_ui(a) -> int:
    from tasks.tracking import tracking_uri

    uri = tracking_uri()
    print(f"MLflow UI for {uri} on http://{a.host}:{a.port} (Ctrl-C to stop)")
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
    u = sub.add_parser("ui", help="open the MLflow UI on the tracking store")
    u.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; only change it on purpose)")
    u.add_argument("--port", type=int, default=5000)
    u.set_defaults(fn=cmd_ui)
    return p


def main(argv: list[str] | None = None) -> int:
    # offline-friendly defaults: no telemetry from Prefect's local server (set before Prefect is imported)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    logging.basicConfig(level=os.environ.get("EFFILM_LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    from tasks.tracking import TrackingStoreBusy

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
