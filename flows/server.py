"""``effilm server start|stop|status``: a local Prefect server in the background.

Prefect's temporary server (what ``effilm run`` uses) has no scheduler, so schedules need a real server:
``prefect server start`` runs the API, UI and the scheduler service. We start it detached, log to
``.effilm/prefect-server.log``, keep its pid/url in ``.effilm/prefect-server.json``, and wait until it is healthy.
``effilm serve`` and ``effilm run`` find it there (or use ``PREFECT_API_URL`` when set).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tasks.core.config import ConfigError
from tasks.core.tracking import pid_alive


def state_dir() -> Path:
    return Path(os.environ.get("EFFILM_HOME") or ".effilm").resolve()


def _state_file() -> Path:
    return state_dir() / "prefect-server.json"


def _healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def running() -> dict | None:
    """The server this folder started, if it is up: {"pid", "api_url", "ui_url", "log"}."""
    f = _state_file()
    if not f.is_file():
        return None
    info = json.loads(f.read_text())
    if pid_alive(info["pid"]) and _healthy(info["api_url"]):
        return info
    return None


def api_url() -> str | None:
    """PREFECT_API_URL if set, else the server started by `effilm server start` in this folder."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    info = running()
    return info["api_url"] if info else None


def start(host: str = "127.0.0.1", port: int = 4200, timeout: float = 180.0) -> dict:
    info = running()
    if info:
        return {**info, "already_running": True}
    api = f"http://{host}:{port}/api"
    if _healthy(api):
        raise ConfigError("effilm server start", "--port", f"port {port} already serves a Prefect API not started here; "
                                                            f"use it with PREFECT_API_URL={api} or pick another --port")
    d = state_dir()
    d.mkdir(parents=True, exist_ok=True)
    log = d / "prefect-server.log"
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port), "--scheduler"]
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    info = {"pid": proc.pid, "api_url": api, "ui_url": f"http://{host}:{port}", "log": str(log),
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    deadline = time.time() + timeout
    while not _healthy(api):
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with code {proc.returncode}; see {log}:\n"
                               + log.read_text(errors="replace")[-2000:])
        if time.time() > deadline:
            _terminate(proc.pid)
            raise RuntimeError(f"prefect server did not answer on {api} within {timeout:.0f}s; see {log}")
        time.sleep(0.5)
    _state_file().write_text(json.dumps(info, indent=2))
    return info


def _terminate(pid: int, grace: float = 20.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + grace
    while time.time() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop() -> dict | None:
    f = _state_file()
    if not f.is_file():
        return None
    info = json.loads(f.read_text())
    _terminate(info["pid"])
    f.unlink(missing_ok=True)
    return info
