"""The MLflow compare view, in the terminal: one row per variant run of a flow run, the stable metric keys as columns.

    effilm compare                                   # newest mobile-bert flow run
    effilm compare --experiment effilm/long-document --metrics 'eval/*' 'bench/*4096*'
    effilm compare --run <parent-run-id> --out outputs/compare

Writes the same table as CSV and markdown; prints the MLflow UI's compare-runs link for the same runs.
"""

from __future__ import annotations

import csv
import fnmatch
import re
from pathlib import Path

from tasks.core import tracking

DEFAULT_METRICS = ("eval/accuracy", "eval/macro_f1", "eval/rouge*", "bench/latency_ms_L*", "bench/latency_ms_p50_b1_t1",
                   "bench/latency_ms_p50_b1_tall",
                   "bench/latency_ms_p50_*", "bench/peak_rss_mb", "size/disk_mb", "size/params")
MAX_DEFAULT_COLUMNS = 10


class CompareError(ValueError):
    """Nothing to compare (unknown experiment or run); the CLI exits 2."""


def _natural(key: str) -> list:
    """``bench/latency_ms_L512`` before ``..._L1024``: numbers inside keys sort by value."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def _pick_columns(keys: set[str], patterns: list[str] | None) -> list[str]:
    chosen: list[str] = []
    for pat in patterns or DEFAULT_METRICS:
        for k in sorted(keys, key=_natural):
            if fnmatch.fnmatchcase(k, pat) and k not in chosen:
                chosen.append(k)
    if patterns:
        if not chosen:
            raise CompareError(f"--metrics: no metric matches {patterns}; these runs have: {', '.join(sorted(keys)[:40])}")
        return chosen
    return chosen[:MAX_DEFAULT_COLUMNS] if chosen else sorted(keys)[:MAX_DEFAULT_COLUMNS]


def collect(experiment: str | None = None, run_id: str | None = None, metrics: list[str] | None = None) -> dict:
    """-> {"parent": run, "columns": [...], "rows": [{"variant", "technique", "status", "run_id", metric...}]}"""
    if run_id:
        try:
            parent = tracking.get_run(run_id)
        except Exception as exc:
            raise CompareError(f"--run: no MLflow run {run_id} in {tracking.tracking_uri()} ({str(exc).splitlines()[0]})") from None
        if "mlflow.parentRunId" in parent.data.tags:  # a variant run: compare its siblings
            parent = tracking.get_run(parent.data.tags["mlflow.parentRunId"])
    else:
        experiment = experiment or "effilm/mobile-bert"
        parent = tracking.latest_parent_run(experiment) or tracking.latest_parent_run(experiment, status=None)
        if parent is None:
            known = ", ".join(tracking.experiment_names()) or "none"
            raise CompareError(f"--experiment: no flow run in experiment '{experiment}' at {tracking.tracking_uri()} "
                               f"(experiments there: {known}); run `effilm run ...` first or set MLFLOW_TRACKING_URI")
    children = sorted(tracking.child_runs(parent.info.run_id), key=lambda r: r.info.start_time)
    if not children:
        raise CompareError(f"run {parent.info.run_id} has no variant runs to compare")
    keys = {k for r in children for k in r.data.metrics}
    columns = _pick_columns(keys, metrics)
    rows = []
    for r in children:
        row = {"variant": r.data.tags.get("variant", r.info.run_name), "technique": r.data.tags.get("technique", ""),
               "status": r.info.status, "run_id": r.info.run_id}
        row.update({k: r.data.metrics.get(k) for k in columns})
        rows.append(row)
    return {"parent": parent, "columns": columns, "rows": rows}


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if v.is_integer() and abs(v) >= 1000:
            return f"{int(v):,}"
        return f"{v:.4f}" if abs(v) < 10 else f"{v:,.1f}"
    return str(v)


def render_text(table: dict) -> str:
    head = ["variant", "technique", *table["columns"]]
    cells = [[_fmt(r[h]) for h in head] for r in table["rows"]]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
    line = lambda vals: "  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(vals, widths)))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(c) for c in cells)])


def render_markdown(table: dict) -> str:
    head = ["variant", "technique", *table["columns"]]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(_fmt(r[h]) for h in head) + " |" for r in table["rows"]]
    return "\n".join(out)


def write(table: dict, out_dir: str | Path) -> dict[str, str]:
    parent = table["parent"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", parent.data.tags.get("case_study", "runs")) + f"-{parent.info.run_id[:8]}"
    csv_path, md_path = out / f"{stem}.csv", out / f"{stem}.md"
    fields = ["variant", "technique", "status", "run_id", *table["columns"]]
    with csv_path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(table["rows"])
    md_path.write_text(f"# {parent.info.run_name} ({parent.info.run_id})\n\n{render_markdown(table)}\n")
    return {"csv": str(csv_path), "markdown": str(md_path)}
