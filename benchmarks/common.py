"""What every benchmark script shares: one stamp on every result file (git commit, machine, the exact command that
produced it), JSON + markdown result files, markdown tables, and running sub-commands.

A script parses its arguments with ``parser()`` (which adds ``--results-dir``), runs sub-commands with ``run()``
(each is recorded in the stamp), and ends with ``write_results(name, data, markdown, a.results_dir)``, which writes
``<results-dir>/<name>.json`` and ``<name>.md``, both stamped.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))

STARTED = time.time()
# Environment variables that change what a benchmark measures or reads: shown in front of the recorded command.
COMMAND_ENV = ("HF_HUB_OFFLINE", "MLFLOW_TRACKING_URI", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES",
               "PREFECT_LOCAL_STORAGE_PATH")
_RAN: list[dict] = []  # the sub-commands this script ran (command, seconds, exit code)


def parser(doc: str | None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0] if doc else None)
    ap.add_argument("--results-dir", type=Path, default=RESULTS,
                    help="where the JSON and markdown go (default benchmarks/results; another folder for a trial run)")
    return ap


def _shown(path: str) -> str:
    """A path as the person typed it: relative to the current folder when inside it."""
    try:
        return os.path.relpath(path) if Path(path).absolute().is_relative_to(Path.cwd()) else path
    except ValueError:
        return path


def command_line() -> str:
    """The command that started this script, as one shell line: environment that matters, interpreter, arguments."""
    env = [f"{k}={shlex.quote(os.environ[k])}" for k in COMMAND_ENV if k in os.environ]
    return " ".join([*env, shlex.join([_shown(sys.executable), *sys.argv])])


def machine() -> dict:
    """CPU model, cores, memory, torch/transformers/python versions, GPU."""
    from tasks.core.tracking import environment

    env = environment()
    info = {"cpu_model": env.get("cpu_model", env["processor"]), "cores": env["cpu_count"],
            "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else env["cpu_count"]}
    try:
        import psutil

        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    info["cpu_isa"] = cpu_isa()
    info.update({"torch": env["torch"], "transformers": env["transformers"], "python": env["python"],
                 "platform": env["platform"], "gpu": env["cuda"]})
    return info


# int8 kernels (fbgemm, ONNX Runtime) run several times faster with VNNI than on AVX2 alone: two hosts that both call
# themselves "AMD EPYC, 2 cores" gave ONNX Runtime int8 of the same model 8.1 ms and 30.3 ms
INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def cpu_isa() -> str:
    """torch's CPU capability and the int8-relevant instruction sets /proc/cpuinfo lists (Linux; else torch's only)."""
    import torch

    shown = [torch.backends.cpu.get_cpu_capability()]
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
        shown.append("flags: " + (" ".join(f for f in INT8_FLAGS if f in flags) or "none of " + "/".join(INT8_FLAGS)))
    except (OSError, StopIteration):
        pass
    return "; ".join(shown)


def stamp() -> dict:
    """Where a result comes from: git commit (``-dirty`` when tracked files were modified), the exact command, the
    folder it ran in, when, how long it took, what it ran, and the machine."""
    from tasks.core.tracking import git_sha

    # results make bench has just rewritten must not mark the next script's code as modified
    return {"git_commit": git_sha(ignore="benchmarks/results"), "command": command_line(), "cwd": os.getcwd(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "seconds": round(time.time() - STARTED, 1),
            "subcommands": list(_RAN), "machine": machine()}


def stamp_markdown(s: dict) -> str:
    m = s["machine"]
    lines = [(f"Produced by `{s['command']}` (in `{s['cwd']}`) at git `{s['git_commit']}`, {s['date']}, "
              f"in {s['seconds']:.0f} s."),
             f"Machine: {m['cpu_model']}, {m['cores']} cores ({m['cores_usable']} usable)"
             + (f", {m['memory_gb']} GB" if "memory_gb" in m else "")
             + (f", {m['cpu_isa']}" if m.get("cpu_isa") else "")
             + f", GPU: {m['gpu'] or 'none'}; torch {m['torch']}, transformers {m['transformers']}, "
               f"Python {m['python']}, {m['platform']}."]
    if s["subcommands"]:
        lines.append("It ran: " + "; ".join(f"`{r['command']}` ({r['seconds']:.0f} s, exit {r['exit_code']})"
                                            for r in s["subcommands"]) + ".")
    return "\n".join(lines)


def markdown_table(rows, columns: list[str] | None = None, **kwargs) -> str:
    """``rows`` (list of dicts or a DataFrame) as a markdown table via ``DataFrame.to_markdown``; values are kept as
    given (object columns: an int stays an int), a missing one shows as "–"."""
    import pandas as pd

    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows), columns=columns, dtype=object)

    def numeric(v) -> bool:
        try:
            float(str(v).replace(",", ""))
            return not isinstance(v, bool)
        except ValueError:
            return False

    align = ["right" if frame[c].dropna().map(numeric).all() and frame[c].notna().any() else "left" for c in frame.columns]
    return frame.to_markdown(index=False, **{"missingval": "–", "colalign": align, **kwargs})


def write_results(name: str, data: dict, markdown_body: str, results_dir: str | Path = RESULTS) -> tuple[Path, Path]:
    """``<results_dir>/<name>.json`` ({"benchmark", "stamp", "machine", **data}) and ``<name>.md``, both stamped."""
    out = Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    s = stamp()
    machine_info = s.pop("machine")
    js = out / f"{name}.json"
    js.write_text(json.dumps({"benchmark": name, "stamp": s, "machine": machine_info, **data}, indent=2,
                             default=str) + "\n")
    md = out / f"{name}.md"
    md.write_text(f"# {name}\n\n{stamp_markdown({**s, 'machine': machine_info})}\n\n{markdown_body.strip()}\n")
    return js, md


@dataclass
class Ran:
    command: str
    seconds: float
    exit_code: int


def run(cmd: list[str], env: dict | None = None, log: Path | None = None, ok: tuple[int, ...] = (0,)) -> Ran:
    """Run a sub-command from the project root (output to ``log``); recorded in the stamp; an exit code outside
    ``ok`` raises, naming the log."""
    shown_env = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
    command = " ".join(filter(None, [shown_env, shlex.join(cmd)]))
    t0 = time.perf_counter()
    with open(log or os.devnull, "w") as fh:
        rc = subprocess.run(cmd, check=False, env={**os.environ, **(env or {})}, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT).returncode
    ran = Ran(command, round(time.perf_counter() - t0, 1), rc)
    _RAN.append(ran.__dict__)
    if rc not in ok:
        raise subprocess.CalledProcessError(rc, command, output=f"see {log}" if log else None)
    return ran


def cold_store(ap: argparse.ArgumentParser, work: Path | None) -> tuple[Path, str, dict]:
    """A new or empty folder for a cold flow run (``work``, else a temporary one) -> (folder, MLflow URI, the
    environment that points the run's MLflow store and Prefect result storage into it). A non-empty ``work`` is a
    usage error (exit 2): the run would not be cold."""
    import tempfile

    if work and work.exists() and any(work.iterdir()):
        ap.error(f"--work {work} is not empty (the run must be cold)")
    tmp = (work or Path(tempfile.mkdtemp(prefix="effilm-bench-"))).resolve()
    tmp.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    return tmp, uri, {"MLFLOW_TRACKING_URI": uri, "PREFECT_LOCAL_STORAGE_PATH": str(tmp / "prefect"),
                      "HF_HUB_OFFLINE": "1"}
