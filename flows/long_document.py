"""Case study 2 — long documents: classification with several attention mechanisms, their cost as documents grow,
and extractive summarization.

Recipe: load data -> train every mechanism for what it does (same checkpoint, same steps; long models on long
inputs) -> evaluate every mechanism and the classic TF-IDF peers by length bucket, beside the majority baseline ->
scaling benchmark (latency, memory vs length) -> summarization (lead-k, TextRank, extractive with the long encoder)
-> report. MLflow: one parent run per flow run; one nested run per mechanism, classic peer and summarizer.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.common import base_tags, flow_run
from tasks.core import config, tracking
from tasks.core.orchestrate import call, work_dir
from tasks.longdoc import classic, mechanisms, report, scaling, summarize, train_long

STUDY = "long-document"


@flow(name="long-document", log_prints=True)
def long_document(profile: str = "quick", overrides: list[str] | None = None, config_path: str | None = None) -> dict:
    logger = get_run_logger()
    cfg = config.load_config(STUDY, profile, overrides, config_path)  # validated once, here
    out = Path(cfg.output_dir)
    started = time.perf_counter()

    # 0. reap killed runs, preflight data + model, open the parent run, record config/environment/data
    with flow_run(cfg, STUDY) as (parent, data_info):
        # 1. every mechanism trained for what it does, from the same checkpoint with the same number of steps;
        #    truncate-512's classifier also serves the conversions (hf-longformer, bigbird), scaling and summarization
        trained = {m: call(train_long.train_mechanism_task, f"{m}/train", mechanism=m, model_cfg=cfg.model,
                           long_cfg=cfg.long, train_cfg=cfg.train, data=data_info, seed=cfg.seed,
                           work_dir=work_dir(out, f"train-{m}", m, cfg.model, cfg.long, cfg.train,
                                             data_info["fingerprint"], cfg.seed, code=train_long))
                   for m in dict.fromkeys(["truncate-512", *cfg.mechanisms]) if m in train_long.SHORT + train_long.LONG}
        base_dir = trained["truncate-512"]["model_dir"]

        # 2. every mechanism and classic peer on the same test documents, by length bucket
        evals = {m: call(mechanisms.evaluate_task, f"{m}/evaluate", mechanism=m,
                         model_dir=trained.get(m, {"model_dir": base_dir})["model_dir"], data_info=data_info,
                         long_cfg=cfg.long, eval_cfg=cfg.evaluate) for m in cfg.mechanisms}
        classics = {c: call(classic.evaluate_task, f"{c}/evaluate", name=c, data_info=data_info, model_cfg=cfg.model,
                            eval_cfg=cfg.evaluate, long_cfg=cfg.long) for c in cfg.classic}

        # 3. cost as documents grow
        scale = call(scaling.sweep_task, "scaling", scaling_cfg=cfg.scaling,
                     window=cfg.long.attention_window, model_dir=base_dir,
                     work=work_dir(out, "scaling", cfg.scaling, cfg.long.attention_window, base_dir, code=scaling))
        per_mech: dict[str, dict] = {}
        for r in scale["rows"]:
            if "latency_ms" in r:
                per_mech.setdefault(r["mechanism"], {})[f"bench/latency_ms_L{r['length']}"] = r["latency_ms"]
                per_mech[r["mechanism"]][f"bench/peak_rss_mb_L{r['length']}"] = r["peak_rss_mb"]

        results = []
        for mech in dict.fromkeys([*cfg.mechanisms, *per_mech, *classics]):
            technique = "classic" if mech in classics else "attention"
            metrics = {**(classics.get(mech) or evals.get(mech, {})).get("metrics", {}), **per_mech.get(mech, {}),
                       **train_long.metrics(trained.get(mech))}
            tags = {**base_tags(STUDY, profile, data_info["fingerprint"]), "variant": mech, "technique": technique,
                    "attention_window": cfg.long.attention_window}
            if metrics.get("eval/degenerate"):  # one class for every document, or no better than the majority
                tags["effilm.degenerate"] = "true"
                logger.warning("%s is DEGENERATE: macro-F1 %.3f with %d distinct prediction(s); majority baseline "
                               "macro-F1 %.3f, accuracy %.3f", mech, metrics["eval/macro_f1"],
                               metrics["eval/distinct_predictions"], metrics.get("eval/majority_macro_f1", float("nan")),
                               metrics.get("eval/majority_accuracy", float("nan")))
            with tracking.run(cfg.experiment, mech, tags, parent_run_id=parent) as run_id:
                tracking.log_metrics(run_id, metrics)
                if mech in classics:
                    tracking.log_params(run_id, classics[mech]["params"])
            results.append({"variant": mech, "technique": technique, "run_id": run_id, **metrics})
        for path in scale["artifacts"].values():
            tracking.log_artifact(parent, path, "scaling")

        # 4. summarization
        summaries = {}
        if cfg.summarize.enabled:
            summaries = call(summarize.summarize_task, "summarize", cfg=cfg.summarize, long_cfg=cfg.long,
                             model_dir=base_dir, seed=cfg.seed,
                             work=work_dir(out, "summarize", cfg.summarize, cfg.long, base_dir, cfg.seed,
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

