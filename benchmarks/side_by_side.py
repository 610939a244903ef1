"""Latency of model folders measured in turn, round after round, against the first (the reference, e.g. the teacher).

    python benchmarks/side_by_side.py REFERENCE_DIR MODEL_DIR [MODEL_DIR ...] --texts VAL.parquet \
        [--labels teacher a b] [--rounds 5] [--name side_by_side]

On a shared machine a figure drifts 10-25 % between runs minutes apart, so a ratio of two figures taken in different
runs (a search's trials are benchmarked as they finish) can move by as much. Here every folder is benchmarked by the
flow's own benchmark (tasks/measure/benchmark.py: its own process, p50 at batch 1 / 1 thread, the quick profile's
search.benchmark settings) in turn, the order rotated each round (A B C, B C A, ...), and each ratio is the median
over rounds of the ratio within a round: a drift between rounds affects both sides of it alike.
Writes <results-dir>/<name>.{json,md}.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from common import markdown_table, parser, write_results

LAT = "bench/latency_ms_p50_b1_t1"


def main() -> int:
    ap = parser(__doc__)
    ap.add_argument("models", nargs="+", type=Path, help="model folders; the first is the reference")
    ap.add_argument("--texts", type=Path, required=True, help="a parquet split with a text column (inputs only)")
    ap.add_argument("--labels", nargs="+", help="one name per model folder (default: the folder names)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--name", default="side_by_side")
    a = ap.parse_args()
    labels = a.labels or [p.name for p in a.models]
    if len(labels) != len(a.models) or len(set(labels)) != len(labels):
        ap.error(f"--labels: give {len(a.models)} distinct names, one per model folder (got {labels})")
    for p in a.models:
        if not (p / "effilm.json").is_file():
            ap.error(f"{p}: not an effilm model folder (no effilm.json)")

    from tqdm import tqdm

    from tasks.core.config import load_config
    from tasks.core.models import disk_size_mb
    from tasks.measure.benchmark import benchmark

    cfg = load_config("mobile-bert", "quick").search.benchmark  # what a search trial is measured with
    ms = {label: [] for label in labels}
    with tempfile.TemporaryDirectory() as tmp, tqdm(total=a.rounds * len(labels), desc="benchmarks", unit="run") as bar:
        for r in range(a.rounds):
            for i in range(len(labels)):  # rotated: no folder always runs first
                label, model = labels[(i + r) % len(labels)], a.models[(i + r) % len(labels)]
                ms[label].append(benchmark(str(model), str(a.texts), cfg, f"{tmp}/{r}-{i}")["metrics"][LAT])
                bar.update()
    ref = labels[0]
    rows = []
    for label, model in zip(labels, a.models):
        ratios = [x / y for x, y in zip(ms[ref], ms[label])]
        rows.append({"model": label, "p50_ms_median": round(statistics.median(ms[label]), 3),
                     "p50_ms_min": round(min(ms[label]), 3), "p50_ms_max": round(max(ms[label]), 3),
                     "speedup_median": round(statistics.median(ratios), 2), "speedup_min": round(min(ratios), 2),
                     "speedup_max": round(max(ratios), 2), "size_mb": round(disk_size_mb(model), 3),
                     "size_ratio": round(disk_size_mb(a.models[0]) / disk_size_mb(model), 2), "dir": str(model)})
    data = {"rounds": a.rounds, "reference": ref, "benchmark": cfg.model_dump(), "p50_ms": ms, "rows": rows}
    md = (f"{a.rounds} rounds; in each, every folder benchmarked in turn (order rotated) by the flow's benchmark (own process, p50 at "
          f"batch 1 / 1 thread, {cfg.seq_len} tokens). Speedup: the reference's p50 over the model's within a round, "
          "median (min, max) over rounds.\n\n"
          + markdown_table(rows, ["model", "p50_ms_median", "p50_ms_min", "p50_ms_max", "speedup_median",
                                  "speedup_min", "speedup_max", "size_mb", "size_ratio"]) + "\n")
    write_results(a.name, data, md, a.results_dir)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
