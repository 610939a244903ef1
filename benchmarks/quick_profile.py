"""Wall time of the quick-profile *spine* (teacher only: `--set variants=[]`; cold, then an unchanged re-run) and the
baseline teacher's figures. The whole case study with its variants is timed by benchmarks/mobile_targets.py --run.

    python benchmarks/quick_profile.py [--work DIR] [--set KEY=VALUE ...]   # about 3-4 minutes on 2 cores

Runs `effilm run mobile-bert --profile quick --set variants=[]` twice against a fresh MLflow store, output folder and
Prefect result storage (in --work, a new empty folder; default a temporary one), so the first run is cold and the
second shows what caching saves. The store stays in --work: benchmarks/reproduce_teacher.py reproduces its teacher
run (`make bench` chains the two). --set is passed on to `effilm run` (e.g. a smaller model for a trial run).
Writes <results-dir>/quick_profile.{json,md}.
"""

from __future__ import annotations

import sys
from pathlib import Path

from common import cold_store, markdown_table, parser, run, write_results

KEYS = ["eval/accuracy", "eval/macro_f1", "bench/latency_ms_p50_b1_t1", "bench/latency_ms_p95_b1_t1",
        "bench/latency_ms_p50_b1_tall", "bench/latency_ms_p50_b32_tall", "bench/throughput_b32",
        "bench/peak_rss_mb", "size/disk_mb", "size/params", "train/seconds", "train/samples_per_second"]


def main() -> int:
    ap = parser(__doc__)
    ap.add_argument("--work", type=Path, help="a new or empty folder for the MLflow store, outputs and logs")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed on to `effilm run`")
    a = ap.parse_args()
    tmp, uri, env = cold_store(ap, a.work)
    effilm = str(Path(sys.executable).parent / "effilm")
    cmd = [effilm, "run", "mobile-bert", "--profile", "quick", "--set", f"output_dir={tmp / 'out'}", "--set", "variants=[]"]
    for s in a.set:
        cmd += ["--set", s]
    first = run(cmd, env, tmp / "first.log").seconds
    second = run(cmd, env, tmp / "second.log").seconds
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("effilm/mobile-bert")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.variant = 'teacher-fp32'",
                              order_by=["attributes.start_time ASC"])
    teacher = {k: runs[0].data.metrics.get(k) for k in KEYS}
    data = {"mlflow_store": uri, "teacher_run_id": runs[0].info.run_id,
            "first_run_seconds": round(first, 1), "second_run_seconds": round(second, 1),
            "second_over_first": round(second / first, 3), "teacher_fp32": teacher,
            "targets": {"teacher_accuracy_ge_0.95": (teacher["eval/accuracy"] or 0) >= 0.95,
                        "rerun_under_25pct": second / first < 0.25}}
    table = markdown_table([{"metric": f"`{k}`", "value": v} for k, v in teacher.items()], disable_numparse=True)
    md = (f"`effilm run mobile-bert --profile quick --set variants=[]` (cold): **{first:.1f} s**; unchanged re-run: "
          f"**{second:.1f} s** ({100 * second / first:.1f}% of the first; target < 25%).\n\n"
          f"## teacher-fp32 (MiniLM-L6 fine-tuned on BBC News, test split)\n\nRun `{runs[0].info.run_id}`.\n\n{table}\n\n"
          f"Targets: accuracy ≥ 0.95 → {data['targets']['teacher_accuracy_ge_0.95']}; "
          f"re-run < 25% → {data['targets']['rerun_under_25pct']}.")
    _, mdp = write_results("quick_profile", data, md, a.results_dir)
    print(mdp.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
