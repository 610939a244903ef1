"""`effilm search`: recipes as variant chains, the study's storage and resume, hypervolume, and a real 3-trial search
(Prefect engine, MLflow sqlite store, Optuna study, real runtimes) on a tiny model, end to end."""

from __future__ import annotations

import json
import sqlite3
import time

import optuna
import pandas as pd
import pytest
from mlflow import MlflowClient

from flows.cli import main
from tasks.core.config import ConfigError, SearchConfig, load_config
from tasks.search import recipes, study as studies, trials


def recipe(**kw) -> recipes.Recipe:
    base = dict(layers=3, layer_pick="spread", temperature=2.0, alpha=0.5, hidden_mse=1.0, heads_fraction=0.25,
                ffn_fraction=0.5, recovery_epochs=0.5, vocab_trim=True, runtime="onnx-int8")
    return recipes.Recipe(**{**base, **kw})


def test_kept_layers():
    assert recipes.kept_layers(3, "spread", 6) == [0, 2, 4]  # the hand recipe's every_other
    assert recipes.kept_layers(2, "spread", 6) == [0, 3]
    assert recipes.kept_layers(2, "bottom", 6) == [0, 1]
    assert recipes.kept_layers(2, "top", 6) == [4, 5]
    with pytest.raises(ValueError, match="search.space.layers: 6 layers cannot be kept of a 6-layer teacher"):
        recipes.kept_layers(6, "spread", 6)


def test_the_sampler_sees_each_distinct_model_once():
    space = SearchConfig().space.model_copy(update={"layers": [1, 2, 3], "layer_pick": ["spread", "bottom", "top"],
                                                    "vocab_trim": [True, False], "vocab_min_count": [1, 3]})
    dims = recipes.dimensions(space, 6)
    # 1 layer spread keeps layer 0, as bottom does: one student, under bottom's name
    assert dims["student"] == ["1L-bottom", "1L-top", "2L-bottom", "2L-top", "2L-spread", "3L-bottom", "3L-top",
                               "3L-spread"]
    assert dims["vocab"] == ["off", ">=1", ">=3"]  # trimmed or not, and how far: one choice
    assert not set(recipes.GROUPED) & set(dims) and set(dims) - {"student", "vocab"} < set(SearchConfig().space.model_fields)
    # a recipe and its params, both ways; a seed naming 1 layer spread is the bottom student
    r = recipe(layers=1, layer_pick="top", vocab_trim=True, vocab_min_count=3)
    params = recipes.to_params(r.model_dump(), space, 6)
    assert params["student"] == "1L-top" and params["vocab"] == ">=3" and recipes.from_params(params, space) == r
    assert recipes.to_params(recipe(layers=1, layer_pick="spread").model_dump(), space, 6)["student"] == "1L-bottom"
    off = recipes.from_params({**params, "vocab": "off"}, space)
    assert not off.vocab_trim and off.vocab_min_count == 1 and "vocab" not in off.label()
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    assert recipes.suggest(trial, space, 6).layers in (1, 2, 3) and set(trial.params) == set(dims)


def test_recipes_that_share_a_prefix_share_its_variants():
    a = recipes.variants(recipe(), 6, 128)
    b = recipes.variants(recipe(runtime="torch-int8"), 6, 128)
    c = recipes.variants(recipe(temperature=4.0), 6, 128)
    assert [v.steps[0].technique for v in a] == ["distill", "prune_structured", "vocab_trim", "export"]
    assert [v.name for v in a[:3]] == [v.name for v in b[:3]] and a[3].name != b[3].name
    assert b[3].steps[0].technique == "quantize"
    assert all(x.name != y.name for x, y in zip(a, c))  # a different student: nothing downstream is shared
    longer = recipes.variants(recipe(distill_epochs=3.0), 6, 128)
    assert a[0].steps[0].finetune.epochs is None and longer[0].steps[0].finetune.epochs == 3.0  # None: train.epochs
    assert longer[0].name != a[0].name and "e3 /" in recipe(distill_epochs=3.0).label()
    faster = recipes.variants(recipe(distill_learning_rate=5e-4), 6, 128)
    assert a[0].steps[0].finetune.learning_rate is None and faster[0].steps[0].finetune.learning_rate == 5e-4
    assert faster[0].steps[0].finetune.epochs is None and faster[0].name not in {a[0].name, longer[0].name}
    assert "h1 lr0.0005 /" in recipe(distill_learning_rate=5e-4).label()
    assert a[0].steps[0].keep == [0, 2, 4] and a[1].source == a[0].name
    plain = recipes.variants(recipe(heads_fraction=0.0, ffn_fraction=0.0, vocab_trim=False, runtime="torch-fp32"), 6, 128)
    assert [v.steps[0].technique for v in plain] == ["distill"]


def test_seed_recipe_outside_the_space_names_the_key():
    with pytest.raises(ConfigError) as e:
        load_config("mobile-bert", "quick", ["search.space.layers=[2]"])
    assert e.value.key == "search.seed_recipes"
    assert "layers=3 is not one of space.layers [2]" in e.value.message
    with pytest.raises(ConfigError) as e:
        load_config("mobile-bert", "quick", ["search.objectives=[latency, size]"])
    assert e.value.key == "search.objectives" and "accuracy included" in e.value.message
    # quick: train.epochs 1, so null and 1 are the same student: listed once (a plain run setting the train section's
    # value, which the case study's space lists beside null, is not an error)
    assert load_config("mobile-bert", "quick", ["search.space.distill_epochs=[null, 1, 3]"]).search.space.distill_epochs \
        == [None, 3.0]
    same = load_config("mobile-bert", "quick", ["train.learning_rate=5e-4"]).search
    assert same.space.distill_learning_rate == [None] and same.seed_recipes[0]["distill_learning_rate"] is None
    hand = load_config("mobile-bert", "quick").search.seed_recipes[0]
    seeded = {**hand, "distill_learning_rate": 0.0005}  # a seed naming the train section's value gets its null
    same = load_config("mobile-bert", "quick", ["train.learning_rate=5e-4", f"search.seed_recipes=[{json.dumps(seeded)}]"]).search
    assert same.seed_recipes[0]["distill_learning_rate"] is None and same.seed_recipes[0]["layers"] == hand["layers"]
    # a seed recipe is one fixed recipe: a key it leaves out is taken from a one-value space, else it is an error
    seed = ("search.seed_recipes=[{layers: 2, layer_pick: spread, temperature: 2.0, alpha: 0.5, hidden_mse: 1.0, "
            "distill_epochs: null, distill_learning_rate: null}]")
    with pytest.raises(ConfigError) as e:
        load_config("mobile-bert", "quick", [seed])
    assert e.value.key == "search.seed_recipes" and "does not set heads_fraction" in e.value.message
    fixed = [f"search.space.{k}=[{v}]" for k, v in (("heads_fraction", 0.0), ("ffn_fraction", 0.5), ("vocab_trim", "true"),
                                                      ("vocab_min_count", 1), ("runtime", "onnx-int8"))]
    got = load_config("mobile-bert", "quick", [seed, *fixed]).search.seed_recipes[0]
    assert got["distill_learning_rate"] is None and got["ffn_fraction"] == 0.5 and got["runtime"] == "onnx-int8"


def test_bad_time_budget_exits_2(capsys):
    assert main(["search", "mobile-bert", "--time-budget", "soon"]) == 2
    assert "--time-budget: not a duration: 'soon' (use e.g. 2h, 90m, 45s)" in capsys.readouterr().err


def test_a_time_budget_alone_lifts_the_trial_count():
    from argparse import Namespace

    from flows.cli import search_overrides

    def search(**flags):
        a = Namespace(**{"set": [], "trials": None, "time_budget": None, "sampler": None, **flags})
        return load_config("mobile-bert", "quick", search_overrides(a)).search

    assert (search().trials, search().time_budget_minutes) == (24, None)
    assert (search(time_budget="2h").trials, search(time_budget="2h").time_budget_minutes) == (None, 120.0)
    assert search(time_budget="90m", trials=5).trials == 5  # both: whichever comes first
    assert search(time_budget="1h", set=["search.trials=7"]).trials == 7
    with pytest.raises(ConfigError) as e:  # no count and no time: a search that never ends
        load_config("mobile-bert", "quick", ["search.trials=null"])
    assert "needs time_budget_minutes" in e.value.message


def test_storage_lives_beside_the_mlflow_store(tmp_path):
    assert studies.storage_url(f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "out") == \
        f"sqlite:///{tmp_path}/mlflow.optuna.db"
    assert studies.storage_url("http://mlflow.team:5000", tmp_path / "out") == \
        f"sqlite:///{(tmp_path / 'out').resolve()}/search.optuna.db"
    assert studies.storage_url("http://x", tmp_path, explicit="postgresql://u@h/db") == "postgresql://u@h/db"


def test_hypervolume_rewards_a_dominating_front():
    teacher = {"val/accuracy": 0.97, "bench/latency_ms_p50_b1_t1": 40.0, "size/disk_mb": 90.0}
    objectives = ["accuracy", "latency", "size"]

    def row(acc, ms, mb):
        return {"val/accuracy": acc, "bench/latency_ms_p50_b1_t1": ms, "size/disk_mb": mb}

    weak = [row(0.95, 20.0, 45.0)]
    strong = [row(0.96, 10.0, 30.0), row(0.95, 5.0, 20.0)]
    hv_weak, hv_strong = (studies.hypervolume(r, teacher, objectives) for r in (weak, strong))
    assert 0 < hv_weak < hv_strong
    # (10 - 2 points) * (1 - 0.5) * (1 - 0.5): the exact box of one point against the reference
    assert hv_weak == pytest.approx(8 * 0.5 * 0.5)
    assert studies.hypervolume([row(0.80, 1.0, 1.0), row(0.97, 50.0, 10.0)], teacher, objectives) == 0.0
    assert [r["bench/latency_ms_p50_b1_t1"] for r in studies.non_dominated(weak + strong, teacher, objectives)] == \
        [10.0, 5.0]


def test_constraint_violations_share_one_scale_and_a_stopped_trial_ranks_by_its_shortfall():
    from optuna.samplers._tpe.sampler import _split_trials  # how TPE ranks trials (optuna<5.1 is pinned)
    from optuna.trial import TrialState, create_trial

    from tasks.core.config import Constraints
    from tasks.search.trials import constraint_values

    goal = Constraints(max_latency_ms=2.0, max_size_mb=10.0, max_accuracy_drop=0.01)
    near = constraint_values({"val/accuracy": 0.95, "bench/latency_ms_p50_b1_t1": 2.2, "size/disk_mb": 5.0}, goal, 0.96)
    assert near == pytest.approx({"latency": 0.1, "size": -0.5, "accuracy_points": 0.0})
    stopped = constraint_values({"val/accuracy": 0.40}, goal, 0.96, partial=True)  # stopped: accuracy alone
    assert stopped == pytest.approx({"accuracy_points": 55.0})
    study = optuna.create_study(directions=["maximize", "minimize"])
    far = constraint_values({"val/accuracy": 0.95, "bench/latency_ms_p50_b1_t1": 6.0, "size/disk_mb": 12.0}, goal, 0.96)
    made = [create_trial(state=TrialState.COMPLETE, values=[0.95, 2.2], system_attrs={}),
            create_trial(state=TrialState.PRUNED, system_attrs={}),
            create_trial(state=TrialState.COMPLETE, values=[0.95, 6.0], system_attrs={})]
    for t, cons in zip(made, (near, stopped, far)):
        t.system_attrs.update({f"constraints:{k}": v for k, v in cons.items()})
        study.add_trial(t)
    below, _ = _split_trials(study, study.get_trials(), n_below=2)
    # the near miss and the 3x-too-slow recipe guide the sampler; the hopeless student does not
    assert sorted(t.number for t in below) == [0, 2]
    assert study.trials[1].constraints == pytest.approx({"accuracy_points": 55.0})


def test_an_interrupted_trial_is_queued_again_not_lost(tmp_path):
    import socket
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    cfg = SearchConfig(sampler="random")
    study = studies.open_study("s", storage, cfg)
    done = study.ask()
    recipes.suggest(done, cfg.space, 6)
    study.tell(done, [0.9, 3.0, 10.0, 100.0])
    study.enqueue_trial({"student": "3L-spread", "runtime": "onnx-int8"}, user_attrs={"seed_recipe": True})
    interrupted = study.ask()  # the enqueued seed recipe
    r = recipes.suggest(interrupted, cfg.space, 6)
    interrupted.set_user_attr("owner", {"host": socket.gethostname(), "pid": dead.pid})  # ... its process died
    live = study.ask()
    studies.claim(live)  # this process: alive, so not recovered
    elsewhere = study.ask()  # a shared study's searcher on another host, its heartbeat fresh
    elsewhere.set_user_attr("owner", {"host": "another-host", "pid": dead.pid})
    study.set_user_attr(f"heartbeat:another-host:{dead.pid}", time.time() - 30)
    gone = study.ask()  # ... and one on a third host that went silent 10 minutes ago (killed): recovered
    gone.set_user_attr("owner", {"host": "third-host", "pid": 7})
    study.set_user_attr("heartbeat:third-host:7", time.time() - 600)
    again = studies.open_study("s", storage, cfg)
    assert studies.recover_interrupted(again) == [interrupted.number, gone.number]
    states = {t.number: t.state for t in again.get_trials(deepcopy=False)}
    assert states[interrupted.number] == states[gone.number] == optuna.trial.TrialState.FAIL
    assert states[live.number] == states[elsewhere.number] == optuna.trial.TrialState.RUNNING
    retry = again.ask()
    assert recipes.suggest(retry, cfg.space, 6) == r and r.layers == 3 and r.runtime == "onnx-int8"
    assert retry.user_attrs["retry_of"] == interrupted.number and retry.user_attrs["seed_recipe"]
    assert len(studies.finished(again)) == 1


def test_a_study_searched_on_another_live_host_is_refused_and_a_heartbeat_is_recorded(tmp_path):
    storage, cfg = f"sqlite:///{tmp_path / 'study.db'}", SearchConfig(sampler="random")
    study = studies.open_study("s", storage, cfg)
    with studies.heartbeat(study, every=0.05):  # this process beats while its trials run
        first = optuna.load_study(study_name="s", storage=storage).user_attrs
        time.sleep(0.3)
    key = next(k for k in first if k.startswith("heartbeat:"))
    assert optuna.load_study(study_name="s", storage=storage).user_attrs[key] > first[key]
    study.set_user_attr("owner", {"host": "another-host", "pid": 11})  # a searcher elsewhere, beating 20 s ago
    study.set_user_attr("heartbeat:another-host:11", time.time() - 20)
    with pytest.raises(ConfigError, match="being searched by process 11 on host another-host"):
        studies.open_study("s", storage, cfg)
    study.set_user_attr("heartbeat:another-host:11", time.time() - 3600)  # silent an hour: killed, take over
    assert studies.open_study("s", storage, cfg).user_attrs["owner"]["host"] != "another-host"


def test_a_study_of_an_earlier_params_version_is_not_resumed(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    old = optuna.create_study(study_name="old", storage=storage, directions=["maximize", "minimize"])
    old.enqueue_trial({"layers": 3, "layer_pick": "spread"})  # params per space key, as before `student` / `vocab`
    old.ask()
    with pytest.raises(ConfigError) as e:
        studies.open_study("old", storage, SearchConfig(objectives=["accuracy", "latency"]))
    assert e.value.key == "search.study_name" and "params version 1" in e.value.message
    new = studies.open_study("new", storage, SearchConfig(objectives=["accuracy", "latency"]))
    new.ask()
    assert studies.open_study("new", storage, SearchConfig(objectives=["accuracy", "latency"])).user_attrs[
        "params_version"] == recipes.PARAMS_VERSION  # this version's own study resumes


def test_a_study_keeps_the_limits_of_its_first_run(tmp_path):
    """Relative constraints resolve against the teacher as measured: a resumed study whose teacher was measured
    again keeps the absolute limits it began with (stored in the study), so all its trials are judged alike."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    cfg = SearchConfig(objectives=["accuracy", "latency"])
    first = {"max_latency_ms": 1.95, "max_size_mb": 9.09, "max_accuracy_drop": 0.01}
    assert studies.first_limits(studies.open_study("s", storage, cfg), first) == first
    resumed = studies.open_study("s", storage, cfg)
    assert studies.first_limits(resumed, {**first, "max_latency_ms": 2.2}) == first
    assert studies.first_limits(studies.open_study("other", storage, cfg), {**first, "max_latency_ms": 2.2}) == \
        {**first, "max_latency_ms": 2.2}


def test_a_promising_student_is_followed_up_with_the_cheapest_tail():
    """A trial within the accuracy limit that misses latency or size is re-tried with the strongest vocabulary trim
    and the best trial's runtime; not a trial that misses latency in that runtime already, not one below the
    accuracy limit; at most `follow_ups`, one source once, never a recipe the study has seen."""
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState, create_trial

    from tasks.search import follow_ups

    cfg = load_config("mobile-bert", "quick", ["constraints.max_latency_ms=1.0", "constraints.max_size_mb=9.0",
                                               "constraints.max_accuracy_drop=0.01", "search.startup_trials=4",
                                               "search.follow_ups=2"])
    s = cfg.search
    dims = recipes.dimensions(s.space, 6)
    ref = {"val/accuracy": 0.98, "bench/latency_ms_p50_b1_t1": 23.0, "size/disk_mb": 90.9, "bench/runtime_rss_mb": 620.0}
    study = optuna.create_study(directions=["maximize", "minimize", "minimize", "minimize"])

    def add(student, runtime, vocab, acc, ms, mb, **extra):
        params = {**{k: v[0] for k, v in dims.items()}, "student": student, "runtime": runtime, "vocab": vocab, **extra}
        metrics = {"val/accuracy": acc, "bench/latency_ms_p50_b1_t1": ms, "size/disk_mb": mb,
                   "bench/runtime_rss_mb": 100.0}
        cons = trials.constraint_values(metrics, cfg.constraints, ref["val/accuracy"])
        study.add_trial(create_trial(
            state=TrialState.COMPLETE, values=[acc, ms, mb, 100.0], params=params,
            distributions={k: CategoricalDistribution(v) for k, v in dims.items()},
            user_attrs={"label": student, "metrics": metrics, "constraints": cons, "run_id": "r", "model_dir": "d"}))

    add("3L-spread", "onnx-int8", ">=1", 0.975, 2.3, 11.5)   # 0: the hand recipe, the nearest miss
    add("1L-top", "pte-int8", ">=1", 0.973, 0.48, 34.2)      # 1: fast enough, too big
    add("4L-bottom", "torch-fp32", "off", 0.977, 8.6, 38.0)  # 2: slow and big
    assert follow_ups.candidate(study, cfg, 6, ref) is None  # the startup trials are not all in
    add("1L-bottom", "torch-fp32", "off", 0.95, 2.0, 35.0)   # 3: 3 points below the teacher: no tail brings them back
    number, params = follow_ups.candidate(study, cfg, 6, ref)
    # trial 1 goes first (within the latency limit), in trial 0's runtime, the vocabulary cut to tokens seen 3 times;
    # trial 0 already runs in that runtime and misses latency: a smaller vocabulary would not make it faster
    assert number == 1 and params == {**study.trials[1].params, "runtime": "onnx-int8", "vocab": ">=3"}
    assert follow_ups.queue(study, cfg, 6, ref) == 1
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1 and follow_ups.params_of(waiting[0]) == params
    assert follow_ups.candidate(study, cfg, 6, ref) is None  # none beside one waiting to be asked
    study.ask()  # the follow-up runs (trial 4)
    assert follow_ups.candidate(study, cfg, 6, ref)[0] == 2  # 1 is followed up: the next is 2
    add("4L-bottom", "onnx-int8", ">=3", 0.977, 3.1, 9.5)    # 5: ... whose follow-up the sampler drew itself
    assert follow_ups.candidate(study, cfg, 6, ref) is None  # a recipe the study has seen is not tried again
    study.enqueue_trial({**study.trials[2].params, "runtime": "torch-int8"}, user_attrs={"follow_up_of": 2})
    study.ask()  # trial 6
    add("1L-top", "torch-fp32", "off", 0.976, 0.9, 30.0, temperature=dims["temperature"][1])  # 7: a new candidate,
    assert follow_ups.candidate(study, cfg, 6, ref) is None  # but the budget of 2 follow-ups is spent
    more = cfg.model_copy(update={"search": s.model_copy(update={"follow_ups": 3})})
    assert follow_ups.candidate(study, more, 6, ref) == (7, {**study.trials[7].params, "runtime": "onnx-int8",
                                                            "vocab": ">=3"})
    add("2L-bottom", "torch-int8", ">=3", 0.976, 0.6, 8.0)   # 8: inside the constraints: the runtime to follow now
    assert follow_ups.candidate(study, more, 6, ref) == (7, {**study.trials[7].params, "runtime": "torch-int8",
                                                            "vocab": ">=3"})
    assert follow_ups.strongest_vocab(s.space.model_copy(update={"vocab_trim": [False]}), 6) == "off"


def test_a_recipe_drawn_again_is_told_its_values_not_run_or_counted():
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState

    study = optuna.create_study(directions=["maximize", "minimize"])
    dims = {"student": CategoricalDistribution(["1L-top"]), "runtime": CategoricalDistribution(["a"])}
    first = study.ask(dims)
    first.set_user_attr("label", "1L-top a")
    first.set_user_attr("constraints", {"latency": 0.5})
    first.set_constraint("latency", 0.5)
    study.tell(first, [0.9, 1.5])
    again = study.ask(dims)  # the sampler draws the same recipe
    other = study.ask({**dims, "vocab": CategoricalDistribution([">=3"])})  # a recipe not seen
    study.enqueue_trial(dict(first.params), user_attrs={"follow_up_of": 0})  # queued on purpose: it runs
    queued = study.ask(dims)
    assert [t.number for t in trials.tell_repeats(study, [again, other, queued])] == [other.number, queued.number]
    told = study.trials[again.number]
    assert told.state == TrialState.COMPLETE and told.values == [0.9, 1.5] and told.user_attrs["duplicate_of"] == 0
    assert told.constraints == {"latency": 0.5} and told.user_attrs["label"] == "1L-top a"
    assert [t.number for t in studies.finished(study)] == [0] and len(studies.repeats(study)) == 1
    assert studies.spent(study, budget=4) == 1 and studies.spent(study, budget=0) == 2  # past the cap, repeats count
    # the next batch: what the count leaves; with no count (a time budget alone) a batch until the sampler draws
    # more repeats than new recipes; nothing once the deadline has passed
    assert studies.to_ask(study, 4, None, 2) == 2 and studies.to_ask(study, 2, None, 2) == 1
    assert studies.to_ask(study, None, time.monotonic() + 60, 2) == 2
    assert studies.to_ask(study, None, time.monotonic() - 1, 2) == studies.to_ask(study, 9, time.monotonic() - 1, 2) == 0
    second = study.ask(dims)
    trials.tell_repeats(study, [second])  # a second repeat: 2 repeats > 1 recipe finished -> the space is used up
    assert studies.to_ask(study, None, None, 2) == 0 and studies.to_ask(study, 9, None, 2) == 2


# ------------------------------------------------------------------------------------------------ end to end

SPACE = ("{layers: [1], layer_pick: [bottom, top], temperature: [2.0], alpha: [0.5], hidden_mse: [0.0], "
         "distill_epochs: [null], distill_learning_rate: [null], "
         "heads_fraction: [0.0, 0.5], ffn_fraction: [0.0, 0.5], recovery_epochs: [0.5], vocab_trim: [false], "
         "runtime: [torch-fp32, onnx-int8]}")
HAND = "[{layers: 1, layer_pick: bottom, heads_fraction: 0.5, ffn_fraction: 0.5, vocab_min_count: 1, runtime: onnx-int8}]"


def search_args(model_dir, out, trials: int = 3, **extra) -> list[str]:
    sets = {"model.source": str(model_dir), "model.max_length": 64, "output_dir": str(out), "data.max_samples": 120,
            "train.max_steps": 4, "train.batch_size": 8, "benchmark.seq_len": 32, "variants": "[]",
            "search.benchmark": "{seq_len: 32, batch_sizes: [1], threads: [1], iters: 3, warmup: 0, max_seconds: 1}",
            "search.space": SPACE, "search.seed_recipes": HAND, "search.sampler": "tpe", "search.startup_trials": 2,
            "constraints": "{max_latency_ms: 1000, max_size_mb: 1000, max_accuracy_drop: 1.0}", **extra}
    args = ["search", "mobile-bert", "--trials", str(trials)]
    for k, v in sets.items():
        args += ["--set", f"{k}={v}"]
    return args


def trial_runs(uri):
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("effilm/mobile-bert")
    return [r for r in c.search_runs([exp.experiment_id]) if r.data.tags.get("variant", "").startswith("trial-")]


def trials_by_state(db) -> tuple[list, list]:
    """The finished and the failed trials of the study stored in `db` (the sqlite file beside the MLflow store)."""
    trials = optuna.load_study(study_name=None, storage=f"sqlite:///{db}").get_trials(deepcopy=False)
    return ([t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and "duplicate_of" not in t.user_attrs],
            [t for t in trials if t.state == optuna.trial.TrialState.FAIL])


@pytest.mark.integration
def test_three_trial_search_end_to_end(tiny_model_dir, mlflow_uri, tmp_path):
    out = tmp_path / "out"
    assert main(search_args(tiny_model_dir, out)) == 0

    study = optuna.load_study(study_name=None, storage=f"sqlite:///{tmp_path / 'mlflow.optuna.db'}")
    finished = studies.finished(study)
    assert len(finished) == 3 and finished[0].user_attrs["seed_recipe"]  # the hand recipe went first
    hand = {"student": "1L-bottom", "heads_fraction": 0.5, "ffn_fraction": 0.5, "runtime": "onnx-int8", "vocab": "off"}
    assert {k: finished[0].params[k] for k in hand} == hand

    runs = trial_runs(mlflow_uri)
    # one run per finished trial (a recipe the sampler drew again is told, not run: its number has no run)
    assert sorted(r.data.tags["variant"] for r in runs) == [f"trial-{t.number:03d}" for t in finished]
    teacher = [r for r in MlflowClient(mlflow_uri).search_runs(
        [runs[0].info.experiment_id], filter_string="tags.variant = 'teacher-fp32'")][0]
    for r in runs:
        assert r.info.status == "FINISHED" and r.data.tags["mlflow.parentRunId"] == teacher.data.tags["mlflow.parentRunId"]
        assert r.data.params["recipe.layers"] == "1" and "recipe.runtime" in r.data.params
        for key in ("val/accuracy", "bench/latency_ms_p50_b1_t1", "size/disk_mb", "bench/runtime_rss_mb"):
            assert key in r.data.metrics, key
        assert not any(k.startswith("eval/") for k in r.data.metrics) or r.data.tags.get("selected") == "true" \
            or r.data.tags["search.seed_recipe"] == "true"  # test metrics only for the chosen and the hand recipe
        if r.data.params["recipe.runtime"] == "onnx-int8":  # ONNX Runtime alone, without torch in the process
            assert r.data.metrics["bench/runtime_rss_includes_torch"] == 0.0
            assert r.data.metrics["bench/runtime_rss_mb"] < teacher.data.metrics["bench/runtime_rss_mb"] / 2
    # every distinct student was distilled once, however many trials used it
    picks = {t.params["student"] for t in finished}
    manifests = [json.loads(p.read_text()) for p in (out / "variants").glob("*/effilm.json")]
    assert len([m for m in manifests if "distilled_from" in m]) == len(picks)

    summary = json.loads(next((out / "search").glob("*/summary.json")).read_text())
    chosen = [r for r in runs if r.data.tags.get("selected") == "true"]
    assert len(chosen) == 1 and summary["summary"]["best"]["trial"] == int(chosen[0].data.tags["search.trial"])
    settings = summary["summary"]["settings"]  # what a comparison of two searches must hold equal
    assert (settings["sampler"], settings["seed"], settings["trials"], settings["startup_trials"]) == ("tpe", 0, 3, 2)
    assert "eval/accuracy" in chosen[0].data.metrics
    reg = summary["registered"]
    mv = MlflowClient(mlflow_uri).get_model_version_by_alias("effilm-mobile-bert", "mobile")
    assert reg["alias_moved"] and str(mv.version) == reg["version"] and mv.run_id == chosen[0].info.run_id
    assert len(list((out / "search").glob("*/front.png"))) == 1

    # the same budget again: the study is complete, nothing is re-run; one more trial: exactly one more
    assert main(search_args(tiny_model_dir, out)) == 0
    assert len(trial_runs(mlflow_uri)) == 3
    assert main(search_args(tiny_model_dir, out, trials=4)) == 0
    finished = studies.finished(optuna.load_study(study_name=None, storage=f"sqlite:///{tmp_path / 'mlflow.optuna.db'}"))
    assert len(finished) == 4 and sorted(r.data.tags["variant"] for r in trial_runs(mlflow_uri)) == \
        [f"trial-{t.number:03d}" for t in finished]
    # the trials of two search runs in one `effilm compare` table, each row naming its flow run
    parents = sorted({r.data.tags["mlflow.parentRunId"] for r in trial_runs(mlflow_uri)})
    assert len(parents) == 2
    assert main(["compare", "--run", *parents, "--out", str(tmp_path / "cmp")]) == 0
    table = pd.read_csv(next((tmp_path / "cmp").glob("*.csv")))
    assert sorted(table.loc[table["variant"].str.startswith("trial-"), "variant"]) == \
        [f"trial-{t.number:03d}" for t in finished]
    assert table["flow"].nunique() == 2 and (table["variant"] == "teacher-fp32").sum() == 2

    # constraints no trial can meet (a new study; the built folders are reused): nothing is registered, and the
    # nearest miss is test-evaluated and reported with how far it missed on validation
    impossible = "{min_speedup: 100000, max_size_mb: 1000, max_accuracy_drop: 1.0}"  # relative to the teacher
    alias_before = MlflowClient(mlflow_uri).get_model_version_by_alias("effilm-mobile-bert", "mobile").version
    two_runtimes = HAND[:-1] + ", {layers: 1, layer_pick: top, heads_fraction: 0.0, ffn_fraction: 0.0, " \
        "vocab_min_count: 1, runtime: torch-fp32}]"
    assert main(search_args(tiny_model_dir, out, constraints=impossible, **{"search.seed_recipes": two_runtimes})) == 0
    missed = [json.loads(p.read_text()) for p in (out / "search").glob("*/summary.json")]
    missed = [m for m in missed if "nearest" in m["summary"]]
    assert len(missed) == 1 and "best" not in missed[0]["summary"] and missed[0]["registered"] is None
    near = missed[0]["summary"]["nearest"]
    assert near["validation_misses"]["latency_ms"] > 0 and 0 <= near["test_accuracy"] <= 1
    teacher_ms = MlflowClient(mlflow_uri).search_runs(  # this search's reference run: the newest teacher run
        [trial_runs(mlflow_uri)[0].info.experiment_id], filter_string="tags.variant = 'teacher-fp32'",
        order_by=["attributes.start_time DESC"])[0].data.metrics["bench/latency_ms_p50_b1_t1"]
    assert missed[0]["summary"]["constraints"]["max_latency_ms"] == pytest.approx(teacher_ms / 100000)
    assert missed[0]["summary"]["trials_wall_seconds"] > 0
    study_dir = next(p.parent for p in (out / "search").glob("*/summary.json") if "nearest" in p.read_text())
    trials_csv = pd.read_csv(study_dir / "trials.csv")
    assert near["trial"] == trials_csv.loc[trials_csv["bench/latency_ms_p50_b1_t1"].idxmin(), "trial"]  # only latency misses
    assert "eval/accuracy" in MlflowClient(mlflow_uri).get_run(near["run_id"]).data.metrics  # on its own run
    assert MlflowClient(mlflow_uri).get_model_version_by_alias("effilm-mobile-bert", "mobile").version == alias_before
    # every trial misses latency: after the two (startup) seeds, the one not in the nearest miss's runtime is
    # followed up in that runtime, on its built student
    (follow,) = missed[0]["summary"]["follow_ups"]
    assert follow["trial"] == 2 and follow["of"] in (0, 1) and trials_csv["follow_up_of"].notna().sum() == 1
    study = optuna.load_study(study_name=missed[0]["study"], storage=f"sqlite:///{tmp_path / 'mlflow.optuna.db'}")
    source, again = study.trials[follow["of"]].params, study.trials[2].params
    assert again == {**source, "runtime": study.trials[1 - follow["of"]].params["runtime"]} != source
    run = [r for r in trial_runs(mlflow_uri) if r.info.run_id == study.trials[2].user_attrs["run_id"]][0]
    assert run.data.tags["search.follow_up_of"] == str(follow["of"])


@pytest.mark.integration
def test_killed_search_resumes_without_losing_or_duplicating_a_trial(tiny_model_dir, tmp_path):
    from tests.reliability.helpers import effilm, env_for
    from tests.reliability.test_faults import kill_when

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    db = tmp_path / "mlflow.optuna.db"
    args = search_args(tiny_model_dir, tmp_path / "out", trials=4)
    env = env_for(tmp_path, uri)

    def one_complete_one_running() -> bool:
        if not db.exists():
            return False
        try:
            with sqlite3.connect(db) as con:
                states = [s for (s,) in con.execute("SELECT state FROM trials")]
        except sqlite3.Error:
            return False
        return states.count("COMPLETE") >= 1 and "RUNNING" in states

    kill_when(effilm(args, env), one_complete_one_running, "a finished trial beside a running one")
    again = effilm(args, env)
    log, _ = again.communicate(timeout=900)
    assert again.returncode == 0, log[-3000:]

    complete, failed = trials_by_state(db)
    assert len(complete) == 4  # the budget, exactly
    assert failed and all(any(c.user_attrs.get("retry_of") == f.number and c.params == f.params for c in complete)
                          for f in failed)  # each interrupted trial was run again, with its recipe
    runs = trial_runs(uri)
    finished_runs = [r for r in runs if r.info.status == "FINISHED"]
    assert sorted(int(r.data.tags["search.trial"]) for r in finished_runs) == sorted(t.number for t in complete)
    assert all(r.info.status == "KILLED" for r in runs if r not in finished_runs)  # reaped, not left RUNNING


@pytest.mark.integration
def test_a_trial_that_cannot_be_built_fails_alone(tiny_model_dir, tmp_path):
    """Every ONNX export raises (test fault): those trials end FAIL with the reason, the others finish the budget."""
    from tests.reliability.helpers import effilm, env_for

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = effilm(search_args(tiny_model_dir, tmp_path / "out"), env_for(tmp_path, uri, EFFILM_INJECT_FAULT="export-onnx",
                                                                           EFFILM_FAULT_MARKER=str(tmp_path / "m")),
                  module="tests.reliability.inject")
    log, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, log[-3000:]
    complete, failed = trials_by_state(tmp_path / 'mlflow.optuna.db')
    assert failed and all("injected fault: ONNX export fails" in t.user_attrs["error"] for t in failed)
    assert failed[0].params["runtime"] == "onnx-int8"  # the hand recipe went first, and failed
    assert len(complete) == 3 and all(t.params["runtime"] == "torch-fp32" for t in complete)
    assert {r.data.tags["search.trial"] for r in trial_runs(uri)} == {str(t.number) for t in complete}
