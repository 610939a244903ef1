"""``effilm reproduce <run-id>``: re-run a recorded MLflow run from its own records and compare the numbers.

The flow (parent) run holds everything needed: ``config/resolved.yaml`` (the validated config), ``code_version``
(hash of tasks/ + flows/), ``git_sha``, ``data_fingerprint`` (content hash of the data before splitting), the seed
and the environment. Reproduction refuses to start when the code or the data no longer match (``--force`` overrides),
re-runs the same case study into a fresh output folder (so nothing cached is reused), and checks every metric of the
reproduced variant runs against the originals with the tolerances below.
"""

from __future__ import annotations

import fnmatch
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tasks.core import config, data, orchestrate, tracking
from tasks.core.config import ConfigError

# (pattern, kind, tolerance): first match wins. "exact": new == old; "rel": |new - old| <= tol * |old|, where a
# tolerance of None is the run's --latency-tolerance; "info": shown with its difference, never judged.
#
# Judged: what a re-run on the same machine must give again.
#  - quality (accuracy, F1, loss, ROUGE) and counts: exactly, because training and evaluation are seeded and run
#    deterministic kernels at the same thread count (measured: every one identical, benchmarks/results/
#    reproduce_teacher_quick.md);
#  - sizes: within 1 % (the folder holds manifests that record paths);
#  - the median latency at one thread (bench/latency_ms_p50_*_t1), within LATENCY_TOLERANCE;
#  - the model's own memory (bench/model_rss_mb: RSS after loading it minus before) within 10 %: identical runs gave
#    146.9 -> 146.9 MB;
#  - the benchmark process's peak (bench/peak_rss_mb, and bench/runtime_rss_mb, which is that peak unless the model
#    was measured in its runtime alone) within PROCESS_MEMORY_TOLERANCE = 25 %: it holds torch, the allocator's
#    caches and thread pools besides the model, and identical runs differed by 2 % (800.8 -> 783.4 MB), 0 % and
#    12.3 % (761.8 -> 855.7 MB, `make bench` 2026-11-23): twice the largest seen, while a lost compression (int8 ->
#    fp32, or a model not pruned) moves the model's own memory by far more than 10 %, where it is judged tightly.
# Reported, not judged, because they measure the machine's load rather than the model: tail latencies (p95; a single
# preempted iteration moves them), every timing at all threads (`_tall`, and the long-document `_L<n>` latencies,
# measured at all cores: they compete with whatever else runs), throughput (derived from the same timings), the
# number of timed iterations (capped by benchmark.max_seconds, so fewer on a slower run), wall-clock times and
# training throughput. A quick-profile re-run on a shared 2-core machine with identical quality metrics once failed
# on p95 at batch 1 / all threads (+34 %).
#
# LATENCY_TOLERANCE = 30 %: the run-to-run spread of identical runs on this 2-core machine is about +-10 %, with
# outliers of +23-34 % when the machine is loaded. 30 % is three times the ordinary spread, so noise does not fail a
# reproduction, and still well below what a real change in the model costs (the compression targets are >= 1.4x
# speed-ups, i.e. a lost speed-up moves the median by 40 % or more). On a machine known to be loaded, raise it with
# --latency-tolerance rather than trust a pass that depends on the load.
LATENCY_TOLERANCE = 0.30
MEMORY_TOLERANCE = 0.10
PROCESS_MEMORY_TOLERANCE = 0.25
SIZE_TOLERANCE = 0.01
TOLERANCES: list[tuple[str, str, float | None]] = [
    ("bench/latency_ms_p50_*_t1", "rel", None),
    ("bench/latency_ms_p95_*", "info", None),
    ("bench/*_tall", "info", None),
    ("bench/latency_ms_L*", "info", None),
    ("bench/throughput*", "info", None),
    ("bench/iters_*", "info", None),
    ("bench/model_rss_mb", "rel", MEMORY_TOLERANCE),
    ("bench/*rss_mb*", "rel", PROCESS_MEMORY_TOLERANCE),
    ("*seconds*", "info", None),
    ("*samples_per_second*", "info", None),
    ("*resumed_from_step*", "info", None),
    ("size/*", "rel", SIZE_TOLERANCE),
    ("*", "exact", 0.0),
]


class ReproduceRefused(ConfigError):
    """Code or data no longer match the recorded run (exit 2 unless --force)."""


@dataclass
class Check:
    variant: str
    key: str
    original: float
    reproduced: float | None
    kind: str
    tolerance: float

    @property
    def ok(self) -> bool:
        if self.kind == "info":
            return True
        if self.reproduced is None:
            return False
        diff = abs(self.reproduced - self.original)
        return diff == 0 if self.kind == "exact" else diff <= self.tolerance * abs(self.original)

    @property
    def rule(self) -> str:
        return {"exact": "exact", "rel": f"±{self.tolerance:.0%}", "info": "not judged"}[self.kind]


@dataclass
class Report:
    original_run: str
    reproduced_parent: str
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def table(self):
        """The checks as a DataFrame of display strings (one row per variant and metric)."""
        import pandas as pd

        return pd.DataFrame([{
            "variant": c.variant, "metric": c.key, "original": f"{c.original:.6g}",
            "reproduced": "missing" if c.reproduced is None else f"{c.reproduced:.6g}",
            "diff": "–" if c.reproduced is None else f"{c.reproduced - c.original:+.6g}",
            "tolerance": c.rule, "ok": "–" if c.kind == "info" else "yes" if c.ok else "**NO**"} for c in self.checks],
            columns=["variant", "metric", "original", "reproduced", "diff", "tolerance", "ok"])

    def markdown(self) -> str:
        judged = sum(c.kind != "info" for c in self.checks)
        bad = sum(not c.ok for c in self.checks)
        table = self.table().to_markdown(index=False, disable_numparse=True,
                                         colalign=["left", "left", "right", "right", "right", "left", "left"])
        return "\n".join([f"# reproduce {self.original_run} -> {self.reproduced_parent}", "",
                          *(f"- {n}" for n in self.notes),
                          (f"- judged: {judged} metric(s); {len(self.checks) - judged} reported, not judged "
                           "(tail and all-thread timings, throughput, wall times)"), "",
                          table, "", f"**{'reproduced' if self.ok else f'{bad} metric(s) outside tolerance'}**"])


def tolerance_for(key: str, latency_tolerance: float = LATENCY_TOLERANCE) -> tuple[str, float]:
    """-> (kind, tolerance) of a metric key: the first matching TOLERANCES rule ("*" ends the list)."""
    kind, tol = next((k, t) for pattern, k, t in TOLERANCES if fnmatch.fnmatchcase(key, pattern))
    if kind == "info":
        return kind, 0.0
    return kind, latency_tolerance if tol is None else tol


def _variants_needed(resolved: dict, target: str) -> list[dict]:
    """The variant chain that builds ``target`` (its sources first); [] for the teacher."""
    by_name = {v["name"]: v for v in resolved.get("variants", [])}
    chain: list[dict] = []
    name = target
    while name in by_name:
        chain.insert(0, by_name[name])
        name = by_name[name].get("source", "teacher")
    return chain


def plan(run_id: str, force: bool = False) -> dict:
    """Read the run's records and check code + data; raise ReproduceRefused with what to do."""
    src = f"run {run_id}"
    try:
        run = tracking.get_run(run_id)
    except Exception as exc:
        raise ConfigError(src, None, f"not found in {tracking.tracking_uri()} ({str(exc).splitlines()[0]}); "
                                     "set MLFLOW_TRACKING_URI to the store that holds it") from None
    parent = run
    if "mlflow.parentRunId" in run.data.tags:
        parent = tracking.get_run(run.data.tags["mlflow.parentRunId"])
    tags = parent.data.tags
    study = tags.get("case_study")
    if study not in config.CASE_STUDIES:
        raise ConfigError(src, "tags.case_study", f"not an effilm flow run (case_study={study!r})")
    try:
        resolved = yaml.safe_load(tracking.download_text(parent.info.run_id, "config/resolved.yaml"))
    except Exception as exc:
        raise ConfigError(src, "artifacts.config/resolved.yaml", f"the run has no recorded config ({exc})") from None
    cfg = config.validate(study, resolved, f"{src}: config/resolved.yaml")
    notes = []
    recorded_code, current_code = tags.get("code_version"), orchestrate.code_version()
    if recorded_code != current_code:
        msg = (f"code changed since the run (code_version {recorded_code} recorded, {current_code} now; the run was "
               f"made at git {tags.get('git_sha', 'unknown')}): `git checkout {tags.get('git_sha', '<sha>').removesuffix('-dirty')}` "
               "first, or pass --force to re-run with today's code")
        if not force:
            raise ReproduceRefused(src, "tags.code_version", msg)
        notes.append("FORCED: " + msg)
    with tempfile.TemporaryDirectory() as tmp:
        info = data.prepare(cfg.data, cfg.seed, tmp)
    if info["fingerprint"] != tags.get("data_fingerprint"):
        msg = (f"the data changed since the run (fingerprint {str(tags.get('data_fingerprint'))[:12]}… recorded, "
               f"{info['fingerprint'][:12]}… now, source {info['source']}); restore it, or pass --force")
        if not force:
            raise ReproduceRefused(src, "tags.data_fingerprint", msg)
        notes.append("FORCED: " + msg)
    target = run.data.tags.get("variant") if run.info.run_id != parent.info.run_id else None
    return {"run": run, "parent": parent, "study": study, "resolved": resolved, "target": target, "notes": notes}


def reproduce(run_id: str, force: bool = False, output_dir: str | None = None,
              latency_tolerance: float = LATENCY_TOLERANCE) -> Report:
    from flows import catalog

    p = plan(run_id, force)
    resolved, study = dict(p["resolved"]), p["study"]
    profile = resolved.get("profile", "quick")
    resolved["output_dir"] = output_dir or str(Path("outputs") / "reproduce" / f"{run_id[:12]}-{time.strftime('%Y%m%d-%H%M%S')}")
    if study == "mobile-bert":
        resolved["select"] = {**resolved.get("select", {}), "register_model": False}  # never move the registry alias
        if p["target"] and p["target"] != "teacher-fp32":
            resolved["variants"] = _variants_needed(resolved, p["target"])
        elif p["target"] == "teacher-fp32":
            resolved["variants"] = []
    Path(resolved["output_dir"]).mkdir(parents=True, exist_ok=True)
    cfg_file = Path(resolved["output_dir"]) / "reproduce-config.yaml"
    cfg_file.write_text(yaml.safe_dump({**resolved, "profiles": {profile: {}}}, sort_keys=False))
    result = catalog.flows()[study](profile=profile, overrides=[], config_path=str(cfg_file))
    new_parent = result["parent_run_id"]

    originals = {r.data.tags.get("variant"): r for r in tracking.child_runs(p["parent"].info.run_id)}
    fresh = {r.data.tags.get("variant"): r for r in tracking.child_runs(new_parent)}
    wanted = [p["target"]] if p["target"] else list(originals)
    report = Report(run_id, new_parent, notes=[*p["notes"], f"case study {study}, profile {profile}, seed {resolved.get('seed')}",
                                                  f"output folder {resolved['output_dir']}"])
    for variant in wanted:
        old = originals[variant].data.metrics
        new = fresh.get(variant).data.metrics if variant in fresh else {}
        for key in sorted(old):
            kind, tol = tolerance_for(key, latency_tolerance)
            report.checks.append(Check(variant, key, old[key], new.get(key), kind, tol))
    md_path = Path(resolved["output_dir"]) / "reproduce.md"
    md_path.write_text(report.markdown() + "\n")
    tracking.set_tags(new_parent, {"reproduced_from": run_id, "reproduce.ok": str(report.ok).lower()})
    tracking.log_metrics(new_parent, {"reproduce/metrics_checked": sum(c.kind != "info" for c in report.checks),
                                      "reproduce/metrics_outside_tolerance": sum(not c.ok for c in report.checks)})
    tracking.log_artifact(new_parent, md_path, "reproduce")
    tracking.log_text(new_parent, json.dumps([c.__dict__ | {"ok": c.ok} for c in report.checks], indent=1), "reproduce/checks.json")
    return report
