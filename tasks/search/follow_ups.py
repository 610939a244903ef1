"""Follow-ups: the search's second, cheap look at a promising student.

A recipe's cost is almost all in its student (distillation: minutes); its tail — how far the vocabulary is trimmed
and which runtime runs it — costs an export and a benchmark. A sampler that meets a good student with a poor tail
(say a 1-layer student within the accuracy limit, run in a runtime that keeps a 34 MB fp32 embedding table) learns
only that the recipe missed. A follow-up tries that student again with the tail that shrinks a model most: the
vocabulary trimmed as far as the space allows (the embedding table is most of a small model) and the runtime of the
best trial so far (the fastest trial inside the constraints, else the nearest miss — the study's own evidence of
which runtime is fastest and smallest on this machine). It is an ordinary trial (enqueued with the recipe fixed,
counted toward the budget, told to the sampler), tagged with the trial it follows up.

Written here, not taken from Optuna: Optuna's samplers propose points, they do not know that two recipes share a
costly prefix; enqueueing a chosen point is the API it offers for this (``Study.enqueue_trial``).
"""

from __future__ import annotations

import logging

from optuna.trial import TrialState

from tasks.measure import select
from tasks.search import recipes, study as studies, trials
from tasks.search.study import params_of

log = logging.getLogger(__name__)


def strongest_vocab(space, layers: int) -> str:
    """The space's most aggressive vocabulary choice (``off`` when trimming is not in the space)."""
    return max(recipes.dimensions(space, layers)["vocab"], key=lambda v: -1 if v == "off" else int(v[2:]))


def candidate(study, cfg, layers: int, ref: dict) -> tuple[int, dict] | None:
    """The next follow-up: (the trial it follows up, its params), or None when the budget of follow-ups is spent,
    the startup trials are not all in, a follow-up is still waiting to be asked, or no trial qualifies. A trial
    qualifies when it completed, meets the accuracy constraint, misses latency or size, was not followed up yet, and
    the follow-up is a recipe the study has not seen (in any state); not when it misses latency and already runs in
    the best runtime (trimming the vocabulary does not make it faster). The nearest to the latency limit goes first,
    then the nearest to the size limit."""
    s, c = cfg.search, cfg.constraints
    everything = study.get_trials(deepcopy=False)
    followed = {t.user_attrs["follow_up_of"] for t in everything if "follow_up_of" in t.user_attrs}
    waiting = any("follow_up_of" in t.user_attrs for t in everything if t.state == TrialState.WAITING)
    done = studies.finished(study)
    if waiting or len(followed) >= s.follow_ups or len(done) < s.startup_trials or \
            (c.max_latency_ms is None and c.max_size_mb is None):
        return None
    rows = [r for r in trials.rows(study, ref, s.objectives) if r["state"] == "COMPLETE"]
    # the fastest trial inside the constraints, else the nearest miss (whatever select.objective ranks by)
    choice = select.select(trials.as_candidates(rows), c.model_dump(), ref["val/accuracy"], "latency")
    best = choice.chosen["variant"] if choice.chosen is not None else (choice.nearest or [None])[0]
    if best is None:
        return None
    runtime = next(r for r in rows if trials.trial_label(r["trial"]) == best)["params"]["runtime"]
    vocab = strongest_vocab(s.space, layers)
    seen = [params_of(t) for t in everything]
    cons = {t.number: t.user_attrs.get("constraints", {}) for t in done}
    options = []
    for r in rows:
        v = cons[r["trial"]]
        late, big = max(v.get("latency", 0.0), 0.0), max(v.get("size", 0.0), 0.0)
        if r["trial"] in followed or v.get("accuracy_points", 0.0) > 0 or (late == 0 and big == 0):
            continue
        if late > 0 and r["params"]["runtime"] == runtime:
            continue
        params = {**r["params"], "runtime": runtime, "vocab": vocab}
        if params not in seen:
            options.append((late, big, r["trial"], params))
    if not options:
        return None
    _, _, number, params = min(options, key=lambda o: o[:3])
    return number, params


def queue(study, cfg, layers: int, ref: dict) -> int | None:
    """Enqueue the next follow-up (asked first; one at a time: none while one waits): -> the trial it follows up,
    or None."""
    found = candidate(study, cfg, layers, ref)
    if found is None:
        return None
    number, params = found
    study.enqueue_trial(params, user_attrs={"follow_up_of": number})
    log.info("follow-up of %s queued: %s", trials.trial_label(number),
             recipes.from_params(params, cfg.search.space).label())
    return number


def report(rows: list[dict]) -> list[dict]:
    """The study's follow-ups, for the summary: which trial each re-tried, and what came of it."""
    return [{"trial": r["trial"], "of": r["follow_up_of"], "recipe": r["recipe"], "state": r["state"],
             "feasible": r["feasible"]} for r in rows if r["follow_up_of"] is not None]
