"""Scheduled runs on a real Prefect server: `effilm server start`, `effilm serve` with an interval schedule, and the
prefect.yaml deployments run by a process worker. Each ends with the flow's runs in MLflow."""

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from tasks.core import config
from tests.reliability.helpers import ROOT, tiny_args
from tests.services import free_port

pytestmark = pytest.mark.integration


def _api(url: str, path: str, body: dict | None = None):
    req = urllib.request.Request(f"{url}{path}", data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"}, method="POST" if body is not None else "GET")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _completed_runs(url: str, deployment_id: str, flow_run_id: str | None = None) -> list[dict]:
    runs = _api(url, "/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [deployment_id]}}})
    # one flow run: runs an earlier test left behind (crashed when its `effilm serve` was stopped) are not this one's
    runs = [r for r in runs if flow_run_id in (None, r["id"])]
    bad = [r for r in runs if r["state_type"] in ("FAILED", "CRASHED")]
    assert not bad, f"flow run {bad[0]['name']} ended {bad[0]['state_type']}"
    return [r for r in runs if r["state_type"] == "COMPLETED"]


def _wait_for_completed(url: str, deployment_id: str, proc: subprocess.Popen, log: Path, timeout: float = 300,
                        flow_run_id: str | None = None, auto_scheduled: bool = False) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        done = [r for r in _completed_runs(url, deployment_id, flow_run_id)
                if r["auto_scheduled"] or not auto_scheduled]
        if done:
            return done[0]
        assert proc.poll() is None or proc.returncode == 0, log.read_text()[-3000:]
        time.sleep(2)
    raise AssertionError(f"no completed flow run within {timeout}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-server")
    env = {**os.environ, "EFFILM_HOME": str(home), "PREFECT_HOME": str(home / "prefect"), "HF_HUB_OFFLINE": "1",
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "3", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "EFFILM_LOG_LEVEL": "WARNING"}
    env.pop("PREFECT_API_URL", None)
    port = free_port()
    out = subprocess.run([sys.executable, "-m", "flows.cli", "server", "start", "--port", str(port)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    url = f"http://127.0.0.1:{port}/api"
    assert (home / "prefect" / "server.pid").is_file() and (home / "prefect-server.json").is_file()
    assert subprocess.run([sys.executable, "-m", "flows.cli", "server", "status"], cwd=ROOT, env=env).returncode == 0
    try:
        yield {"url": url, "env": {**env, "PREFECT_API_URL": url}, "home": home, "port": port}
    finally:
        subprocess.run([sys.executable, "-m", "flows.cli", "server", "stop"], cwd=ROOT, env=env, timeout=60)
        assert subprocess.run([sys.executable, "-m", "flows.cli", "server", "status"], cwd=ROOT, env=env).returncode == 1


def _mlflow_parent_for(uri: str, flow_run_id: str):
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("effilm/mobile-bert")
    runs = c.search_runs([exp.experiment_id], filter_string=f"tags.prefect_flow_run_id = '{flow_run_id}'")
    parent = [r for r in runs if r.data.tags["variant"] == "parent"]
    assert parent and parent[0].info.status == "FINISHED", [r.data.tags for r in runs]
    kids = c.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent[0].info.run_id}'")
    assert kids and "eval/accuracy" in kids[0].data.metrics
    return parent[0]


def test_serve_runs_the_flow_on_its_interval_schedule(prefect_server, tiny_model_dir, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**prefect_server["env"], "MLFLOW_TRACKING_URI": uri, "PREFECT_LOCAL_STORAGE_PATH": str(tmp_path / "results")}
    args = tiny_args(tiny_model_dir, tmp_path / "out")[2:]  # drop "run mobile-bert"
    log = tmp_path / "serve.log"
    with open(log, "w") as fh:
        serve = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "mobile-bert", *args, "--interval", "10",
                                  "--limit", "1"],  # one flow at a time: a 10 s interval outpaces a flow on 2 cores
                                 cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                dep = _api(prefect_server["url"], "/deployments/name/mobile-bert/mobile-bert-quick")
                break
            except OSError:
                assert time.time() < deadline and serve.poll() is None, log.read_text()[-3000:]
                time.sleep(1)
        assert dep["schedules"][0]["schedule"]["interval"] == 10.0 and dep["schedules"][0]["active"]
        # a run created by the server's scheduler (not by hand) that completed
        run = _wait_for_completed(prefect_server["url"], dep["id"], serve, log, auto_scheduled=True)
        _mlflow_parent_for(uri, run["id"])
    finally:
        os.killpg(serve.pid, 15)
        serve.wait(60)


def test_prefect_yaml_deployments_run_on_a_process_worker(prefect_server, tiny_model_dir, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**prefect_server["env"], "MLFLOW_TRACKING_URI": uri, "EFFILM_REPO": str(ROOT),
           "PREFECT_LOCAL_STORAGE_PATH": str(tmp_path / "results")}
    prefect = [sys.executable, "-m", "prefect"]
    subprocess.run([*prefect, "work-pool", "create", "effilm-process", "--type", "process"], cwd=ROOT, env=env,
                   check=True, capture_output=True, timeout=120)
    out = subprocess.run([*prefect, "--no-prompt", "deploy", "--all"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for name in ("mobile-bert/mobile-bert-quick", "long-document/long-document-quick"):
        dep = _api(prefect_server["url"], f"/deployments/name/{name}")
        assert dep["work_pool_name"] == "effilm-process"
        assert dep["schedules"][0]["schedule"]["cron"] == config.load_config(name.split("/")[0]).schedule.cron

    sets = tiny_args(tiny_model_dir, tmp_path / "out")[4:][1::2]
    params = json.dumps({"profile": "quick", "overrides": sets})
    out = subprocess.run([*prefect, "deployment", "run", "mobile-bert/mobile-bert-quick", "--params", params],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    flow_run_id = re.search(r"flow-run/([0-9a-f-]{36})", out.stdout).group(1)
    log = tmp_path / "worker.log"
    with open(log, "w") as fh:
        worker = subprocess.Popen([*prefect, "worker", "start", "--pool", "effilm-process", "--run-once"], cwd=tmp_path,
                                  env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        dep = _api(prefect_server["url"], "/deployments/name/mobile-bert/mobile-bert-quick")
        run = _wait_for_completed(prefect_server["url"], dep["id"], worker, log, flow_run_id=flow_run_id)
        _mlflow_parent_for(uri, run["id"])
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, 15)
        worker.wait(60)


def test_schedules_come_from_the_case_study_files_and_match_prefect_yaml():
    from flows.serve import build_deployments

    declared = {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    for dep in build_deployments(list(config.CASE_STUDIES), "quick", [], None):
        cfg = config.load_config(dep.flow_name if hasattr(dep, "flow_name") else dep.name.rsplit("-", 1)[0])
        sched = dep.schedules[0].schedule
        assert sched.cron == cfg.schedule.cron and str(sched.timezone) == cfg.schedule.timezone
        assert declared[dep.name]["schedules"][0]["cron"] == cfg.schedule.cron
        assert dep.parameters["profile"] == "quick"
    # command-line interval wins; a bad cron is a config error naming the key
    dep = build_deployments(["mobile-bert"], "quick", [], None, interval=60)[0]
    assert dep.schedules[0].schedule.interval.total_seconds() == 60
    with pytest.raises(config.ConfigError, match="schedule.cron"):
        config.load_config("mobile-bert", "quick", ["schedule.cron=every day"])
    with pytest.raises(config.ConfigError, match="schedule.interval_seconds"):
        config.load_config("mobile-bert", "quick", ["schedule.interval_seconds=60"])  # the file also sets cron
    with pytest.raises(config.ConfigError, match="schedule.timezone"):
        config.load_config("long-document", "quick", ["schedule.timezone=Mars/Olympus"])


def test_serve_without_a_server_says_what_to_do(tmp_path):
    env = {**os.environ, "EFFILM_HOME": str(tmp_path)}
    env.pop("PREFECT_API_URL", None)
    out = subprocess.run([sys.executable, "-m", "flows.cli", "serve", "mobile-bert"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "effilm server start" in out.stderr


def test_server_start_on_a_port_used_by_another_prefect_server(prefect_server, tmp_path):
    env = {**prefect_server["env"], "EFFILM_HOME": str(tmp_path)}
    env.pop("PREFECT_API_URL")
    out = subprocess.run([sys.executable, "-m", "flows.cli", "server", "start", "--port", str(prefect_server["port"])],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 2 and "'--port'" in out.stderr and f"PREFECT_API_URL={prefect_server['url']}" in out.stderr
    assert not (tmp_path / "prefect" / "server.pid").exists()


def test_server_dying_while_starting_shows_the_tail_of_its_log(tmp_path):
    env = {**os.environ, "EFFILM_HOME": str(tmp_path), "EFFILM_LOG_LEVEL": "WARNING",
           "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path / 'no-such-dir' / 'prefect.db'}"}
    env.pop("PREFECT_API_URL", None)
    cli = [sys.executable, "-m", "flows.cli", "server"]
    out = subprocess.run([*cli, "start", "--port", str(free_port())], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 1 and "exited while starting" in out.stderr, out.stdout + out.stderr
    assert str(tmp_path / "prefect-server.log") in out.stderr and "unable to open database file" in out.stderr
    assert not (tmp_path / "prefect" / "server.pid").exists()  # nothing left for the next start to trip on
    assert subprocess.run([*cli, "status"], cwd=ROOT, env=env, capture_output=True, timeout=120).returncode == 1


def test_ui_prints_each_experiments_runs_table_link(tmp_path, monkeypatch, capsys):
    """MLflow 3 opens an experiment on its GenAI overview; `effilm ui` prints the runs-table links first."""
    from flows import cli

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    exp_id = MlflowClient(uri).create_experiment("effilm/mobile-bert")
    started = []
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd: started.append(cmd) or 0)
    assert cli.cmd_ui(cli.build_parser().parse_args(["ui", "--port", "5123"])) == 0
    out = capsys.readouterr().out
    # the runs-table route of MLflow's UI (a hash route: "/experiments/:experimentId/runs")
    assert f"effilm/mobile-bert  http://127.0.0.1:5123/#/experiments/{exp_id}/runs" in out
    assert out.index("#/experiments/") < out.index("MLflow UI for")
    assert started and started[0][started[0].index("--backend-store-uri") + 1] == uri
    assert cli.cmd_ui(cli.build_parser().parse_args(["ui", "--links-only"])) == 0 and len(started) == 1
    assert f"http://127.0.0.1:5000/#/experiments/{exp_id}/runs" in capsys.readouterr().out
