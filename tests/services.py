"""Real servers for integration tests, started privately on 127.0.0.1 under a test folder: PostgreSQL (Debian's
binaries) and `mlflow server`. A missing component is a skip with the reason, never a fake."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@contextlib.contextmanager
def postgres(tmp: Path) -> Iterator[str]:
    """A private PostgreSQL cluster on 127.0.0.1 with a database ``mlflow``; yields its SQLAlchemy URI."""
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (scripts/install-test-services.sh installs Debian's postgresql)")
    data, sock = tmp / "pgdata", tmp / "pgsock"
    prefix: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root: run it as the 'postgres' user the package created
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
        for d in (data, sock):
            d.mkdir(parents=True, exist_ok=True)
            os.chown(d, pw.pw_uid, pw.pw_gid)
        for parent in [tmp, *tmp.parents]:  # the postgres user must reach its folders
            if parent == Path("/"):
                break
            os.chmod(parent, os.stat(parent).st_mode | 0o011)
        prefix = ["runuser", "-u", "postgres", "--"]
    else:
        sock.mkdir(parents=True, exist_ok=True)
    run = lambda *cmd, **kw: subprocess.run([*prefix, *map(str, cmd)], check=True, capture_output=True, text=True, timeout=120, **kw)  # noqa: E731
    run(bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8")
    port = free_port()
    log = tmp / "postgres.log"
    with open(log, "w") as fh:
        os.chmod(log, 0o666)
        server = subprocess.Popen([*prefix, str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1",
                                   "-k", str(sock), "-c", "max_connections=200"], stdout=fh, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        deadline = time.time() + 60
        while subprocess.run([str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)], capture_output=True).returncode:
            assert server.poll() is None and time.time() < deadline, log.read_text()[-2000:]
            time.sleep(0.3)
        run(bindir / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "mlflow")
        yield f"postgresql://postgres@127.0.0.1:{port}/mlflow"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, 15)
        server.wait(60)


@contextlib.contextmanager
def mlflow_server(backend_uri: str, tmp: Path, workers: int = 2) -> Iterator[str]:
    """`mlflow server` with proxied artifacts under ``tmp``; yields its http URI."""
    port = free_port()
    log = tmp / "mlflow-server.log"
    with open(log, "w") as fh:
        server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                                   "--backend-store-uri", backend_uri, "--artifacts-destination", str(tmp / "server-artifacts"),
                                   "--workers", str(workers)], stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2)
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "mlflow server did not start:\n" + log.read_text()[-3000:]
                time.sleep(0.5)
        yield uri
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, 15)
        server.wait(60)
