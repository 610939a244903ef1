"""The MLflow compare view, in the terminal: one row per variant run of a flow run, the stable metric keys as columns.

    effilm compare                                   # newest mobile-bert flow run
    effilm compare --experiment effilm/long-document --metrics 'eval/*' 'bench/*4096*'
    effilm compare --run <parent-run-id> --out outputs/compare
    effilm compare --run <search-run-id> <flow-run-id>   # a search's trials beside `effilm run`'s variants

The variant runs are read with ``mlflow.search_runs`` (a DataFrame with ``metrics.*``/``tags.*`` columns, through
``tasks.core.tracking``); the table is that frame's chosen columns, printed and written as markdown
(``DataFrame.to_markdown``) and CSV; the MLflow UI's compare-runs link for the same runs is printed beside it.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pandas as pd

from tasks.core import tracking

DEFAULT_METRICS = ("eval/accuracy", "eval/macro_f1", "eval/rouge*", "bench/latency_ms_L*", "bench/latency_ms_p50_b1_t1",
                   "bench/latency_ms_p50_b1_tall",
                   "bench/latency_ms_p50_*", "bench/peak_rss_mb", "size/disk_mb", "size/params")
MAX_DEFAULT_COLUMNS = 10
ID_COLUMNS = ["variant", "technique", "status", "run_id"]


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


def _parent(experiment: str | None, run_id: str | None):
    if run_id:
        try:
            parent = tracking.get_run(run_id)
        except Exception as exc:
            raise CompareError(f"--run: no MLflow run {run_id} in {tracking.tracking_uri()} ({str(exc).splitlines()[0]})") from None
        if "mlflow.parentRunId" in parent.data.tags:  # a variant run: compare its siblings
            parent = tracking.get_run(parent.data.tags["mlflow.parentRunId"])
        return parent
    experiment = experiment or "effilm/mobile-bert"
    parent = tracking.latest_parent_run(experiment) or tracking.latest_parent_run(experiment, status=None)
    if parent is None:
        known = ", ".join(tracking.experiment_names()) or "none"
        raise CompareError(f"--experiment: no flow run in experiment '{experiment}' at {tracking.tracking_uri()} "
                           f"(experiments there: {known}); run `effilm run ...` first or set MLFLOW_TRACKING_URI")
    return parent


def _column(runs: pd.DataFrame, name: str, default=None) -> pd.Series:
    return runs[name] if name in runs.columns else pd.Series(default, index=runs.index, dtype=object)


def collect(experiment: str | None = None, run_id: str | list[str] | None = None,
            metrics: list[str] | None = None) -> dict:
    """-> {"parent": the first flow run, "parents": every flow run, "columns": [metric keys], "frame": DataFrame
    (variant, technique, status, run_id, [flow: when several flow runs], metrics...), "rows": the frame's records
    (missing metrics as None)}. Several run ids: their variant runs in one table (e.g. a search's trials beside the
    hand-written variants of `effilm run`), each row naming its flow run."""
    ids = [run_id] if isinstance(run_id, str) else list(dict.fromkeys(run_id or []))
    parents = list({p.info.run_id: p for p in (_parent(experiment, r) for r in ids or [None])}.values())
    frames = []
    for parent in parents:
        runs = tracking.search_runs_frame(parent.info.experiment_id,
                                          f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                          order_by=["attributes.start_time ASC"])
        if runs.empty:
            raise CompareError(f"run {parent.info.run_id} has no variant runs to compare")
        frames.append(runs.assign(flow=f"{parent.info.run_name} ({parent.info.run_id[:8]})"))
    runs = pd.concat(frames, ignore_index=True)
    keys = {c.removeprefix("metrics.") for c in runs.columns if c.startswith("metrics.") and runs[c].notna().any()}
    columns = _pick_columns(keys, metrics)
    flow = {"flow": runs["flow"]} if len(parents) > 1 else {}
    frame = pd.DataFrame({"variant": _column(runs, "tags.variant").fillna(_column(runs, "tags.mlflow.runName")),
                          "technique": _column(runs, "tags.technique").fillna(""),
                          "status": runs["status"], "run_id": runs["run_id"], **flow,
                          **{k: runs[f"metrics.{k}"] for k in columns}}).reset_index(drop=True)
    rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
    return {"parent": parents[0], "parents": parents, "columns": columns, "frame": frame, "rows": rows}


def _ids(table: dict) -> list[str]:
    """variant and technique, then the flow run where the table holds several."""
    return ["variant", "technique", *(["flow"] if "flow" in table["frame"] else [])]


def _fmt(v) -> str:
    if v is None or pd.isna(v):
        return "–"
    if isinstance(v, float):
        if v.is_integer() and abs(v) >= 1000:
            return f"{int(v):,}"
        return f"{v:.4f}" if abs(v) < 10 else f"{v:,.1f}"
    return str(v)


def render_markdown(table: dict) -> str:
    """variant, technique and the chosen metrics as a markdown table (numbers right-aligned)."""
    ids = _ids(table)
    cells = table["frame"][[*ids, *table["columns"]]].astype(object).map(_fmt)
    return cells.to_markdown(index=False, disable_numparse=True,
                             colalign=["left"] * len(ids) + ["right"] * len(table["columns"]))


render_text = render_markdown  # the terminal shows the same table (a pipe table reads as plain text, pastes as markdown)


def write(table: dict, out_dir: str | Path) -> dict[str, str]:
    parents = table["parents"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", parents[0].data.tags.get("case_study", "runs")) + \
        "".join(f"-{p.info.run_id[:8]}" for p in parents)
    csv_path, md_path = out / f"{stem}.csv", out / f"{stem}.md"
    table["frame"][[*ID_COLUMNS, *_ids(table)[2:], *table["columns"]]].to_csv(csv_path, index=False)
    title = ", ".join(f"{p.info.run_name} ({p.info.run_id})" for p in parents)
    md_path.write_text(f"# {title}\n\n{render_markdown(table)}\n")
    return {"csv": str(csv_path), "markdown": str(md_path)}
