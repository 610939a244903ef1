"""Case study 1 targets, measured on the quick profile (MiniLM teacher, BBC test split, this machine).

    python benchmarks/mobile_targets.py            # reads the latest mobile-bert flow run from the MLflow store
    python benchmarks/mobile_targets.py --run      # runs `effilm run mobile-bert --profile quick` first (~20 min)
    python benchmarks/mobile_targets.py --int8-paths   # also times torchao+torch.compile beside the other int8 paths

--run runs the case study cold (a fresh MLflow store, output folder and Prefect result storage in --work), then
unchanged once more, and reports on that run; without it the newest finished flow run in MLFLOW_TRACKING_URI (default
./mlflow.db) is read. `make bench` uses --run --int8-paths (about 20-25 minutes on 2 cores).
Writes <results-dir>/mobile_targets.{json,md}. Targets (from the issue), all at batch 1, 1 thread, 128 tokens:
best mobile candidate >= 4x faster and >= 4x smaller than the fp32 teacher with <= 1 point accuracy drop; our int8
path no slower than ONNX Runtime int8 of the same model; 50% FFN structured pruning >= 1.4x faster with <= 1 point
drop; 3-layer distilled student >= 1.8x faster with >= 98% of the teacher's accuracy.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from common import ROOT, markdown_table, parser, run, write_results

LAT, SIZE, ACC = "bench/latency_ms_p50_b1_t1", "size/disk_mb", "eval/accuracy"


def latest_variants(uri: str) -> tuple[str, dict[str, dict]]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("effilm/mobile-bert")
    parents = client.search_runs([exp.experiment_id], filter_string="tags.variant = 'parent' and attributes.status = 'FINISHED'",
                                 order_by=["attributes.start_time DESC"], max_results=1)
    parent = parents[0]
    rows_meta = {"flow_seconds": parent.data.metrics.get("flow/seconds")}
    children = client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                  max_results=500)
    rows = {}
    for c in children:
        rows[c.data.tags["variant"]] = {**c.data.metrics, "technique": c.data.tags.get("technique"),
                                        "selected": c.data.tags.get("selected") == "true", "run_id": c.info.run_id}
    return parent.info.run_id, rows | {"_selection": {"message": parent.data.tags.get("selection", ""), **rows_meta}}


def int8_paths(model_dir: str, seq_len: int = 128, iters: int = 30) -> dict:
    """torch fp32, torch dynamic int8 (ours, from our int8 folder), torchao int8 + torch.compile, ORT int8."""
    import copy
    import statistics
    import tempfile

    import torch

    from tasks.compress import export, quantize
    from tasks.core import models
    from tasks.core.config import ExportStep, QuantizeStep, StepContext, TrainConfig
    from tasks.measure import runtimes

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="int8paths-"))

    def ctx(out: str) -> StepContext:  # quantize and export read only out_dir from the flow's context
        return StepContext(data={}, train=TrainConfig(), seed=0, out_dir=str(tmp / out))

    runners = {
        "torch fp32 (eager)": runtimes.load_for_inference(model_dir)[0],
        "ours: int8 safetensors -> fbgemm dynamic int8": runtimes.load_for_inference(
            quantize.compress(model_dir, QuantizeStep(technique="quantize"), ctx("q")))[0],
        "ONNX Runtime int8 (dynamic, per-channel)": runtimes.load_for_inference(
            export.compress(model_dir, ExportStep(technique="export", format="onnx", quantize="int8"), ctx("o")))[0],
    }
    tok = runtimes.load_for_inference(model_dir)[1]
    enc = tok(["The company said profits rose sharply in the third quarter. " * 20], truncation=True,
              max_length=seq_len, padding="max_length", return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    out = {}
    try:
        from torchao.quantization import (
            Int8DynamicActivationInt8WeightConfig,
            quantize_,
        )

        m = copy.deepcopy(models.load_hf_model(model_dir))
        quantize_(m, Int8DynamicActivationInt8WeightConfig())
        compiled = torch.compile(m)
        t0 = time.perf_counter()
        with torch.inference_mode():
            compiled(input_ids=ids, attention_mask=mask)
        out["torchao int8 + torch.compile: compile seconds"] = round(time.perf_counter() - t0, 1)
        runners["torchao int8 + torch.compile"] = lambda a, b: compiled(input_ids=a, attention_mask=b).logits
    except Exception as exc:  # report, don't hide
        out["torchao int8 + torch.compile: error"] = f"{type(exc).__name__}: {exc}"[:300]
    with torch.inference_mode():
        for name, fn in runners.items():
            for _ in range(3):
                fn(ids, mask)
            times = []
            for _ in range(iters):
                t = time.perf_counter()
                fn(ids, mask)
                times.append((time.perf_counter() - t) * 1000)
            out[name] = round(statistics.median(times), 2)
    return out


def main() -> int:
    ap = parser(__doc__)
    ap.add_argument("--run", action="store_true", help="run the quick profile first (about 20 minutes here)")
    ap.add_argument("--work", type=Path, help="with --run: a new or empty folder for the store, outputs and logs")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="with --run: passed to `effilm run`")
    ap.add_argument("--int8-paths", action="store_true")
    a = ap.parse_args()
    a.results_dir, a.work = a.results_dir.resolve(), a.work and a.work.resolve()
    os.chdir(ROOT)
    wall = rerun = None
    if a.run:  # cold: fresh store, output folder and Prefect result storage; then an unchanged re-run
        import tempfile

        if a.work and a.work.exists() and any(a.work.iterdir()):
            ap.error(f"--work {a.work} is not empty (the first run must be cold)")
        tmp = (a.work or Path(tempfile.mkdtemp(prefix="effilm-mobile-"))).resolve()
        tmp.mkdir(parents=True, exist_ok=True)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"  # read back below from the same store
        cmd = [str(Path(sys.executable).parent / "effilm"), "run", "mobile-bert", "--profile", "quick",
               "--set", f"output_dir={tmp / 'out'}"]
        for s in a.set:
            cmd += ["--set", s]
        env = {"HF_HUB_OFFLINE": "1", "PREFECT_LOCAL_STORAGE_PATH": str(tmp / "prefect"),
               "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"]}
        wall = run(cmd, env, tmp / "cold.log").seconds
        rerun = run(cmd, env, tmp / "rerun.log").seconds
    from tasks.core import tracking

    uri = tracking.tracking_uri()
    parent, rows = latest_variants(uri)
    meta = rows.pop("_selection")
    selection, flow_seconds = meta["message"], meta.get("flow_seconds")
    t = rows["teacher-fp32"]

    def ratio(v, key):
        return round(t[key] / rows[v][key], 2) if v in rows and rows[v].get(key) else None

    chosen = next((v for v, r in rows.items() if r.get("selected")), None)
    mobile = [v for v in rows if v.startswith("mobile-") and rows[v].get(LAT)]
    best = chosen or (min(mobile, key=lambda v: rows[v][LAT]) if mobile else None)
    checks = {}
    if best:
        drop = 100 * (t[ACC] - rows[best][ACC])
        checks["mobile candidate"] = {"variant": best, "speedup": ratio(best, LAT), "smaller": ratio(best, SIZE),
                                      "accuracy_drop_points": round(drop, 2),
                                      "met": bool(ratio(best, LAT) >= 4 and ratio(best, SIZE) >= 4 and drop <= 1.0)}
    for ours, peer in (("int8-dynamic", "onnx-int8"), ("mobile-candidate", "mobile-onnx-int8")):
        if ours in rows and peer in rows:
            checks[f"{ours} vs {peer}"] = {"ours_ms": rows[ours][LAT], "ort_ms": rows[peer][LAT],
                                          "met": bool(rows[ours][LAT] <= rows[peer][LAT])}
    if "prune-struct-ffn50" in rows:
        drop = 100 * (t[ACC] - rows["prune-struct-ffn50"][ACC])
        checks["structured FFN 50%"] = {"speedup": ratio("prune-struct-ffn50", LAT), "accuracy_drop_points": round(drop, 2),
                                        "met": bool(ratio("prune-struct-ffn50", LAT) >= 1.4 and drop <= 1.0)}
    if "distill-3l" in rows:
        rel = rows["distill-3l"][ACC] / t[ACC]
        checks["distilled 3 layers"] = {"speedup": ratio("distill-3l", LAT), "relative_accuracy": round(rel, 4),
                                        "met": bool(ratio("distill-3l", LAT) >= 1.8 and rel >= 0.98)}
    paths = int8_paths(tracking.download_model(rows["teacher-fp32"]["run_id"])) if a.int8_paths else None
    cols = ["technique", ACC, LAT, "bench/latency_ms_p95_b1_t1", "bench/latency_ms_p50_b1_tall", "bench/throughput_b32",
            "bench/peak_rss_mb", SIZE, "size/params", "eval/agreement_with_source"]
    table = markdown_table([{"variant": v, **{c.split("/")[-1]: (f"{r[c]:.4g}" if isinstance(r.get(c), float) else r.get(c))
                                              for c in cols}} for v, r in rows.items()], disable_numparse=True)
    md = [f"Parent run `{parent}` ({uri}). " + (f"Cold `effilm run mobile-bert --profile quick`: {wall:.0f} s "
                                                f"(target <= 1200 s); unchanged re-run: {rerun:.0f} s." if wall else ""),
          f"The flow itself took {flow_seconds:.0f} s (parent run metric flow/seconds; target for the whole "
          f"quick profile: <= 1200 s)." if flow_seconds else "", "", "## Targets", ""]
    for name, c in checks.items():
        md.append(f"- **{name}**: " + ", ".join(f"{k}={v}" for k, v in c.items()))
    md += ["", f"Selection: {selection}", "", "## All variants (batch 1, 1 thread, 128 tokens unless noted)", "", table, ""]
    if paths:
        md += ["## int8 paths on the teacher (p50 ms, batch 1, 1 thread, 128 tokens)", ""] + [f"- {k}: {v}" for k, v in paths.items()]
    data = {"parent_run_id": parent, "flow_wall_seconds": wall, "rerun_wall_seconds": rerun, "flow_seconds_metric": flow_seconds, "checks": checks, "selection": selection,
            "variants": rows, "int8_paths": paths}
    _, mdp = write_results("mobile_targets", data, "\n".join(md), a.results_dir)
    print(mdp.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
