"""Case study 2 summarization target on the BBC News Summary data (human extractive summaries):
extractive summarizer (the long encoder fine-tuned as a sentence scorer on oracle labels) vs lead, TextRank and
centroid at the same word budget (chosen on validation), and the greedy oracle's ceiling; ROUGE-1/2/L on the test split.

    python benchmarks/summarization.py [--path ../shared/data/bbc-news-summary] [--max-docs 800]  # 2 cores: ~47 min (all)
    python benchmarks/summarization.py --data keps      # the packaged KEPs (605 with a Summary): summarization_keps.*

Target (#13): extractive ROUGE-2 >= the best of lead-k / TextRank + 2 points. Writes <results-dir>/summarization.{json,md}
(a trial run: --max-docs 40 --results-dir /tmp/bench).
The encoder is the packaged all-MiniLM-L6-v2, long-ified (sliding window 128 each side, a [CLS] marker before every
sentence), fine-tuned end to end with its scoring head (`tasks/longdoc/summarize.py: SentenceScorer`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, markdown_table, parser, write_results


def main() -> int:
    ap = parser(__doc__)
    ap.add_argument("--data", choices=["bbc-summary", "keps"], default="bbc-summary",
                    help="bbc-summary: BBC News Summary at --path; keps: the packaged KEPs, reference = each KEP's "
                         "Summary section (results file summarization_keps.*)")
    ap.add_argument("--path", default=str(ROOT.parent / "shared" / "data" / "bbc-news-summary"))
    ap.add_argument("--max-docs", type=int, default=None, help="a seeded sample of at most this many documents "
                    "(default: all; BBC News Summary's 2,225 take ~47 min on 2 cores, 800 ~15 min)")
    ap.add_argument("--max-tokens", type=int, default=1024)
    ap.add_argument("--epochs", type=float, default=2.0, help="scorer fine-tuning passes (the best epoch on "
                    "validation is kept, the warm start included)")
    ap.add_argument("--lr", type=float, default=5e-5, help="scorer fine-tuning learning rate")
    ap.add_argument("--loss", choices=["bce", "pairwise", "listwise"], default="pairwise",
                    help="the scorer's training loss (summarize.scorer.loss; bce: the default until f7b2b33, results in "
                         "summarization_bbc_bce.* / summarization_keps_bce.*)")
    ap.add_argument("--global-markers", action=argparse.BooleanOptionalAction, default=True,
                    help="global attention on every sentence marker (summarize.scorer.global_markers); "
                         "--no-global-markers: on the first marker alone")
    ap.add_argument("--oracle-max-sentences", type=int, default=10, help="cap on the greedy-ROUGE oracle's "
                    "sentences per training document (the scorer's labels; summarize.oracle_max_sentences); BBC's "
                    "references hold about 8.6 sentences on average, a fifth more than 10 (a sample of 300)")
    a = ap.parse_args()
    from tasks.core import models
    from tasks.longdoc import summarize

    base = models.load_classifier("packaged:minilm-l6", ["a", "b"])
    model_dir = models.save_hf(base, models.load_tokenizer("packaged:minilm-l6"), Path(tempfile.mkdtemp()) / "m",
                               labels=["a", "b"], max_length=512)
    data = {"source": "bbc-summary", "path": a.path} if a.data == "bbc-summary" else {"source": "keps"}
    cfg = {"data": {**data, "max_docs": a.max_docs}, "k_values": [2, 3, 4, 5, 6, 7, 8],
           "max_tokens": a.max_tokens, "oracle_max_sentences": a.oracle_max_sentences,
           "scorer": {"epochs": a.epochs, "learning_rate": a.lr, "global_markers": a.global_markers,
                      "loss": a.loss}}
    t0 = time.perf_counter()
    res = summarize.run(cfg, {"max_positions": 4096, "attention_window": 256}, model_dir, 42, tempfile.mkdtemp())
    seconds = time.perf_counter() - t0
    table = markdown_table([{"method": name, "budget": r.get("budget_words", r.get("k")), "ROUGE-1": f"{m['eval/rouge1']:.4f}",
                             "ROUGE-2": f"{m['eval/rouge2']:.4f}", "val ROUGE-2": f"{m['val/rouge2']:.4f}", "ROUGE-L": f"{m['eval/rougeL']:.4f}",
                             "words": f"{m['eval/summary_words']:.1f}", "s/doc": f"{m['eval/seconds_per_doc']:.4f}"}
                            for name, r in res["methods"].items() for m in [r["metrics"]]], disable_numparse=True)
    r2 = {name: r["metrics"]["eval/rouge2"] for name, r in res["methods"].items()}
    peer = max(("lead-k", "textrank"), key=r2.get)  # the target: the best of lead-k / TextRank + 2 points
    margin = 100 * (r2["extractive-long"] - r2[peer])
    margins = {name: round(100 * (r2["extractive-long"] - v), 2) for name, v in r2.items()
               if name not in ("extractive-long", "oracle")}
    val_margin = 100 * (res["methods"]["extractive-long"]["metrics"]["val/rouge2"]
                        - res["methods"][peer]["metrics"]["val/rouge2"])
    ext = res["methods"]["extractive-long"]
    sample = f"at most {a.max_docs} documents sampled (seed 42)" if a.max_docs else "all documents"
    md = (f"Data: {res['data']}, {sample}, split 50/25/25; test documents: {res['num_test']}. "
          f"Total {seconds:.0f} s. Scorer: {a.epochs:g} epochs at lr {a.lr:g}, {a.loss} loss, global attention on "
          f"{'every sentence marker' if a.global_markers else 'the first marker'}, oracle labels of at most "
          f"{a.oracle_max_sentences} sentences, over {ext.get('train_docs')} documents "
          f"({ext.get('train_seconds')} s); validation ROUGE-2 by epoch (0 = warm start): "
          + ", ".join(f"{e:g}: {v:.4f}" for e, v in ext.get("train_val_scores", [])) +
          f"; kept epoch {ext.get('train_best_epoch')}.\n\n" + table +
          f"\n\nTarget: extractive ROUGE-2 >= the best of lead-k / TextRank ({peer}) + 2 points -> {margin:+.2f} points "
          f"({'met' if margin >= 2 else 'MISSED'}; on validation {val_margin:+.2f}); against each baseline: "
          + ", ".join(f"{name} {m:+.2f}" for name, m in margins.items()) + " points.")
    write_results("summarization" if a.data == "bbc-summary" else "summarization_keps", {"result": res, "rouge2_margin_points": margin, "margin_against": peer,
                                    "rouge2_margins_points": margins, "val_rouge2_margin_points": val_margin,
                                    "seconds": seconds}, md, a.results_dir)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
