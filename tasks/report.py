"""Side-by-side report of variants: markdown table and CSV (logged to MLflow and as Prefect artifacts)."""

from __future__ import annotations

import csv
from pathlib import Path

COLUMNS = [
    ("variant", "variant"),
    ("technique", "technique"),
    ("eval/accuracy", "accuracy"),
    ("eval/macro_f1", "macro-F1"),
    ("bench/latency_ms_p50_b1_t1", "p50 ms b1 t1"),
    ("bench/latency_ms_p95_b1_t1", "p95 ms b1 t1"),
    ("bench/latency_ms_p50_b1_tall", "p50 ms b1 all"),
    ("bench/throughput_b32", "samples/s b32"),
    ("bench/peak_rss_mb", "peak RSS MB"),
    ("size/disk_mb", "disk MB"),
    ("size/params", "params"),
]


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def rows_for_table(results: list[dict]) -> list[dict]:
    return [{label: r.get(key) for key, label in COLUMNS} for r in results]


def markdown_table(results: list[dict]) -> str:
    head = "| " + " | ".join(label for _, label in COLUMNS) + " |"
    sep = "|" + "|".join("---" for _ in COLUMNS) + "|"
    body = ["| " + " | ".join(_fmt(r.get(key)) for key, _ in COLUMNS) + " |" for r in results]
    return "\n".join([head, sep, *body])


def write_tables(results: list[dict], out_dir: str | Path, title: str) -> dict[str, str]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "variants.md"
    md.write_text(f"# {title}\n\n{markdown_table(results)}\n")
    csv_path = out / "variants.csv"
    keys = sorted({k for r in results for k in r})
    with csv_path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(results)
    return {"markdown": str(md), "csv": str(csv_path)}
