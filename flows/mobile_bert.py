"""Case study 1 — a BERT news classifier made small and fast for mobile.

Recipe: load data -> fine-tune the teacher -> compress each variant -> evaluate (in parallel on the task runner) ->
benchmark (one at a time) -> report -> select and register the best variant under the constraints.
Every step is a Prefect task over a plain function in ``tasks/``; MLflow holds one parent run per flow run and one
nested run per variant.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.common import base_tags, flow_run
from tasks.compress import registry as compress
from tasks.core import config, tracking, train
from tasks.core.orchestrate import call, call_many, work_dir
from tasks.measure import benchmark, evaluate, report, select, serving

STUDY = "mobile-bert"


fine_tune_teacher = train.fine_tune_task.with_options(name="fine-tune-teacher")


# ----------------------------------------------------------------------------------------------- flow


def record_variant(cfg, parent_run_id: str, data_info: dict, variant: str, technique: str, model_dir: str, ev: dict,
                   extra_metrics: dict | None = None, extra_tags: dict | None = None,
                   source_predictions: str | None = None) -> dict:
    """Benchmark one evaluated model folder (alone on the machine) and record it as a nested MLflow run."""
    out = Path(cfg.output_dir)
    key = (model_dir, data_info["fingerprint"])
    with tracking.run(cfg.experiment, variant, {**base_tags(STUDY, cfg.profile, data_info["fingerprint"]),
                                                "variant": variant, "technique": technique, **(extra_tags or {})},
                      parent_run_id=parent_run_id) as run_id:
        bench = call(benchmark.benchmark_task, f"{variant}/benchmark", model_dir=model_dir,
                     texts_path=data_info["paths"]["test"], cfg=cfg.benchmark,
                     work_dir=work_dir(out, "bench", variant, *key, cfg.benchmark, code=benchmark))
        metrics = {**ev["metrics"], **bench["metrics"], **(extra_metrics or {})}
        if source_predictions:
            metrics["eval/agreement_with_source"] = evaluate.agreement(ev["artifacts"]["predictions"],
                                                                       source_predictions)
        tracking.log_metrics(run_id, metrics)
        for path in (*ev["artifacts"].values(), *bench["artifacts"].values()):
            tracking.log_artifact(run_id, path, "eval" if not path.endswith("benchmark.json") else "bench")
        tracking.log_model(run_id, model_dir, **serving.pyfunc_spec(model_dir))
    return {"variant": variant, "technique": technique, "run_id": run_id, "model_dir": model_dir,
            "predictions": ev["artifacts"]["predictions"], "eval_pid": ev.get("pid"), **metrics}


def build_variant(cfg, variant, source_dir: str, context: dict) -> str:
    """Apply a variant's steps in order, each a cached Prefect task writing its own folder."""
    model_dir = source_dir
    for i, step in enumerate(variant.steps):
        out_dir = work_dir(Path(cfg.output_dir), "variants", variant.name, i, model_dir, step, context,
                           code=compress.module_of(step.technique))
        model_dir = call(compress.compress_task, f"{variant.name}/{step.technique}", model_dir=model_dir, step=step,
                         context=context, out_dir=out_dir)["model_dir"]
    return model_dir


@flow(name="mobile-bert", log_prints=True)
def mobile_bert(profile: str = "quick", overrides: list[str] | None = None, config_path: str | None = None) -> dict:
    logger = get_run_logger()
    cfg = config.load_config(STUDY, profile, overrides, config_path)  # validated once, here
    out = Path(cfg.output_dir)
    started = time.perf_counter()

    # 0-1. reap killed runs, preflight data + model, open the parent run, record config/environment/data
    with flow_run(cfg, STUDY) as (parent, data_info):
        # 2. teacher
        teacher = call(fine_tune_teacher, "teacher/fine-tune", model_cfg=cfg.model, train_cfg=cfg.train,
                       data=data_info, seed=cfg.seed,
                       work_dir=work_dir(out, "teacher", cfg.model, cfg.train, data_info["fingerprint"], cfg.seed,
                                         code=train))

        # 3. compress: every variant builds on its source (each step a cached task writing its own folder)
        context = {"data": data_info, "train": cfg.train, "seed": cfg.seed}
        dirs, specs = {"teacher": teacher["model_dir"]}, [("teacher-fp32", "baseline", teacher["model_dir"], None)]
        names = {"teacher": "teacher-fp32"}
        for variant in cfg.variants:
            dirs[variant.name] = build_variant(cfg, variant, dirs[variant.source], context)
            names[variant.name] = variant.name
            specs.append((variant.name, "+".join(s.technique for s in variant.steps), dirs[variant.name],
                          names[variant.source]))

        # 4. evaluate every variant, in parallel on the task runner (execution.task_runner: thread | dask)
        evals = call_many(evaluate.evaluate_task, {
            name: dict(model_dir=d, data_info=data_info, eval_cfg=cfg.evaluate,
                       work=work_dir(out, "eval", name, d, data_info["fingerprint"], code=evaluate), variant=name)
            for name, _, d, _ in specs}, cfg.execution)

        # 5. benchmark one variant at a time, after the fan-out has finished: latency is measured with nothing else
        #    running (each benchmark is its own child process with pinned thread counts), then record the runs
        results = []
        for name, technique, model_dir, source in specs:
            extra = {}
            if name == "teacher-fp32":
                extra = {"train/seconds": teacher.get("train_seconds"), "train/samples_per_second": teacher.get("samples_per_second"),
                         "train/resumed_from_step": teacher.get("resumed_from_step", 0)}
            results.append(record_variant(
                cfg, parent, data_info, name, technique, model_dir, evals[name], extra_metrics=extra,
                extra_tags={"source_variant": source} if source else None,
                source_predictions=evals[source]["artifacts"]["predictions"] if source else None))
            if name == "teacher-fp32" and teacher.get("losses"):
                tracking.log_metric_history(results[0]["run_id"], "train/loss", teacher["losses"])

        # 6. select under constraints, register, report
        baseline = results[0]["eval/accuracy"]
        limits = cfg.constraints.resolved(results[0].get(select.LATENCY), results[0].get(select.SIZE))  # vs the teacher
        choice = select.select(results, limits.model_dump(), baseline, cfg.select.objective)
        logger.info(choice.message)
        tracking.set_tags(parent, {"selection": choice.message[:5000]})
        registered = None
        if choice.chosen is not None:
            tracking.set_tags(choice.chosen["run_id"], {"selected": "true"})
            if cfg.select.register_model:
                # raises (the flow ends FAILED with the reason) unless the version exists and points at this run
                version = select.register(choice.chosen["run_id"], cfg.select.registered_model, cfg.select.alias,
                                          {"variant": choice.chosen["variant"], "case_study": STUDY})
                registered = {"name": cfg.select.registered_model, "version": version, "alias": cfg.select.alias}
                tracking.set_tags(parent, {"registered_model": cfg.select.registered_model,
                                           "registered_version": version})
                tracking.set_tags(choice.chosen["run_id"], {"registered_version": version})
                logger.info("registered %s version %s as @%s", cfg.select.registered_model, version, cfg.select.alias)
        elif cfg.select.register_model:
            logger.warning("nothing registered: %s", choice.message)
            tracking.set_tags(parent, {"registered_version": "none"})
        tables = report.write_tables(results, out / "report", "effilm mobile-bert: variants")
        tables["pareto"] = report.pareto_plot(results, out / "report" / "pareto.png", choice.frontier,
                                              choice.chosen["variant"] if choice.chosen else None)
        for path in tables.values():
            tracking.log_artifact(parent, path, "report")
        md = Path(tables["markdown"]).read_text() + f"\n\n**Selection**: {choice.message}\n"
        create_markdown_artifact(key="mobile-bert-summary", markdown=md, description="mobile-bert variants")
        create_table_artifact(key="mobile-bert-variants", table=report.rows_for_table(results))
        tracking.log_metrics(parent, {"flow/seconds": round(time.perf_counter() - started, 2),
                                      "flow/num_variants": len(results)})
    logger.info("mobile-bert done in %.1fs; MLflow parent run %s\n%s", time.perf_counter() - started, parent, md)
    return {"parent_run_id": parent, "variants": results, "report": tables, "selection": choice.message,
            "selected": choice.chosen["variant"] if choice.chosen else None, "registered": registered}
