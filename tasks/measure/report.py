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
    ("bench/runtime_rss_mb", "runtime RSS MB"),
    ("size/disk_mb", "disk MB"),
    ("size/params", "params"),
    ("eval/agreement_with_source", "agrees w/ source"),
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
    """One row per variant, the COLUMNS labels as header (``DataFrame.to_markdown``; numbers right-aligned)."""
    import pandas as pd

    cells = pd.DataFrame([[_fmt(r.get(key)) for key, _ in COLUMNS] for r in results], columns=[label for _, label in COLUMNS])
    return cells.to_markdown(index=False, disable_numparse=True, colalign=["left", "left"] + ["right"] * (len(COLUMNS) - 2))


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


def pareto_plot(results: list[dict], path: str | Path, frontier: list[str] | None = None, chosen: str | None = None,
                title: str = "accuracy vs latency (marker area = size on disk)") -> str:
    """Accuracy vs p50 latency (batch 1, 1 thread); marker size = file size; frontier joined; choice ringed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results if r.get("bench/latency_ms_p50_b1_t1") is not None and r.get("eval/accuracy") is not None]
    fig, ax = plt.subplots(figsize=(10, 6.5))
    max_mb = max((r.get("size/disk_mb") or 1) for r in rows) if rows else 1
    techniques = sorted({r.get("technique", "") for r in rows})
    cmap = plt.get_cmap("tab10")
    for i, tech in enumerate(techniques):
        sel = [r for r in rows if r.get("technique", "") == tech]
        ax.scatter([r["bench/latency_ms_p50_b1_t1"] for r in sel], [r["eval/accuracy"] for r in sel],
                   s=[40 + 900 * (r.get("size/disk_mb") or 0) / max_mb for r in sel], alpha=0.6, color=cmap(i % 10),
                   label=tech, edgecolors="black", linewidths=0.5)
    for r in rows:
        ax.annotate(f"{r['variant']} ({r.get('size/disk_mb', 0):.0f} MB)", (r["bench/latency_ms_p50_b1_t1"], r["eval/accuracy"]),
                    fontsize=7, xytext=(4, 4), textcoords="offset points")
    if frontier:
        front = sorted((r for r in rows if r["variant"] in frontier), key=lambda r: r["bench/latency_ms_p50_b1_t1"])
        ax.plot([r["bench/latency_ms_p50_b1_t1"] for r in front], [r["eval/accuracy"] for r in front], "k--", lw=1,
                label="feasible Pareto frontier")
    if chosen:
        for r in rows:
            if r["variant"] == chosen:
                ax.scatter([r["bench/latency_ms_p50_b1_t1"]], [r["eval/accuracy"]], s=600, facecolors="none",
                           edgecolors="red", linewidths=2, label=f"selected: {chosen}")
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency, batch 1, 1 thread (ms, log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)
