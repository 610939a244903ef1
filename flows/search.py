"""Automated compression — a multi-objective recipe search for the mobile-bert case study.

Recipe: load data -> the teacher (the same cached fine-tune as `effilm run mobile-bert`) -> the teacher on validation
and on the search's benchmark (the reference of every objective) -> open or resume the Optuna study -> trials, a batch
at a time (once the startup trials are in, a promising student is followed up with the cheapest tail): build the
recipes (shared prefixes once, in parallel), stop early the students too weak to ever meet the
accuracy constraint, evaluate on validation, benchmark one at a time, record a nested run -> the front (table, plot,
hypervolume) -> the best recipe under the constraints, test-evaluated once, registered; the alias moves only if it
beats the current one (when no recipe meets the constraints, the nearest miss is test-evaluated and reported, not
registered).
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.common import base_tags, flow_run
from flows.mobile_bert import STUDY, fine_tune_teacher
from tasks.core import config, tracking, train
from tasks.core.orchestrate import call, stable_hash, work_dir
from tasks.measure import select
from tasks.search import follow_ups, recipes, study as studies, trials


def study_name(cfg) -> str:
    """Default study name: the case study, profile and sampler, and a hash of everything a trial's result depends
    on (space and how trials sample it, objectives, constraints, model, data, training, benchmark) and the output
    folder that holds its models — not the budget, so a study can grow."""
    s = cfg.search
    key = stable_hash(recipes.PARAMS_VERSION, s.space, s.objectives, s.seed_recipes, s.follow_ups > 0, s.startup_trials,
                      s.early_stop_margin, s.benchmark, s.seed, cfg.constraints, cfg.model, cfg.data, cfg.train,
                      cfg.evaluate, cfg.seed, str(Path(cfg.output_dir).resolve()), length=10)
    return f"{STUDY}/{cfg.profile}/{s.sampler}/{key}"


@flow(name="mobile-bert-search", log_prints=True)
def search_mobile_bert(profile: str = "quick", overrides: list[str] | None = None,
                       config_path: str | None = None) -> dict:
    logger = get_run_logger()
    cfg = config.load_config(STUDY, profile, overrides, config_path)  # validated once, here
    s, out = cfg.search, Path(cfg.output_dir)
    started = time.monotonic()

    with flow_run(cfg, STUDY, label="mobile-bert-search") as (parent, data_info):
        base = base_tags(STUDY, cfg.profile, data_info["fingerprint"])
        # 1. the teacher, shared with `effilm run mobile-bert` (same task, same folder)
        teacher = call(fine_tune_teacher, "teacher/fine-tune", model_cfg=cfg.model, train_cfg=cfg.train,
                       data=data_info, seed=cfg.seed,
                       work_dir=work_dir(out, "teacher", cfg.model, cfg.train, data_info["fingerprint"], cfg.seed,
                                         code=train))["model_dir"]

        # 2. the reference: the teacher on validation and on the search's benchmark
        ref = {**trials.evaluate_split(cfg, data_info, {"teacher-fp32": teacher}, "val")["teacher-fp32"]["metrics"],
               **trials.measure(cfg, data_info, teacher, "teacher-fp32")}
        trials.record(cfg, parent, base, "teacher-fp32", None, "baseline", ref, {"search.role": "reference"})
        limits = cfg.constraints.resolved(ref[trials.OBJECTIVES["latency"][0]], ref[trials.OBJECTIVES["size"][0]])

        # 3. the study: created, or resumed where a killed search stopped
        dirs, layers = {"teacher": teacher}, trials.teacher_layers(teacher)
        trials.check_space(s.space, layers)
        name = s.study_name or study_name(cfg)  # named by the constraints as written, not by this run's measurement
        storage = studies.storage_url(tracking.tracking_uri(), out, s.storage)
        study = studies.open_study(name, storage, s)
        with studies.heartbeat(study):  # while this process holds the study: alive to searches on other hosts
            if limits != cfg.constraints:  # relative limits (min_speedup, min_size_ratio), against the teacher as the
                # study first measured it: every trial of a study is judged by the same limits, wherever it resumes
                first = studies.first_limits(study, limits.model_dump())
                if first != limits.model_dump():
                    logger.warning("the teacher measures %.2f ms, %.1f MB now; the study keeps the limits of its "
                                   "first run: %s", ref[trials.OBJECTIVES["latency"][0]],
                                   ref[trials.OBJECTIVES["size"][0]], first)
                limits = type(limits)(**first)
                logger.info("constraints against the teacher: %s", limits.model_dump(exclude_none=True))
                cfg = cfg.model_copy(update={"constraints": limits})
            recovered = studies.recover_interrupted(study)
            trials.close_told_runs(study)  # a trial told just before its process was killed keeps its finished run
            if recovered:
                logger.warning("resuming study %s: trial(s) %s were interrupted and are queued again", name, recovered)
            for recipe in s.seed_recipes:
                study.enqueue_trial(recipes.to_params(recipe, s.space, layers), user_attrs={"seed_recipe": True},
                                    skip_if_exists=True)
            tracking.set_tags(parent, {"search.study": name, "search.storage": studies.redacted(storage),
                                       "search.sampler": s.sampler, "search.objectives": ",".join(s.objectives)})
            logger.info("study %s (%s, %s): %d of %s trials finished", name, s.sampler, studies.redacted(storage),
                        studies.spent(study, s.trials), s.trials or "unlimited (a time budget)")

            # 4. trials, a batch at a time: builds and evaluations in parallel, benchmarks one at a time
            context = {"data": data_info, "train": cfg.train, "seed": cfg.seed}
            deadline = started + 60 * s.time_budget_minutes if s.time_budget_minutes else None
            while (n := studies.to_ask(study, s.trials, deadline, cfg.execution.max_workers)) > 0:
                follow_ups.queue(study, cfg, layers, ref)  # a promising student again, the cheapest tail (asked first)
                trials.run_batch(cfg, parent, base, study, [study.ask() for _ in range(n)], dirs, layers, context,
                                 data_info, ref)

            # 5. the front, its hypervolume, and the best recipe under the constraints (chosen on validation)
            rows = trials.rows(study, ref, s.objectives)
            hv = studies.hypervolume([r for r in rows if r["state"] == "COMPLETE"], ref, s.objectives)
            choice = select.select(trials.as_candidates(rows), cfg.constraints.model_dump(), ref["val/accuracy"],
                                   cfg.select.objective)
            logger.info("front: %d of %d finished trials; hypervolume %.4f; %s", sum(r["front"] for r in rows),
                        len(rows), hv, choice.message)

            # 6. test-evaluated once: the chosen recipe (or, when none meets the constraints, the nearest miss), the
            #    hand-written (seed) recipes and the teacher
            summary = trials.test_summary(cfg, data_info, teacher, ref, rows, choice)
            summary["trials_wall_seconds"] = studies.wall_seconds(study)
            summary["constraints"] = cfg.constraints.model_dump(exclude_none=True)  # the absolute limits applied
            summary["follow_ups"] = follow_ups.report(rows)
            summary["repeats"] = len(studies.repeats(study))  # recipes the sampler drew again: told, not run or counted
            summary["settings"] = {"sampler": s.sampler, "seed": s.seed, "startup_trials": s.startup_trials,
                                   "follow_ups": s.follow_ups, "trials": s.trials,
                                   "time_budget_minutes": s.time_budget_minutes, "objectives": s.objectives,
                                   "select_objective": cfg.select.objective, "training_seed": cfg.seed}
            registered = None
            if choice.chosen is not None and cfg.select.register_model:
                registered = trials.register(cfg, choice.chosen, summary)
                logger.info("registered %s version %s; @%s %s", registered["name"], registered["version"],
                            cfg.select.alias, "moved to it" if registered["alias_moved"] else
                            f"stays ({registered['alias_reason']})")

            # 7. report
            report = trials.write_report(out / "search", name, rows, ref, hv, choice, summary, registered)
            for path in report.values():
                tracking.log_artifact(parent, path, "search")
            tracking.log_metrics(parent, {"search/hypervolume": hv, "search/trials_finished": len(rows),
                                          "search/trials_complete": sum(r["state"] == "COMPLETE" for r in rows),
                                          "search/trials_stopped_early": sum(r["state"] == "PRUNED" for r in rows),
                                          "search/follow_ups": len(summary["follow_ups"]),
                                          "search/repeats": summary["repeats"],
                                          "flow/seconds": round(time.monotonic() - started, 2),
                                          **{f"search/{part}_{k}": v for part in ("best", "nearest")
                                             for k, v in summary.get(part, {}).items() if isinstance(v, (int, float))}})
            create_markdown_artifact(key="mobile-bert-search", markdown=Path(report["markdown"]).read_text(),
                                     description="mobile-bert recipe search")
    return {"parent_run_id": parent, "study": name, "storage": studies.redacted(storage), "rows": rows,
            "hypervolume": hv, "selection": choice.message, "summary": summary, "registered": registered,
            "report": report}
