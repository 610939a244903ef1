"""`effilm reproduce` on the newest quick-profile teacher run: every metric of the re-run against the original, with
the tolerances of flows/reproduce.py (quality exactly, sizes 1 %, median latency at one thread within
--latency-tolerance; tail and all-thread timings reported, not judged).

    MLFLOW_TRACKING_URI=sqlite:///$PWD/outputs/bench/quick_profile/mlflow.db python benchmarks/reproduce_teacher.py
    python benchmarks/reproduce_teacher.py --run-id <teacher run id>        # a given run in MLFLOW_TRACKING_URI

The teacher run is read from MLFLOW_TRACKING_URI (default ./mlflow.db); `make bench` points it at the store that
benchmarks/quick_profile.py filled (`effilm run mobile-bert --profile quick --set variants=[]`), so the run
was made with the code being benchmarked (reproduce refuses otherwise: exit 2). The re-run trains from scratch into a
fresh output folder and Prefect result storage in --work: about 3 minutes on 2 cores. A reproduction outside
tolerance (exit 1) is still written, and makes this script exit 1.
Writes <results-dir>/reproduce_teacher_<profile>.{json,md} (reproduce_teacher_quick.* by default).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from common import parser, run, write_results


def latest_teacher(profile: str) -> str:
    from tasks.core import tracking

    exp = tracking.client().get_experiment_by_name("effilm/mobile-bert")
    if exp is None:
        raise SystemExit(f"no effilm/mobile-bert experiment in {tracking.tracking_uri()}: run benchmarks/quick_profile.py "
                         "(or `effilm run mobile-bert --profile quick`) first, or set MLFLOW_TRACKING_URI")
    runs = tracking.search_runs_frame(exp.experiment_id, f"tags.variant = 'teacher-fp32' and tags.profile = '{profile}' "
                                      "and attributes.status = 'FINISHED'",
                                      order_by=["attributes.start_time DESC"], max_results=1)
    if runs.empty:
        raise SystemExit(f"no finished {profile}-profile teacher-fp32 run in {tracking.tracking_uri()}")
    return str(runs["run_id"].iloc[0])


def main() -> int:
    ap = parser(__doc__)
    ap.add_argument("--run-id", help="the teacher (variant) run to reproduce; default the newest finished one")
    ap.add_argument("--profile", default="quick", help="profile of the newest teacher run to pick (default quick)")
    ap.add_argument("--latency-tolerance", type=float, help="passed to `effilm reproduce` (default: its own)")
    ap.add_argument("--work", type=Path, help="folder for the re-run's outputs and log (default a temporary one)")
    a = ap.parse_args()
    from flows import reproduce
    from tasks.core import tracking

    run_id = a.run_id or latest_teacher(a.profile)
    original = tracking.get_run(run_id)
    parent = tracking.get_run(original.data.tags.get("mlflow.parentRunId", run_id))
    work = (a.work or Path(tempfile.mkdtemp(prefix="effilm-reproduce-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    cmd = [str(Path(sys.executable).parent / "effilm"), "reproduce", run_id, "--output-dir", str(work / "re")]
    if a.latency_tolerance is not None:
        cmd += ["--latency-tolerance", str(a.latency_tolerance)]
    env = {"HF_HUB_OFFLINE": "1", "PREFECT_LOCAL_STORAGE_PATH": str(work / "prefect"),
           "MLFLOW_TRACKING_URI": tracking.tracking_uri()}
    ran = run(cmd, env, work / "reproduce.log", ok=(0, 1))  # 2: refused (code or data changed) -> raises
    report_md = (work / "re" / "reproduce.md").read_text()
    c = tracking.client()
    fresh = c.search_runs([parent.info.experiment_id], filter_string=f"tags.reproduced_from = '{run_id}'",
                          order_by=["attributes.start_time DESC"], max_results=1)[0]
    checks = json.loads(tracking.download_text(fresh.info.run_id, "reproduce/checks.json"))
    outside = [ch["key"] for ch in checks if not ch["ok"]]
    data = {"original_run_id": run_id, "original_parent_run_id": parent.info.run_id,
            "original_git_sha": parent.data.tags.get("git_sha"), "original_flow_seconds": parent.data.metrics.get("flow/seconds"),
            "reproduced_parent_run_id": fresh.info.run_id, "reproduce_seconds": ran.seconds, "exit_code": ran.exit_code,
            "latency_tolerance": a.latency_tolerance if a.latency_tolerance is not None else reproduce.LATENCY_TOLERANCE,
            "metrics_judged": sum(ch["kind"] != "info" for ch in checks), "outside_tolerance": outside, "checks": checks}
    flow_s = data["original_flow_seconds"]
    md = (f"Original: teacher-fp32 run `{run_id}` of flow run `{parent.info.run_id}` "
          f"({parent.info.run_name}, git `{data['original_git_sha']}`"
          + (f", flow {flow_s:.0f} s" if flow_s else "") + f"; store {tracking.tracking_uri()}).\n"
          f"`effilm reproduce {run_id}` took {ran.seconds:.0f} s (it retrains from scratch into a fresh folder), "
          f"exit {ran.exit_code}: {data['metrics_judged']} metrics judged, "
          + (f"outside tolerance: {', '.join(outside)}." if outside else "all within tolerance.")
          + "\n\n" + report_md.replace("# reproduce ", "## reproduce ", 1))
    _, mdp = write_results(f"reproduce_teacher_{a.profile}", data, md, a.results_dir)
    print(mdp.read_text())
    return ran.exit_code


if __name__ == "__main__":
    sys.exit(main())
