"""The pieces of a search trial: build recipes (shared prefixes once, in parallel), evaluate on validation,
benchmark one at a time, record the nested MLflow run, and the search report (front table, plot, hypervolume).

Every piece calls the same Prefect tasks a hand-written variant uses (``compress_task``, ``evaluate_task``,
``benchmark_task``), with the same work-folder keys, so a trial's folders and a variant's are interchangeable.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
from optuna.trial import TrialState

from tasks.compress import registry as compress
from tasks.core import tracking
from tasks.core.config import Variant
from tasks.core.orchestrate import call, call_many, work_dir
from tasks.measure import benchmark, evaluate
from tasks.search import study as studies
from tasks.search.recipes import Recipe, suggest, technique_of, variants
from tasks.search.study import OBJECTIVES

log = logging.getLogger(__name__)


def teacher_layers(model_dir: str) -> int:
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(model_dir).num_hidden_layers)


def check_space(space, teacher_layers_: int) -> None:
    """The space's layer counts against the teacher's depth (config validation cannot know it): exit 2 if wrong."""
    from tasks.core.config import ConfigError

    bad = [k for k in space.layers if k >= teacher_layers_]
    if bad:
        raise ConfigError("effilm search", "search.space.layers", f"{bad} layers cannot be kept of a "
                          f"{teacher_layers_}-layer teacher: use values from 1 to {teacher_layers_ - 1}")


def build_runner(execution):
    """Builds train, and training seeds torch's process-wide RNG: two builds in threads of one process draw from it in
    an order that depends on timing (seen: the same recipe at 0.9730 and 0.9775 validation accuracy). So builds run
    one at a time on the thread runner, and in parallel only in separate processes (``task_runner: dask``)."""
    return execution if execution.task_runner == "dask" else execution.model_copy(update={"max_workers": 1})


def build(cfg, chains: dict[int, list[Variant]], dirs: dict[str, str], context: dict,
          upto: int | None = None) -> dict[int, str]:
    """Build every chain's variants level by level: at each level the distinct (source, step) pairs of all chains
    run in parallel on the task runner; a variant two chains share is built once. ``dirs`` maps built variant names
    to folders (``teacher`` at least) and is extended in place. ``upto``: stop after that many levels.
    -> trial number -> error message, for the chains a step failed in (the other chains go on)."""
    failed: dict[int, str] = {}
    depth = max((len(c) for c in chains.values()), default=0)
    for level in range(depth if upto is None else min(upto, depth)):
        todo = {c[level].name: c[level] for n, c in chains.items()
                if len(c) > level and n not in failed and c[level].name not in dirs}
        calls = {}
        for name, v in todo.items():
            step, source_dir = v.steps[0], dirs[v.source]
            calls[name] = dict(model_dir=source_dir, step=step, context=context,
                               out_dir=work_dir(Path(cfg.output_dir), "variants", name, 0, source_dir, step, context,
                                                code=compress.module_of(step.technique)))
        done = call_many(compress.compress_task, calls, build_runner(cfg.execution), return_exceptions=True)
        for name, r in done.items():
            if isinstance(r, Exception):
                for n, c in chains.items():
                    if any(v.name == name for v in c):
                        failed.setdefault(n, f"{name} ({c[level].steps[0].technique}): {type(r).__name__}: {r}")
            else:
                dirs[name] = r["model_dir"]
    return failed


def evaluate_split(cfg, data_info: dict, dirs: dict[str, str], split: str,
                   return_exceptions: bool = False) -> dict[str, dict]:
    """Evaluate folders (label -> folder) on ``split`` in parallel: -> label -> {"metrics", "artifacts"} (or the
    exception, with ``return_exceptions``)."""
    out = Path(cfg.output_dir)
    return call_many(evaluate.evaluate_task, {
        label: dict(model_dir=d, data_info=data_info, eval_cfg=cfg.evaluate, variant=label, split=split,
                    work=work_dir(out, "eval", split, d, data_info["fingerprint"], code=evaluate))
        for label, d in dirs.items()}, cfg.execution, return_exceptions=return_exceptions)


def measure(cfg, data_info: dict, model_dir: str, label: str) -> dict:
    """The search's benchmark of one folder, in its own process, nothing else running: -> metrics."""
    bench_cfg = cfg.search.benchmark
    return call(benchmark.benchmark_task, f"{label}/benchmark", model_dir=model_dir,
                texts_path=data_info["paths"]["val"], cfg=bench_cfg,  # inputs only (padded): no test text needed
                work_dir=work_dir(Path(cfg.output_dir), "bench", "search", model_dir, data_info["fingerprint"],
                                  bench_cfg, code=benchmark))["metrics"]


def constraint_values(metrics: dict, constraints, teacher_val_accuracy: float, partial: bool = False) -> dict[str, float]:
    """Optuna constraint values (<= 0: satisfied) for the case study's constraints, on one scale: latency and size
    as the fraction over their limit, accuracy in points over the allowed drop (1 point weighs as a limit overshot
    by 100 %). The sampler ranks infeasible trials by their summed violation — in raw ms, MB and fractions of
    accuracy, a recipe 5 points short of the accuracy limit would have counted as 0.05, less than 0.1 ms over the
    latency one. ``partial``: a trial stopped after distillation has no latency or size yet; those are left out."""
    out = {}
    get = metrics.get if partial else metrics.__getitem__
    lat, size = get(OBJECTIVES["latency"][0]), get(OBJECTIVES["size"][0])
    if constraints.max_latency_ms is not None and lat is not None:
        out["latency"] = lat / constraints.max_latency_ms - 1
    if constraints.max_size_mb is not None and size is not None:
        out["size"] = size / constraints.max_size_mb - 1
    if constraints.max_accuracy_drop is not None:
        out["accuracy_points"] = 100 * (teacher_val_accuracy - metrics["val/accuracy"] - constraints.max_accuracy_drop)
    return out


def record(cfg, parent_run_id: str, base: dict, label: str, recipe: Recipe | None, technique: str,
           metrics: dict, extra_tags: dict, before_end=None) -> str:
    """One nested MLflow run (a trial, or the reference teacher), with the recipe as params and the usual metric
    keys. ``before_end(run_id)`` runs while the run is still open (the trial is told to the study there, so a kill
    can never leave a finished run beside a trial that will be run again)."""
    with tracking.run(cfg.experiment, label, {**base, "variant": label, "technique": technique, **extra_tags},
                      parent_run_id=parent_run_id) as run_id:
        if recipe is not None:
            tracking.log_params(run_id, {f"recipe.{k}": v for k, v in recipe.model_dump().items()})
        tracking.log_metrics(run_id, metrics)
        if before_end is not None:
            before_end(run_id)
    return run_id


def close_told_runs(study) -> list[int]:
    """Trials told to the study whose MLflow run their (killed) process never closed: it died between the tell and
    the run's end, and the next flow reaped the run as KILLED. Every metric was logged before the tell, so the run
    is closed FINISHED (tag ``effilm.closed_after_kill``). -> the trial numbers."""
    closed = []
    for t in studies.finished(study):
        run_id = t.user_attrs.get("run_id")
        if not run_id:
            continue
        run = tracking.get_run(run_id)
        if run.info.status == "KILLED" and "effilm.reaped" in run.data.tags:
            tracking.set_tags(run_id, {"effilm.closed_after_kill": "true"})
            tracking.end_run(run_id, "FINISHED")
            closed.append(t.number)
    return closed


def trial_label(number: int) -> str:
    return f"trial-{number:03d}"


def fail(study, t, error: str) -> None:
    """A trial that could not be built or measured: FAIL in the study, with the reason (the search goes on)."""
    log.warning("%s failed: %s", trial_label(t.number), error[:2000])
    if any(x.number == t.number and x.state.is_finished() for x in study.get_trials(deepcopy=False)):
        return  # told already (the failure came after its tell)
    t.set_user_attr("error", error[:2000])
    study.tell(t, state=TrialState.FAIL)


def run_batch(cfg, parent: str, base: dict, study, batch: list, dirs: dict, layers: int, context: dict,
              data_info: dict, ref: dict) -> None:
    """One batch of trials: ask each for a recipe, build the distilled students, stop the hopeless early, build the
    rest, evaluate on validation (in parallel), then benchmark, record and tell one trial at a time. A trial that
    fails (its build, evaluation or benchmark) ends FAIL with the reason and the others go on; the search stops when
    failures outnumber twice the trial budget."""
    s = cfg.search
    for t in batch:
        studies.claim(t)
    chosen = {t.number: suggest(t, s.space, layers) for t in batch}
    batch = tell_repeats(study, batch)
    chains = {n: variants(r, layers, s.benchmark.seq_len) for n, r in chosen.items()}
    broken = build(cfg, chains, dirs, context, upto=1)  # the distilled students first
    alive = stop_early(cfg, parent, base, study, [t for t in batch if t.number not in broken], chosen, chains, dirs,
                       data_info, ref)
    broken.update(build(cfg, {t.number: chains[t.number] for t in alive}, dirs, context))
    alive = [t for t in alive if t.number not in broken]
    finals = {t.number: dirs[chains[t.number][-1].name] for t in alive}
    by_dir = {d: trial_label(n) for n, d in finals.items()}  # one evaluation per folder (equal recipes share one)
    vals = evaluate_split(cfg, data_info, {label: d for d, label in by_dir.items()}, "val", return_exceptions=True)
    for t in alive:
        ev = vals[by_dir[finals[t.number]]]
        if isinstance(ev, Exception):
            broken[t.number] = f"validation: {type(ev).__name__}: {ev}"
            continue
        try:
            finish(cfg, parent, base, study, t, chosen[t.number], chains[t.number], finals[t.number], ev["metrics"],
                   data_info, ref)
        except Exception as exc:  # e.g. the benchmark of this recipe failed: this trial fails, the search goes on
            broken[t.number] = f"benchmark/record: {type(exc).__name__}: {exc}"
    for t in batch:
        if t.number in broken:
            fail(study, t, broken[t.number])
    errors = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if "error" in t.user_attrs]
    budget = s.trials or max(len(studies.finished(study)), s.startup_trials)  # no count: twice what has finished
    if len(errors) > 2 * budget:
        raise RuntimeError(f"{len(errors)} trials failed (more than twice the budget of {budget}); the last: "
                           f"{errors[-1].user_attrs['error'][:500]}")


REPEAT_ATTRS = ("label", "metrics", "constraints", "technique", "model_dir", "student_val_accuracy")


def tell_repeats(study, batch: list) -> list:
    """The sampler's trials whose recipe an earlier finished trial had (TPE draws one again now and then): told that
    trial's objectives, constraints and state, marked ``duplicate_of`` — not built, measured or recorded again, and
    not counted against the budget (``studies.spent``). Queued trials (seeds, follow-ups, retries) always run.
    -> the rest of the batch."""
    earlier: dict[str, object] = {}
    for f in studies.finished(study):
        earlier.setdefault(json.dumps(f.params, sort_keys=True), f)
    rest = []
    for t in batch:
        f = earlier.get(json.dumps(t.params, sort_keys=True))
        if f is None or {"seed_recipe", "follow_up_of", "retry_of"} & set(t.user_attrs):
            rest.append(t)
            continue
        for key in REPEAT_ATTRS:
            if key in f.user_attrs:
                t.set_user_attr(key, f.user_attrs[key])
        t.set_user_attr("duplicate_of", f.number)
        for key, value in (f.user_attrs.get("constraints") or {}).items():
            t.set_constraint(key, value)
        log.info("%s repeats %s (%s): told its values, not run again", trial_label(t.number), trial_label(f.number),
                 f.user_attrs.get("label"))
        study.tell(t, f.values if f.state == TrialState.COMPLETE else None, state=f.state)
    return rest


def stop_early(cfg, parent: str, base: dict, study, batch: list, chosen: dict, chains: dict, dirs: dict,
               data_info: dict, ref: dict) -> list:
    """Evaluate each trial's distilled student on validation; a student below ``teacher - max_accuracy_drop -
    early_stop_margin`` cannot become a feasible recipe (pruning, trimming and int8 only remove capacity; the margin
    covers the recovery fine-tune), so its trial ends PRUNED before the costlier steps. -> the trials that go on."""
    margin, drop = cfg.search.early_stop_margin, cfg.constraints.max_accuracy_drop
    if margin is None or drop is None:
        return batch
    students = evaluate_split(cfg, data_info, {chains[t.number][0].name: dirs[chains[t.number][0].name]
                                               for t in batch}, "val")
    floor = ref["val/accuracy"] - drop - margin
    alive = []
    for t in batch:
        acc = students[chains[t.number][0].name]["metrics"]["val/accuracy"]
        if acc >= floor:
            alive.append(t)
            continue
        recipe = chosen[t.number]

        def tell(run_id, t=t, recipe=recipe, acc=acc):
            cons = constraint_values({"val/accuracy": acc}, cfg.constraints, ref["val/accuracy"], partial=True)
            for key, value in {"label": recipe.label(), "run_id": run_id, "student_val_accuracy": acc,
                               "constraints": cons}.items():
                t.set_user_attr(key, value)
            for key, value in cons.items():  # the sampler ranks it among the infeasible by how far it fell short
                t.set_constraint(key, value)
            study.tell(t, state=TrialState.PRUNED)

        log.info("%s %s: stopped after distillation, the student's val accuracy %.4f is below %.4f (teacher %.4f - "
                 "max_accuracy_drop - early_stop_margin)", trial_label(t.number), recipe.label(), acc, floor,
                 ref["val/accuracy"])
        record(cfg, parent, base, trial_label(t.number), recipe, technique_of(chains[t.number][:1]),
               {"val/student_accuracy": acc, "search/floor": floor},
               {"search.trial": t.number, "search.state": "PRUNED", "search.stopped_after": "distill",
                "search.recipe": recipe.label()}, before_end=tell)
    return alive


def finish(cfg, parent: str, base: dict, study, t, recipe: Recipe, chain: list[Variant], model_dir: str,
           val_metrics: dict, data_info: dict, ref: dict) -> dict:
    """Benchmark a built trial (alone on the machine), record its run and tell the study its objectives."""
    label = trial_label(t.number)
    metrics = {**val_metrics, **measure(cfg, data_info, model_dir, label)}
    cons = constraint_values(metrics, cfg.constraints, ref["val/accuracy"])
    feasible = all(v <= 0 for v in cons.values())
    keep = ("val/accuracy", "val/macro_f1", "bench/latency_ms_p50_b1_t1", "bench/latency_ms_p95_b1_t1",
            "size/disk_mb", "size/params", "bench/runtime_rss_mb", "bench/runtime_rss_includes_torch",
            "bench/peak_rss_mb")

    def tell(run_id):
        for key, value in {"label": recipe.label(), "run_id": run_id, "model_dir": model_dir,
                           "technique": technique_of(chain), "constraints": cons,
                           "metrics": {k: metrics[k] for k in keep if k in metrics}}.items():
            t.set_user_attr(key, value)
        for key, value in cons.items():
            t.set_constraint(key, value)
        study.tell(t, [metrics[OBJECTIVES[o][0]] for o in cfg.search.objectives])

    record(cfg, parent, base, label, recipe, technique_of(chain), metrics,
           {"search.trial": t.number, "search.state": "COMPLETE", "search.recipe": recipe.label(),
            "search.feasible": str(feasible).lower(),
            "search.seed_recipe": str(bool(t.user_attrs.get("seed_recipe"))).lower(),
            **({"search.follow_up_of": t.user_attrs["follow_up_of"]} if "follow_up_of" in t.user_attrs else {})},
           before_end=tell)
    log.info("%s %s: val accuracy %.4f, p50 %.2f ms, %.1f MB, runtime RSS %.0f MB%s", label, recipe.label(),
             metrics["val/accuracy"], metrics[OBJECTIVES["latency"][0]], metrics[OBJECTIVES["size"][0]],
             metrics[OBJECTIVES["runtime_rss"][0]], "" if feasible else " (outside the constraints)")
    return metrics


def rows(study, ref: dict, objectives: list[str]) -> list[dict]:
    """Every finished trial of the study (this run's and earlier, resumed ones) as a row; ``front``: not dominated
    by another completed trial on the objectives."""
    out = []
    for t in studies.finished(study):
        a = t.user_attrs
        row = {"trial": t.number, "recipe": a.get("label"), "state": t.state.name,
               "seed_recipe": bool(a.get("seed_recipe")), "follow_up_of": a.get("follow_up_of"),
               "run_id": a.get("run_id"), "model_dir": a.get("model_dir"),
               "technique": a.get("technique"), "params": dict(t.params), "front": False, "feasible": False}
        if t.state == TrialState.COMPLETE:
            row.update(a["metrics"])
            row["feasible"] = all(v <= 0 for v in a.get("constraints", {}).values())
        else:
            row["val/student_accuracy"] = a.get("student_val_accuracy")
        out.append(row)
    complete = [r for r in out if r["state"] == "COMPLETE"]
    for r in studies.non_dominated(complete, ref, objectives):
        r["front"] = True
    return out


def as_candidates(rows_: list[dict]) -> list[dict]:
    """Completed trials in the shape ``select.select`` reads (its accuracy is the validation accuracy here)."""
    return [{**r, "variant": trial_label(r["trial"]), "eval/accuracy": r["val/accuracy"]}
            for r in rows_ if r["state"] == "COMPLETE"]


def _figures(row: dict, ref: dict, test_acc: float, teacher_test_acc: float) -> dict:
    lat, size, rss = (OBJECTIVES[o][0] for o in ("latency", "size", "runtime_rss"))
    return {"trial": row["trial"], "run_id": row["run_id"], "recipe": row["recipe"], "test_accuracy": test_acc,
            "val_accuracy": row["val/accuracy"], "latency_ms": row[lat], "size_mb": row[size],
            "runtime_rss_mb": row.get(rss), "speedup": round(ref[lat] / row[lat], 2),
            "size_ratio": round(ref[size] / row[size], 2),
            "accuracy_drop_points": round(100 * (teacher_test_acc - test_acc), 2)}


def test_summary(cfg, data_info: dict, teacher_dir: str, ref: dict, rows_: list[dict], choice) -> dict:
    """The one test evaluation: the chosen recipe — or, when no trial meets the constraints, the nearest miss (how
    far a search came is a result too; it is not registered) — the hand-written (seed) recipes and the teacher; their
    speedup, size ratio and accuracy drop against the fp32 teacher (latency and size from the search's benchmark)."""
    seeds = [r for r in rows_ if r["seed_recipe"] and r["state"] == "COMPLETE"]
    by_label = {trial_label(r["trial"]): r for r in rows_ if r["state"] == "COMPLETE"}
    picked = [choice.chosen] if choice.chosen is not None else [by_label[n] for n in choice.nearest[:1]]
    targets = {"teacher-fp32": teacher_dir, **{trial_label(r["trial"]): r["model_dir"] for r in [*picked, *seeds]}}
    tests = evaluate_split(cfg, data_info, targets, "test")
    for r in [*picked, *seeds]:
        tracking.log_metrics(r["run_id"], tests[trial_label(r["trial"])]["metrics"])
    teacher_acc = tests["teacher-fp32"]["metrics"]["eval/accuracy"]
    lat, size, rss = (OBJECTIVES[o][0] for o in ("latency", "size", "runtime_rss"))
    summary = {"teacher": {"test_accuracy": round(teacher_acc, 4), "val_accuracy": round(ref["val/accuracy"], 4),
                           "latency_ms": ref[lat], "size_mb": ref[size], "runtime_rss_mb": ref.get(rss)},
               "hand": {r["recipe"]: _figures(r, ref, tests[trial_label(r["trial"])]["metrics"]["eval/accuracy"],
                                              teacher_acc) for r in seeds}}
    if picked:
        best = _figures(picked[0], ref, tests[trial_label(picked[0]["trial"])]["metrics"]["eval/accuracy"],
                        teacher_acc)
        best["goal_20x_10x_1pt"] = best["speedup"] >= 20 and best["size_ratio"] >= 10 and \
            best["accuracy_drop_points"] <= 1
        best["dominates_hand"] = {name: best["latency_ms"] < h["latency_ms"] and best["size_mb"] < h["size_mb"]
                                  and best["test_accuracy"] >= h["test_accuracy"] for name, h in summary["hand"].items()}
        if choice.chosen is not None:
            summary["best"] = best
        else:  # validation misses (ms, MB, points over each limit), as the selection message gives them
            summary["nearest"] = {**best, "validation_misses": choice.misses[trial_label(picked[0]["trial"])]}
    return summary


def register(cfg, chosen: dict, summary: dict) -> dict:
    """Register the chosen recipe's model as a new version; the alias moves to it only if it meets the constraints
    on test and beats the alias's current version on the selection objective."""
    from tasks.measure import serving

    best, name, alias = summary["best"], cfg.select.registered_model, cfg.select.alias
    previous = tracking.get_run(chosen["run_id"]).data.tags.get("registered_version")
    if previous:  # a re-run chose the same trial: its version exists already
        return {"name": name, "version": previous, "alias": alias, "alias_moved": False,
                "alias_reason": f"trial already registered as version {previous}"}
    tracking.log_model(chosen["run_id"], chosen["model_dir"], **serving.pyfunc_spec(chosen["model_dir"]))
    version = tracking.register_model(chosen["run_id"], name, None, {
        "variant": trial_label(chosen["trial"]), "case_study": "mobile-bert", "source": "search",
        "recipe": chosen["recipe"]}, description="effilm: best recipe of a search under the case study's constraints")
    limit = cfg.constraints.max_accuracy_drop
    current = tracking.alias_run(name, alias)
    key, better = {"latency": (OBJECTIVES["latency"][0], lambda a, b: a < b),
                   "size": (OBJECTIVES["size"][0], lambda a, b: a < b),
                   "accuracy": ("eval/accuracy", lambda a, b: a > b)}[cfg.select.objective]
    ours = {OBJECTIVES["latency"][0]: best["latency_ms"], OBJECTIVES["size"][0]: best["size_mb"],
            "eval/accuracy": best["test_accuracy"]}[key]
    if limit is not None and best["accuracy_drop_points"] > 100 * limit:
        moved, reason = False, f"it loses {best['accuracy_drop_points']} points on test (limit {100 * limit:g})"
    elif current is None:
        moved, reason = True, "no current version"
    elif key not in current.data.metrics:
        moved, reason = True, f"the current version has no {key}"
    elif better(ours, current.data.metrics[key]):
        moved, reason = True, f"{key} {ours} beats {current.data.metrics[key]}"
    else:
        moved, reason = False, f"{key} {ours} does not beat the current version's {current.data.metrics[key]}"
    if moved:
        tracking.set_alias(name, alias, version)
    tracking.set_tags(chosen["run_id"], {"registered_version": version, "selected": "true"})
    return {"name": name, "version": version, "alias": alias, "alias_moved": moved, "alias_reason": reason}


def write_report(folder: Path, name: str, rows_: list[dict], ref: dict, hv: float, choice, summary: dict,
                 registered: dict | None) -> dict[str, str]:
    """front.md (tables + selection + summary), trials.csv, front.png and summary.json in ``folder/<study>``."""
    import json

    out = Path(folder) / name.replace("/", "__")
    out.mkdir(parents=True, exist_ok=True)
    df = table(rows_)
    df.to_csv(out / "trials.csv", index=False)
    chosen = choice.chosen["trial"] if choice.chosen is not None else None
    plot = plot_front(rows_, ref, out / "front.png", chosen, f"{name}: {len(rows_)} trials",
                      (summary.get("nearest") or {}).get("trial"))
    front = df[df["front"]] if len(df) and "front" in df else df
    md = [f"# Recipe search `{name}`", "",
          f"{len(rows_)} finished trials ({sum(r['state'] == 'PRUNED' for r in rows_)} stopped early); "
          f"hypervolume {hv:.4f} (objectives relative to the teacher; reference: 10 points of accuracy drop, the "
          "teacher's latency, size and RSS).", "",
          f"Teacher: validation accuracy {ref['val/accuracy']:.4f}, p50 {ref[OBJECTIVES['latency'][0]]:.2f} ms, "
          f"{ref[OBJECTIVES['size'][0]]:.1f} MB.", "", f"**Selection (validation)**: {choice.message}", "",
          "## Pareto front", "", front.to_markdown(index=False) if len(front) else "(empty)", "",
          "## Every trial", "", df.to_markdown(index=False) if len(df) else "(none)", "",
          "## Test (evaluated once: the chosen recipe or, when none meets the constraints, the nearest miss; the "
          "hand-written recipes; the teacher)", "",
          "```json", json.dumps(summary, indent=2), "```", ""]
    if registered:
        md.append(f"Registered {registered['name']} version {registered['version']}; @{registered['alias']} "
                  f"{'moved' if registered['alias_moved'] else 'did not move'} ({registered['alias_reason']}).")
    md.append(f"\n![front]({Path(plot).name})\n")
    (out / "front.md").write_text("\n".join(md))
    (out / "summary.json").write_text(json.dumps({"study": name, "hypervolume": hv, "summary": summary,
                                                  "registered": registered}, indent=2, default=str))
    return {"markdown": str(out / "front.md"), "csv": str(out / "trials.csv"), "plot": plot,
            "json": str(out / "summary.json")}


COLUMNS = ["trial", "recipe", "state", "val/accuracy", "bench/latency_ms_p50_b1_t1", "size/disk_mb",
           "bench/runtime_rss_mb", "feasible", "front", "seed_recipe", "follow_up_of"]


def table(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    if "follow_up_of" in df:  # the trial a follow-up re-tried, blank for the sampler's own
        df["follow_up_of"] = df["follow_up_of"].map(lambda v: "" if v is None or v != v else int(v))
    return df[[c for c in COLUMNS if c in df.columns]].sort_values("trial") if len(df) else df


def plot_front(rows: list[dict], teacher: dict, path: str | Path, chosen: int | None, title: str,
               nearest: int | None = None) -> str:
    """Latency vs validation accuracy of every finished trial (marker area ~ size on disk); the front joined, seed
    (hand-written) recipes as stars, the teacher as a cross, the chosen recipe circled (or, when none met the
    constraints, the nearest miss in a dashed circle)."""
    from matplotlib.figure import Figure

    lat, acc, size = OBJECTIVES["latency"][0], "val/accuracy", OBJECTIVES["size"][0]
    fig = Figure(figsize=(8, 5.5))
    ax = fig.subplots()
    done = [r for r in rows if r.get("state") == "COMPLETE"]
    for group, style in (([r for r in done if not r["front"]], dict(c="0.65", label="trial")),
                         ([r for r in done if r["front"]], dict(c="tab:blue", label="Pareto front"))):
        if group:
            ax.scatter([r[lat] for r in group], [r[acc] for r in group], s=[8 + 3 * r[size] for r in group],
                       alpha=0.75, **style)
    front = sorted((r for r in done if r["front"]), key=lambda r: r[lat])
    if front:
        ax.plot([r[lat] for r in front], [r[acc] for r in front], c="tab:blue", lw=0.8, alpha=0.6)
    seeds = [r for r in done if r.get("seed_recipe")]
    if seeds:
        ax.scatter([r[lat] for r in seeds], [r[acc] for r in seeds], marker="*", s=220, c="tab:orange",
                   edgecolors="k", label="hand-written recipe", zorder=3)
    ax.scatter([teacher[lat]], [teacher[acc]], marker="X", s=120, c="k", label="teacher (fp32)", zorder=3)
    for r in done:
        if r["trial"] == chosen:
            ax.scatter([r[lat]], [r[acc]], s=400, facecolors="none", edgecolors="tab:red", lw=2,
                       label=f"chosen: trial {chosen}", zorder=4)
        elif chosen is None and r["trial"] == nearest:
            ax.scatter([r[lat]], [r[acc]], s=400, facecolors="none", edgecolors="tab:red", lw=1.5, linestyles="--",
                       label=f"nearest miss: trial {nearest} (outside the constraints)", zorder=4)
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency, batch 1, 1 thread (ms, log scale)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return str(path)
