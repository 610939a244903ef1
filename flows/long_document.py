"""Case study 2 — long documents: classification with several attention mechanisms, their cost as documents grow,
and extractive summarization.

Recipe: load data -> fine-tune the base classifier -> evaluate every mechanism by length bucket -> scaling
benchmark (latency, memory vs length) -> summarization (lead-k, TextRank, extractive with the long encoder) ->
report. MLflow: one parent run per flow run; one nested run per mechanism and per summarizer.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.common import base_tags, flow_run
from tasks.core import config, tracking, train
from tasks.core.orchestrate import call, work_dir
from tasks.longdoc import mechanisms, report, scaling, summarize

STUDY = "long-document"


fine_tune_base = train.fine_tune_task.with_options(name="fine-tune-base")


@flow(name="long-document", log_prints=True)
def long_document(profile: str = "quick", overrides: list[str] | None = None, config_path: str | None = None) -> dict:
    logger = get_run_logger()
    cfg = config.load_config(STUDY, profile, overrides, config_path)  # validated once, here
    out = Path(cfg.output_dir)
    started = time.perf_counter()

    # 0. reap killed runs, preflight data + model, open the parent run, record config/environment/data
    with flow_run(cfg, STUDY) as (parent, data_info):
        # 1. base classifier (the weights every mechanism shares)
        base = call(fine_tune_base, "base/fine-tune", model_cfg=cfg.model, train_cfg=cfg.train, data=data_info,
                    seed=cfg.seed, work_dir=work_dir(out, "base", cfg.model, cfg.train, data_info["fingerprint"],
                                                     cfg.seed, code=train))

        # 2. every mechanism on the same test documents, by length bucket
        evals = {m: call(mechanisms.evaluate_task, f"{m}/evaluate", mechanism=m, model_dir=base["model_dir"], data_info=data_info,
                         long_cfg=cfg.long, eval_cfg=cfg.evaluate) for m in cfg.mechanisms}

        # 3. cost as documents grow
        scale = call(scaling.sweep_task, "scaling", scaling_cfg=cfg.scaling,
                     window=cfg.long.attention_window, model_dir=base["model_dir"],
                     work=work_dir(out, "scaling", cfg.scaling, cfg.long.attention_window,
                                   base["model_dir"], code=scaling))
        per_mech: dict[str, dict] = {}
        for r in scale["rows"]:
            if "latency_ms" in r:
                per_mech.setdefault(r["mechanism"], {})[f"bench/latency_ms_L{r['length']}"] = r["latency_ms"]
                per_mech[r["mechanism"]][f"bench/peak_rss_mb_L{r['length']}"] = r["peak_rss_mb"]

        results = []
        for mech in dict.fromkeys([*cfg.mechanisms, *per_mech]):
            metrics = {**evals.get(mech, {}).get("metrics", {}), **per_mech.get(mech, {})}
            with tracking.run(cfg.experiment, mech, {**base_tags(STUDY, profile, data_info["fingerprint"]), "variant": mech,
                                                     "technique": "attention", "attention_window": cfg.long.attention_window},
                              parent_run_id=parent) as run_id:
                tracking.log_metrics(run_id, metrics)
            results.append({"variant": mech, "technique": "attention", "run_id": run_id, **metrics})
        for path in scale["artifacts"].values():
            tracking.log_artifact(parent, path, "scaling")

        # 4. summarization
        summaries = {}
        if cfg.summarize.enabled:
            summaries = call(summarize.summarize_task, "summarize", cfg=cfg.summarize, long_cfg=cfg.long,
                             model_dir=base["model_dir"], seed=cfg.seed,
                             work=work_dir(out, "summarize", cfg.summarize, cfg.long, base["model_dir"], cfg.seed,
                                           code=summarize))
            for method, res in summaries["methods"].items():
                with tracking.run(cfg.experiment, method, {**base_tags(STUDY, profile), "variant": method,
                                                           "technique": "summarization"}, parent_run_id=parent) as run_id:
                    tracking.log_metrics(run_id, res["metrics"])
                    tracking.log_params(run_id, {k: v for k, v in res.items() if k != "metrics"})
                results.append({"variant": method, "technique": "summarization", "run_id": run_id, **res["metrics"]})

        # 5. report
        md = report.markdown(results, scale["rows"], summaries, cfg.evaluate.buckets, cfg.long.attention_window)
        rep = out / "report"
        rep.mkdir(parents=True, exist_ok=True)
        (rep / "long_document.md").write_text(md)
        tracking.log_artifact(parent, rep / "long_document.md", "report")
        create_markdown_artifact(key="long-document-summary", markdown=md, description="long-document case study")
        create_table_artifact(key="long-document-scaling", table=[r for r in scale["rows"]])
        tracking.log_metrics(parent, {"flow/seconds": round(time.perf_counter() - started, 2)})
    logger.info("long-document done in %.1fs; MLflow parent run %s\n%s", time.perf_counter() - started, parent, md)
    return {"parent_run_id": parent, "results": results, "scaling": scale["rows"], "report": {"markdown": str(rep / "long_document.md")}}
