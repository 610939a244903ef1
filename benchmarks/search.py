"""The recipe search against random search with the same budget, on the quick profile (MiniLM-L6, BBC News).

    python benchmarks/search.py [--work DIR] [--trials 24] [--samplers tpe random] [--set KEY=VALUE ...]

Runs `effilm search mobile-bert --trials N --sampler S` once per sampler (the first with the profile's follow-ups,
the baselines with `search.follow_ups=0`: random search is the sampler alone) against one MLflow store and one output
folder in --work (default a temporary folder): the teacher and any recipe prefix two trials share are built once
(a later study reuses an earlier study's folders and benchmarks: its wall time is not a cold figure). Every figure
comes from the studies' own reports (summary.json): hypervolume (objectives relative to the teacher), the best recipe
under the constraints (chosen on validation, then test-evaluated once; when none meets them, the nearest miss) and
the hand-written recipe (the seed trial),
each as speedup / size ratio / accuracy drop against the fp32 teacher (p50 latency at batch 1, 1 thread, 128 tokens).
A killed run resumes where it stopped: run it again with the same --work.
Writes <results-dir>/<name>.{json,md} and <name>_front_<sampler>.png (--name, default search).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from common import markdown_table, parser, run, write_results


def main() -> int:
    ap = parser(__doc__)
    ap.add_argument("--work", type=Path, help="folder for the MLflow store, outputs and logs (reused: resumes)")
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--samplers", nargs="+", default=["tpe", "random"], choices=["tpe", "nsga2", "random"],
                    help="the first is the search under test (with the profile's follow-ups); the others are "
                    "baselines compared with it (their sampler alone: search.follow_ups=0)")
    ap.add_argument("--name", default="search", help="results file name (e.g. a follow-up with seed recipes)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed on to `effilm search`")
    a = ap.parse_args()
    work = (a.work or Path(tempfile.mkdtemp(prefix="effilm-search-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    a.results_dir.mkdir(parents=True, exist_ok=True)  # the fronts are copied there before the results are written
    uri = f"sqlite:///{work / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": uri, "PREFECT_LOCAL_STORAGE_PATH": str(work / "prefect"), "HF_HUB_OFFLINE": "1"}
    effilm = str(Path(sys.executable).parent / "effilm")
    studies, seconds = {}, {}
    for sampler in a.samplers:
        cmd = [effilm, "search", "mobile-bert", "--profile", "quick", "--trials", str(a.trials), "--sampler", sampler,
               "--set", f"output_dir={work / 'out'}"]
        for s in a.set:
            cmd += ["--set", s]
        if sampler != a.samplers[0]:  # a baseline is its sampler alone: no follow-ups
            cmd += ["--set", "search.follow_ups=0"]
        seconds[sampler] = round(run(cmd, env, work / f"search-{sampler}.log").seconds, 1)
        found = sorted((work / "out" / "search").glob(f"*__{sampler}__*/summary.json"), key=lambda p: p.stat().st_mtime)
        studies[sampler] = json.loads(found[-1].read_text())
        shutil.copy(found[-1].with_name("front.png"), a.results_dir / f"{a.name}_front_{sampler}.png")
    main_sampler = a.samplers[0]
    s = studies[main_sampler]["summary"]
    best, hand = s.get("best", {}), next(iter(s.get("hand", {}).values()), {})

    def three(fig: dict) -> dict:
        return {k: fig.get(k) for k in ("speedup", "size_ratio", "accuracy_drop_points")}

    hv = {k: v["hypervolume"] for k, v in studies.items()}
    nearest = s.get("nearest", {})  # when no trial met the constraints: the nearest miss, test-evaluated too

    def pick(summary: dict) -> tuple[str, dict]:
        if summary.get("best"):
            return "best", summary["best"]
        return "nearest miss (outside the constraints)", summary.get("nearest") or {}

    data = {"trials": a.trials, "samplers": a.samplers, "overrides": a.set, "seconds": seconds,
            "trials_wall_seconds": {k: v["summary"].get("trials_wall_seconds") for k, v in studies.items()},
            "settings": {k: v["summary"].get("settings") for k, v in studies.items()},  # sampler seeds among them
            "mlflow_store": uri, "teacher": s["teacher"], "best": three(best), "best_detail": best,
            "nearest": three(nearest), "nearest_detail": nearest, "hand": three(hand),
            "hand_detail": hand, "seed_recipes": s.get("hand", {}), "hypervolume": hv,
            "studies": {k: {"study": v["study"], "registered": v.get("registered"), "best": v["summary"].get("best"),
                            "nearest": v["summary"].get("nearest"), "follow_ups": v["summary"].get("follow_ups", [])}
                        for k, v in studies.items()},
            "targets": {
                "dominates_hand_recipe": bool(best) and bool(hand) and best["latency_ms"] < hand["latency_ms"]
                and best["size_mb"] < hand["size_mb"] and best["test_accuracy"] >= hand["test_accuracy"],
                "goal_20x_faster_10x_smaller_1pt": bool(best) and best["speedup"] >= 20 and best["size_ratio"] >= 10
                and best["accuracy_drop_points"] <= 1,
                **{f"hypervolume_{main_sampler}_ge_{k}": hv[main_sampler] >= hv[k] for k in hv if k != main_sampler}}}
    rows = []
    for name, fig in (("teacher (fp32)", {"test_accuracy": s["teacher"]["test_accuracy"],
                                          "latency_ms": s["teacher"]["latency_ms"], "size_mb": s["teacher"]["size_mb"],
                                          "runtime_rss_mb": s["teacher"]["runtime_rss_mb"]}),
                      (f"hand-written: {hand.get('recipe')}", hand),
                      *[(f"{pick(v['summary'])[0]} of {k}: {pick(v['summary'])[1].get('recipe')}",
                         pick(v["summary"])[1]) for k, v in studies.items()]):
        rows.append({"recipe": name, **{k: fig.get(k) for k in ("test_accuracy", "latency_ms", "size_mb",
                                                                 "runtime_rss_mb", "speedup", "size_ratio",
                                                                 "accuracy_drop_points")}})
    seeds = {k: (v["summary"].get("settings") or {}).get("seed") for k, v in studies.items()}
    md = (f"{a.trials} trials per sampler ({', '.join(a.samplers)}; sampler seeds {seeds}); overrides "
          f"{a.set or 'none'}; wall time of this "
          f"invocation {seconds} s, of each study's trials (first start to last end, across resumes) "
          f"{data['trials_wall_seconds']} s (the first study builds the teacher and its trials cold; later studies "
          "reuse any folder an earlier one built).\n\n"
          "Test split, latency p50 at batch 1 / 1 thread / 128 tokens, runtime RSS in the runtime's own process:\n\n"
          f"{markdown_table(rows)}\n\nHypervolume (relative to the teacher; larger is better): "
          + ", ".join(f"{k} {v:.4f}" for k, v in hv.items()) + "\n\nTargets: "
          + "; ".join(f"{k} → {'met' if v else 'MISSED'}" for k, v in data["targets"].items()) + "\n\n"
          + "".join(f"Follow-ups of {k} (a trial within the accuracy limit re-tried with the cheapest tail): "
                    + (", ".join(f"trial {f['trial']} of trial {f['of']} ({f['recipe']}; "
                                 f"{'inside' if f['feasible'] else 'outside'} the constraints)" for f in fu)
                       or ("none" if k == a.samplers[0] else "off (search.follow_ups=0)")) + "\n\n"
                    for k, v in studies.items() if (fu := v["summary"].get("follow_ups")) is not None)
          + " ".join(f"![{k}]({a.name}_front_{k}.png)" for k in a.samplers) + "\n")
    write_results(a.name, data, md, a.results_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
