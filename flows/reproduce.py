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

# (pattern, kind, tolerance): first match wins. "abs": |new - old| <= tol; "rel": |new - old| <= tol * |old|;
# a tolerance of None is the run's --latency-tolerance.
# Accuracy, predictions-derived and training-loss metrics must match exactly (seeded, deterministic kernels, same
# thread count); sizes within 1 % (manifests record paths); timings are measurements: within 30 % by default, the
# spread seen on this 2-core machine between identical runs was ~10-15 % (docs/operations.md).
# "info": shown with its difference, not judged (wall-clock time and training throughput depend on what else the
# machine does; they are not properties of the model).
LATENCY_TOLERANCE = 0.30
TOLERANCES: list[tuple[str, str, float | None]] = [
    ("bench/*", "rel", None),
    ("*seconds*", "info", 0.0),
    ("*samples_per_second*", "info", 0.0),
    ("*resumed_from_step*", "info", 0.0),
    ("size/*", "rel", 0.01),
    ("*", "abs", 1e-6),
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
        return diff <= (self.tolerance if self.kind == "abs" else self.tolerance * abs(self.original)) + 1e-12


@dataclass
class Report:
    original_run: str
    reproduced_parent: str
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def markdown(self) -> str:
        lines = [f"# reproduce {self.original_run} -> {self.reproduced_parent}", "",
                 *(f"- {n}" for n in self.notes), "",
                 "| variant | metric | original | reproduced | diff | tolerance | ok |", "|---|---|---|---|---|---|---|"]
        for c in self.checks:
            diff = "–" if c.reproduced is None else f"{c.reproduced - c.original:+.6g}"
            tol = {"abs": f"±{c.tolerance:g}", "rel": f"±{c.tolerance:.0%}", "info": "not judged"}[c.kind]
            rep = "missing" if c.reproduced is None else f"{c.reproduced:.6g}"
            lines.append(f"| {c.variant} | {c.key} | {c.original:.6g} | {rep} | {diff} | {tol} | {'yes' if c.ok else '**NO**'} |")
        bad = sum(not c.ok for c in self.checks)
        lines += ["", f"**{'reproduced' if self.ok else f'{bad} metric(s) outside tolerance'}**"]
        return "\n".join(lines)


def tolerance_for(key: str, latency_tolerance: float = LATENCY_TOLERANCE) -> tuple[str, float]:
    kind, tol = next((k, t) for pattern, k, t in TOLERANCES if fnmatch.fnmatchcase(key, pattern))  # "*" ends the list
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
        info = data.prepare(config.slice_dict(cfg.data), cfg.seed, tmp)
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
