"""``effilm server start|stop|status``: a local Prefect server in the background.

Prefect's temporary server (what ``effilm run`` uses) has no scheduler, so schedules need a real server. This module
drives Prefect's own commands, with ``PREFECT_HOME`` set to ``.effilm/prefect`` so that the server belongs to this
folder (its ``server.pid`` and, unless ``PREFECT_SERVER_DATABASE_CONNECTION_URL`` says otherwise, its database):

* ``start``:  ``prefect server start --background --scheduler`` then ``prefect server status --wait --timeout``;
* ``status``: ``prefect server status``;
* ``stop``:   ``prefect server stop``.

The server logs to ``.effilm/prefect-server.log`` and its URL is kept in ``.effilm/prefect-server.json``;
``effilm serve`` and ``effilm run`` in this folder find it there (or use ``PREFECT_API_URL`` when set).
A port already in use is a configuration error naming ``--port`` (exit 2); a server that dies while starting is an
error with the tail of its log.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from tasks.core.config import ConfigError
from tasks.core.tracking import pid_alive

PREFECT = [sys.executable, "-m", "prefect"]


def state_dir() -> Path:
    return Path(os.environ.get("EFFILM_HOME") or ".effilm").resolve()


def prefect_home() -> Path:
    """PREFECT_HOME of the server this folder starts: Prefect keeps its ``server.pid`` there."""
    return state_dir() / "prefect"


def _state_file() -> Path:
    return state_dir() / "prefect-server.json"


def _pid_file() -> Path:
    # prefect.cli._server_utils.SERVER_PID_FILE_NAME, named here: importing Prefect would read its settings before
    # `effilm run` has set PREFECT_API_URL
    return prefect_home() / "server.pid"


def _pid() -> int | None:
    """The pid in Prefect's pid file (None: no file, or one `prefect server start` has not written yet)."""
    try:
        pid = int(_pid_file().read_text())
    except (OSError, ValueError):
        return None
    return pid if pid > 0 else None


def _env(api_url: str | None = None, **extra: str) -> dict:
    """The environment of a ``prefect`` command: this folder's PREFECT_HOME, and the server's URL or none."""
    env = {**os.environ, "PREFECT_HOME": str(prefect_home()), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra}
    env.pop("PREFECT_API_URL", None)
    return {**env, "PREFECT_API_URL": api_url} if api_url else env


def _prefect(args: list[str], api_url: str | None = None, timeout: float = 120, **extra: str):
    """Run ``prefect ARGS``; stdout and stderr together, whitespace-normalised in ``.message`` (Prefect's console
    wraps at 80 columns)."""
    # start_new_session: the background server (a child of `prefect server start`) outlives this terminal's signals
    out = subprocess.run([*PREFECT, *args], env=_env(api_url, **extra), stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                         start_new_session=True)
    out.message = " ".join(out.stdout.split())
    return out


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:  # a zombie (exited, not yet reaped by init) has released its port: it counts as gone
        return pid_alive(pid) and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return pid_alive(pid)


def _healthy(api_url: str, timeout: float = 2.0) -> bool:
    # one HTTP request, not `prefect server status`: api_url() runs before every `effilm run` (a Prefect CLI start
    # costs seconds), and Prefect must not be imported before PREFECT_API_URL is set
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def _recorded() -> dict | None:
    """The server `effilm server start` recorded in this folder whose pid file Prefect still has:
    {"pid", "api_url", "ui_url", "log", "started"}."""
    pid = _pid()
    if pid is None or not _state_file().is_file():
        return None
    return {**json.loads(_state_file().read_text()), "pid": pid}


def running() -> dict | None:
    """The server this folder started, if it is up: {"pid", "api_url", "ui_url", "log"}."""
    info = _recorded()
    if info and _alive(info["pid"]) and _healthy(info["api_url"]):
        return info
    return None


def api_url() -> str | None:
    """PREFECT_API_URL if set, else the server started by `effilm server start` in this folder."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    info = running()
    return info["api_url"] if info else None


def temporary_server() -> str:
    """Start Prefect's temporary server for this process on a port the OS assigns, point PREFECT_API_URL at it and
    return the URL (stopped at exit, as Prefect's own is).

    Why not let Prefect start it: Prefect picks a random port in 8000-8999 and waits until ``/api/health`` answers
    there, which another process's temporary server on the same port also does. Flows started together on one machine
    could then share one server, and the second fails with "Connection refused" when the first exits and stops it."""
    import socket

    from prefect.context import refresh_global_settings_context
    from prefect.server.api.server import SubprocessASGIServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = SubprocessASGIServer(port=port)
    server.start()
    os.environ["PREFECT_API_URL"] = server.api_url
    refresh_global_settings_context()  # Prefect read its settings when imported above
    return server.api_url


def ensure_api() -> str:
    """The Prefect API this process's flows report to: PREFECT_API_URL (environment, or Prefect's settings when a
    caller such as a test harness set them), this folder's server, else a temporary server started now."""
    url = api_url()
    if url:
        return url
    if "prefect" in sys.modules:
        from prefect.settings import PREFECT_API_URL

        if PREFECT_API_URL.value():
            return PREFECT_API_URL.value()
    return temporary_server()


def status() -> dict | None:
    """``prefect server status`` for the server this folder started: its record plus ``available`` and
    ``server_version`` (or ``error``); None when this folder has no server process."""
    info = _recorded()
    if info is None or not _alive(info["pid"]):
        return None
    out = _prefect(["server", "status", "--output", "json"], api_url=info["api_url"], timeout=60)
    try:
        answer = json.loads(out.stdout[out.stdout.index("{"):])
    except ValueError:
        answer = {"error": out.message}
    return {**info, "available": out.returncode == 0, "server_version": answer.get("server_version"),
            "error": answer.get("error")}


def _log_tail(log: Path, chars: int = 2000) -> str:
    text = log.read_text(errors="replace")[-chars:] if log.is_file() else ""
    return text or "(the server logged nothing)\n"


def _logging_config(log: Path) -> Path:
    # `--background` pipes the server's output to `prefect server start`, which exits at once: nothing would be kept.
    # So the server gets Prefect's own logging.yml (via PREFECT_LOGGING_SETTINGS_PATH), its console handlers writing
    # to the log file instead.
    from prefect.logging.configuration import DEFAULT_LOGGING_SETTINGS_PATH

    cfg = yaml.safe_load(DEFAULT_LOGGING_SETTINGS_PATH.read_text())
    filename = str(log).replace("$", "$$")  # Prefect substitutes ${SETTING}s in this file
    for name in ("console", "debug"):
        formatter = cfg["handlers"][name]["formatter"]
        cfg["handlers"][name] = {"level": 0, "class": "logging.FileHandler", "filename": filename, "formatter": formatter}
    path = prefect_home() / "server-logging.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def start(host: str = "127.0.0.1", port: int = 4200, timeout: float = 180.0) -> dict:
    info = running()
    if info:
        return {**info, "already_running": True}
    if _pid_file().is_file() and not _alive(_pid()):
        _prefect(["server", "stop"], timeout=60)  # a pid file left by a server that died: Prefect cleans it up
    api = f"http://{host}:{port}/api"
    prefect_home().mkdir(parents=True, exist_ok=True)
    log = state_dir() / "prefect-server.log"
    with open(log, "a") as fh:
        fh.write(f"--- effilm server start {time.strftime('%Y-%m-%d %H:%M:%S')}: {api}\n")
    out = _prefect(["server", "start", "--background", "--host", host, "--port", str(port), "--scheduler",
                    "--analytics-off"], timeout=120, PREFECT_LOGGING_SETTINGS_PATH=str(_logging_config(log)))
    if out.returncode != 0:
        if "--port" in out.message:  # "Port N is already in use ... `--port` flag" / "... already running on port N"
            hint = (f"port {port} already serves a Prefect API not started here; use it with PREFECT_API_URL={api} or "
                    f"pick another --port") if _healthy(api) else f"prefect server start: {out.message}"
            raise ConfigError("effilm server start", "--port", hint)
        raise RuntimeError(f"prefect server start failed (exit {out.returncode}): {out.message}")
    pid = _pid()
    info = {"pid": pid, "api_url": api, "ui_url": f"http://{host}:{port}", "log": str(log),
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    _state_file().write_text(json.dumps({k: v for k, v in info.items() if k != "pid"}, indent=2))
    waiter = subprocess.Popen([*PREFECT, "server", "status", "--wait", "--timeout", str(max(1, int(timeout)))],
                              env=_env(api), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # watch the pid meanwhile: `prefect server status --wait` cannot tell a server that died from a slow one
    while waiter.poll() is None and _alive(pid):
        time.sleep(0.5)
    if waiter.poll() is None:
        waiter.kill()
        waiter.wait()
        _prefect(["server", "stop"], timeout=60)
        _state_file().unlink(missing_ok=True)
        raise RuntimeError(f"prefect server exited while starting; see {log}:\n{_log_tail(log)}")
    if waiter.returncode != 0:
        stop()
        raise RuntimeError(f"prefect server did not answer on {api} within {timeout:.0f}s; see {log}:\n{_log_tail(log)}")
    return info


def stop(grace: float = 20.0) -> dict | None:
    """``prefect server stop`` for the server this folder started; its record (None: there was none)."""
    if not _pid_file().is_file():
        _state_file().unlink(missing_ok=True)
        return None
    pid = _pid()
    info = {**(_recorded() or {}), "pid": pid, "was_running": _alive(pid)}
    _prefect(["server", "stop"], timeout=60)
    # `prefect server stop` sends SIGTERM and returns at once: wait, so that the port is free for the next start, and
    # kill a server that has not exited after `grace` seconds (it can wait on open websockets)
    deadline = time.time() + grace
    while _alive(pid) and time.time() < deadline:
        time.sleep(0.2)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _state_file().unlink(missing_ok=True)
    return info
