"""Case study 2's quick profile as a user runs it: `effilm run long-document --profile quick` cold, against a fresh
MLflow store, output folder and Prefect result storage, on the packaged KEPs (offline, no ../shared).

    python benchmarks/long_quick.py [--work DIR] [--set KEY=VALUE ...]   # about 20-25 minutes on 2 cores

Reads back what the flow logged (the parent run and one nested run per mechanism, classic peer and summarizer) and
writes <results-dir>/long_quick.{json,md}: the cold wall time (target: 25 minutes), each mechanism's and peer's test
accuracy / macro-F1 (overall and by length), the flow's scaling rows (ms and peak RSS per length; one timed forward
each, so noisier than benchmarks/long_attention.py) and the summarizers' ROUGE at their shared word budget. The quick
profile trains for a few dozen steps: a smoke test of the whole study, not a measure of what the mechanisms can
learn (that is benchmarks/long_keps.py). --set is passed on to `effilm run`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from common import cold_store, markdown_table, parser, run, write_results

TARGET_SECONDS = 25 * 60
CLASSIFY = ["eval/accuracy", "eval/macro_f1", "eval/macro_f1_len_0_512", "eval/macro_f1_len_512_1024",
            "eval/macro_f1_len_1024_2048", "eval/macro_f1_len_2048_4096", "eval/macro_f1_len_4096_plus",
            "eval/macro_f1_len_gt_2048", "eval/degenerate", "train/steps", "train/seconds"]
SUMMARIZE = ["eval/rouge1", "eval/rouge2", "eval/rougeL", "eval/summary_words", "eval/seconds_per_doc"]


def _fmt(v) -> str:
    if v is None or v != v:
        return ""
    return f"{v:g}" if float(v).is_integer() or abs(v) >= 10 else f"{v:.4f}"


def read_back(uri: str) -> tuple[dict, dict, dict, object]:
    """(classification, summarization, scaling rows, parent run) of the last long-document flow run in ``uri``."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["effilm/long-document"], order_by=["attributes.start_time ASC"])
    parent_col = "tags.mlflow.parentRunId"
    if parent_col not in runs:
        raise SystemExit(f"{uri}: no nested runs in effilm/long-document (did the flow finish?)")
    parent = runs[runs[parent_col].isna()].iloc[-1]
    children = runs[runs[parent_col] == parent["run_id"]]

    def metrics(row, keys) -> dict:
        return {k: (None if f"metrics.{k}" not in row or row[f"metrics.{k}"] != row[f"metrics.{k}"]
                    else float(row[f"metrics.{k}"])) for k in keys}

    classify, summarize, scaling = {}, {}, {}
    for _, row in children.iterrows():
        name = row["tags.variant"]
        if f"metrics.eval/rouge2" in row and row["metrics.eval/rouge2"] == row["metrics.eval/rouge2"]:
            summarize[name] = metrics(row, SUMMARIZE)
            continue
        if "metrics.eval/macro_f1" in row and row["metrics.eval/macro_f1"] == row["metrics.eval/macro_f1"]:
            classify[name] = metrics(row, CLASSIFY)
        bench = {k[len("metrics.bench/"):]: float(v) for k, v in row.items()
                 if k.startswith("metrics.bench/") and ("_L" in k) and v == v}
        if bench:
            scaling[name] = bench
    return classify, summarize, scaling, parent


def main() -> int:
    ap = parser(__doc__)
    ap.add_argument("--work", type=Path, help="a new or empty folder for the MLflow store, outputs and logs")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed on to `effilm run`")
    ap.add_argument("--read-store", metavar="URI", help="run nothing: report the last flow run in this MLflow store "
                    "(its flow/seconds stands for the wall time)")
    a = ap.parse_args()
    if a.read_store:
        return report(a.read_store, None, a.results_dir)
    tmp, uri, env = cold_store(ap, a.work)
    cmd = [str(Path(sys.executable).parent / "effilm"), "run", "long-document", "--profile", "quick",
           "--set", f"output_dir={tmp / 'out'}"]
    for s in a.set:
        cmd += ["--set", s]
    return report(uri, run(cmd, env, tmp / "run.log").seconds, a.results_dir)


def report(uri: str, seconds: float | None, results_dir: Path) -> int:
    classify, summarize, scaling, parent = read_back(uri)
    flow_seconds = float(parent.get("metrics.flow/seconds", float("nan")))
    seconds = flow_seconds if seconds is None else seconds
    data = {"mlflow_store": uri, "parent_run_id": parent["run_id"], "seconds": round(seconds, 1),
            "flow_seconds": flow_seconds, "classification": classify, "scaling": scaling,
            "summarization": summarize,
            "targets": {"cold_under_25_min": seconds <= TARGET_SECONDS}}
    lengths = sorted({int(k.split("_L")[1]) for rows in scaling.values() for k in rows})
    scale_rows = [{"mechanism": m, **{f"{n} ms / MB": f"{r.get(f'latency_ms_L{n}', float('nan')):.0f} / "
                                                      f"{r.get(f'peak_rss_mb_L{n}', float('nan')):.0f}" for n in lengths}}
                  for m, r in scaling.items()]
    md = "\n\n".join([
        f"`effilm run long-document --profile quick` (cold, packaged KEPs): **{seconds:.0f} s** "
        f"({seconds / 60:.1f} min; flow/seconds {flow_seconds:.0f}); target ≤ 25 min → "
        f"{'met' if data['targets']['cold_under_25_min'] else 'MISSED'}.",
        "## Classification (test split; the quick profile's few training steps: a smoke test, not a measure)",
        markdown_table([{"mechanism / peer": m, **{k.removeprefix("eval/"): _fmt(v) for k, v in r.items()}}
                        for m, r in classify.items()], disable_numparse=True),
        "## Scaling (one timed forward per cell, batch 1, the flow's own scaling task)",
        markdown_table(scale_rows, disable_numparse=True) if scale_rows else "(no scaling rows logged)",
        "## Summarization (same word budget for every method)",
        markdown_table([{"method": m, **{k.removeprefix("eval/"): _fmt(v) for k, v in r.items()}}
                        for m, r in summarize.items()], disable_numparse=True) if summarize else "(disabled)",
    ])
    _, mdp = write_results("long_quick", data, md, results_dir)
    print(mdp.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
