"""The long-document report: mechanisms by length bucket, cost vs length, summarizers (markdown, via pandas)."""

from __future__ import annotations

import pandas as pd

from tasks.longdoc import mechanisms, scaling


def markdown(results: list[dict], scale_rows: list[dict], summaries: dict, buckets: list[int], window: int) -> str:
    edges = [0, *buckets, None]
    names = [mechanisms.bucket_name(lo, hi) for lo, hi in zip(edges[:-1], edges[1:])]
    rows = []
    scored = [r for r in results if r["technique"] in ("attention", "classic") and "eval/accuracy" in r]
    for r in scored:
        flag = " ⚠ DEGENERATE" if r.get("eval/degenerate") else ""
        row = {"mechanism": r["variant"] + flag, "kind": r["technique"], "accuracy": f"{r['eval/accuracy']:.4f}",
               "macro-F1": f"{r['eval/macro_f1']:.4f}"}
        for n in names:  # macro-F1 in the bucket (documents in it)
            row[n] = f"{r.get(f'eval/macro_f1_len_{n}', float('nan')):.3f} ({r.get(f'eval/num_docs_len_{n}', 0)})"
        row["train steps"] = f"{r['train/steps']:.0f}" if "train/steps" in r else ""
        row["s/doc"] = f"{r['eval/seconds_per_doc']:.3f}"
        rows.append(row)
    base = next((r for r in scored if "eval/majority_accuracy" in r), None)
    if base:
        rows.append({"mechanism": "majority class (baseline)", "kind": "baseline",
                     "accuracy": f"{base['eval/majority_accuracy']:.4f}", "macro-F1": f"{base['eval/majority_macro_f1']:.4f}"})
    degenerate = [r["variant"] for r in scored if r.get("eval/degenerate")]
    out = ["# effilm long-document", "", "## Classification by document length (macro-F1; docs per bucket)", "",
           pd.DataFrame(rows).fillna("").to_markdown(index=False) if rows else "(no mechanism evaluated)", ""]
    if degenerate:
        out += [f"**Degenerate** (one class for every document, or no better than the majority class on macro-F1): "
                f"{', '.join(degenerate)}. Train longer (train.epochs / max_steps) or check the labels.", ""]
    out += [f"## Cost vs length (batch 1, window {window})", "", scaling.table(scale_rows)]
    if summaries:
        table = pd.DataFrame([{"method": method, "ROUGE-1": round(res["metrics"]["eval/rouge1"], 4),
                               "ROUGE-2": round(res["metrics"]["eval/rouge2"], 4),
                               "ROUGE-L": round(res["metrics"]["eval/rougeL"], 4),
                               "val ROUGE-2": round(res["metrics"].get("val/rouge2", float("nan")), 4),
                               "words": round(res["metrics"]["eval/summary_words"], 1),
                               "budget": f"{res['budget_words']} words" if "budget_words" in res else f"k={res.get('k')}",
                               "s/doc": round(res["metrics"]["eval/seconds_per_doc"], 3)}
                              for method, res in summaries["methods"].items()])
        out += ["", f"## Summarization ({summaries['data']}; test docs: {summaries['num_test']})", "",
                table.to_markdown(index=False)]
    return "\n".join(out) + "\n"
