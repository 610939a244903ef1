"""Case study 1 — a BERT news classifier made small and fast for mobile.

Recipe: load data -> fine-tune the teacher -> (compress each variant) -> evaluate -> benchmark -> report.
Every step is a Prefect task over a plain function in ``tasks/``; MLflow holds one parent run per flow run and one
nested run per variant.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.common import base_tags, call
from tasks import benchmark, config, data, evaluate, report, tracking, train
from tasks.caching import CACHE, work_dir

STUDY = "mobile-bert"


# ---------------------------------------------------------------------------------------------- tasks


@task(name="load-data")
def load_data(data_cfg: dict, seed: int, out_root: str) -> dict:
    return data.prepare(data_cfg, seed, out_root)


@task(name="fine-tune-teacher", cache_policy=CACHE, persist_result=True)
def fine_tune_teacher(model_cfg: dict, train_cfg: dict, data_info: dict, seed: int, work: str) -> dict:
    return train.fine_tune(model_cfg, train_cfg, data_info, seed, work)


@task(name="evaluate", cache_policy=CACHE, persist_result=True)
def evaluate_variant(model_dir: str, data_info: dict, eval_cfg: dict, work: str, variant: str) -> dict:
    return evaluate.evaluate(model_dir, data_info, eval_cfg, work, variant)


@task(name="benchmark", cache_policy=CACHE, persist_result=True)
def benchmark_variant(model_dir: str, texts_path: str, bench_cfg: dict, work: str) -> dict:
    return benchmark.benchmark(model_dir, texts_path, bench_cfg, work)


# ----------------------------------------------------------------------------------------------- flow


def measure_variant(cfg, parent_run_id: str, data_info: dict, variant: str, technique: str, model_dir: str,
                    extra_metrics: dict | None = None, extra_tags: dict | None = None) -> dict:
    """Evaluate + benchmark one model folder and record it as a nested MLflow run."""
    out = Path(cfg.output_dir)
    key = (model_dir, data_info["fingerprint"])
    with tracking.run(cfg.experiment, variant, {**base_tags(STUDY, cfg.profile, data_info["fingerprint"]),
                                                "variant": variant, "technique": technique, **(extra_tags or {})},
                      parent_run_id=parent_run_id) as run_id:
        ev = call(evaluate_variant, f"{variant}/evaluate", model_dir=model_dir, data_info=data_info,
                  eval_cfg=config.slice_dict(cfg.evaluate), work=work_dir(out, "eval", variant, *key), variant=variant)
        bench = call(benchmark_variant, f"{variant}/benchmark", model_dir=model_dir, texts_path=data_info["paths"]["test"],
                     bench_cfg=config.slice_dict(cfg.benchmark), work=work_dir(out, "bench", variant, *key,
                                                                                config.slice_dict(cfg.benchmark)))
        metrics = {**ev["metrics"], **bench["metrics"], **(extra_metrics or {})}
        tracking.log_metrics(run_id, metrics)
        for path in (*ev["artifacts"].values(), *bench["artifacts"].values()):
            tracking.log_artifact(run_id, path, "eval" if not path.endswith("benchmark.json") else "bench")
        tracking.log_model(run_id, model_dir)
    return {"variant": variant, "technique": technique, "run_id": run_id, "model_dir": model_dir, **metrics}


@flow(name="mobile-bert", log_prints=True)
def mobile_bert(profile: str = "quick", overrides: list[str] | None = None, config_path: str | None = None) -> dict:
    logger = get_run_logger()
    cfg = config.load_config(STUDY, profile, overrides, config_path)  # validated once, here
    out = Path(cfg.output_dir)
    started = time.perf_counter()
    with tracking.run(cfg.experiment, f"{STUDY}-{profile}-{time.strftime('%Y%m%d-%H%M%S')}",
                      {**base_tags(STUDY, profile), "variant": "parent"}) as parent:
        tracking.log_config(parent, cfg.model_dump(mode="json"), config.to_flat_params(cfg))
        tracking.log_environment(parent)

        # 1. data
        data_info = load_data(config.slice_dict(cfg.data), cfg.seed, str(out))
        tracking.set_tags(parent, {"data_fingerprint": data_info["fingerprint"]})
        tracking.log_metrics(parent, {f"data/{k}": v for k, v in data_info["stats"].items()})
        tracking.log_dataset(parent, data_info["paths"], "bbc" if cfg.data.source == "bbc" else cfg.data.source,
                             data_info["source"], data_info["fingerprint"])
        logger.info("data: %s", data_info["stats"])

        # 2. teacher
        model_slice = config.slice_dict(cfg.model)
        train_slice = config.slice_dict(cfg.train)
        teacher = call(fine_tune_teacher, "teacher/fine-tune", model_cfg=model_slice, train_cfg=train_slice,
                       data_info=data_info, seed=cfg.seed,
                       work=work_dir(out, "teacher", model_slice, train_slice, data_info["fingerprint"], cfg.seed))

        # 3. measure every variant alike
        results = [measure_variant(cfg, parent, data_info, "teacher-fp32", "baseline", teacher["model_dir"],
                                   extra_metrics={"train/seconds": teacher.get("train_seconds"),
                                                  "train/samples_per_second": teacher.get("samples_per_second")})]
        if teacher.get("losses"):
            tracking.log_metric_history(results[0]["run_id"], "train/loss", teacher["losses"])

        # 4. report
        tables = report.write_tables(results, out / "report", "effilm mobile-bert: variants")
        for path in tables.values():
            tracking.log_artifact(parent, path, "report")
        md = Path(tables["markdown"]).read_text()
        create_markdown_artifact(key="mobile-bert-summary", markdown=md, description="mobile-bert variants")
        create_table_artifact(key="mobile-bert-variants", table=report.rows_for_table(results))
        tracking.log_metrics(parent, {"flow/seconds": round(time.perf_counter() - started, 2)})
    logger.info("mobile-bert done in %.1fs; MLflow parent run %s\n%s", time.perf_counter() - started, parent, md)
    return {"parent_run_id": parent, "variants": results, "report": tables}
