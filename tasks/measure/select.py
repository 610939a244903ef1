"""Pick the best variant under the case study's constraints ("auto-compress") and register it.

A variant is feasible when its p50 latency (batch 1, 1 thread), size on disk and accuracy drop against the
teacher are within ``max_latency_ms``, ``max_size_mb`` and ``max_accuracy_drop``. Among the feasible variants on
the Pareto frontier (accuracy ↑, latency ↓, size ↓) the objective decides (fastest, smallest or most accurate).
When nothing fits, the message names the nearest variants and by how much each misses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

LATENCY = "bench/latency_ms_p50_b1_t1"
SIZE = "size/disk_mb"
ACC = "eval/accuracy"


@dataclass
class Selection:
    chosen: dict | None
    feasible: list[str]
    frontier: list[str]
    message: str
    misses: dict[str, dict[str, float]] = field(default_factory=dict)
    nearest: list[str] = field(default_factory=list)  # when nothing fits: the nearest variants, nearest first


def misses_for(row: dict, constraints: dict, baseline_acc: float) -> dict[str, float]:
    """How far a variant is over each limit (0 = within): ms, MB, accuracy points."""
    out: dict[str, float] = {}
    if constraints.get("max_latency_ms") is not None:
        v = row.get(LATENCY)
        out["latency_ms"] = float("inf") if v is None else max(0.0, v - constraints["max_latency_ms"])
    if constraints.get("max_size_mb") is not None:
        v = row.get(SIZE)
        out["size_mb"] = float("inf") if v is None else max(0.0, v - constraints["max_size_mb"])
    if constraints.get("max_accuracy_drop") is not None:
        v = row.get(ACC)
        drop = float("inf") if v is None else baseline_acc - v
        out["accuracy_points"] = max(0.0, 100 * (drop - constraints["max_accuracy_drop"]))
    return out


def pareto_front(rows: list[dict]) -> list[dict]:
    """Variants no other variant beats on all of accuracy, latency and size (and strictly on one)."""
    def key(r):
        return (r.get(ACC, 0.0), -(r.get(LATENCY) or float("inf")), -(r.get(SIZE) or float("inf")))

    front = []
    for r in rows:
        a = key(r)
        dominated = any(all(x >= y for x, y in zip(key(o), a)) and key(o) != a for o in rows if o is not r)
        if not dominated:
            front.append(r)
    return front


def select(rows: list[dict], constraints: dict, baseline_acc: float, objective: str = "latency") -> Selection:
    candidates = [r for r in rows if r.get(LATENCY) is not None]
    if not candidates:
        return Selection(None, [], [], "no variant was measured: none has a latency (each failed, or stopped early, "
                         "before its benchmark); nothing to select", {})
    all_misses = {r["variant"]: misses_for(r, constraints, baseline_acc) for r in candidates}
    feasible = [r for r in candidates if all(v == 0 for v in all_misses[r["variant"]].values())]
    front = pareto_front(feasible)
    limits = ", ".join(f"{k}={v}" for k, v in constraints.items() if v is not None) or "none"
    if front:
        order = {"latency": lambda r: (r[LATENCY], -r[ACC]), "size": lambda r: (r[SIZE], -r[ACC]),
                 "accuracy": lambda r: (-r[ACC], r[LATENCY])}[objective]
        best = sorted(front, key=order)[0]
        msg = (f"selected '{best['variant']}' ({objective} objective; constraints {limits}): accuracy {best[ACC]:.4f} "
               f"(teacher {baseline_acc:.4f}), p50 {best[LATENCY]:.2f} ms, {best[SIZE]:.1f} MB; "
               f"{len(feasible)} of {len(candidates)} variants feasible")
        return Selection(best, [r["variant"] for r in feasible], [r["variant"] for r in front], msg, all_misses)

    def badness(item):
        name, m = item
        total = 0.0
        for k, v in m.items():
            limit = {"latency_ms": constraints.get("max_latency_ms"), "size_mb": constraints.get("max_size_mb"),
                     "accuracy_points": 1.0}[k]
            total += v / (limit or 1.0)
        return total

    nearest = sorted(all_misses.items(), key=badness)[:3]
    parts = []
    for name, m in nearest:
        over = [f"{k.replace('_', ' ')} over by {v:.2f}" for k, v in m.items() if v > 0]
        parts.append(f"'{name}' ({'; '.join(over)})")
    msg = (f"no variant meets the constraints ({limits}). Nearest: " + ", ".join(parts) +
           ". Relax constraints.* in the case-study file or add a variant.")
    return Selection(None, [], [], msg, all_misses, [name for name, _ in nearest])


def register(run_id: str, name: str, alias: str, tags: dict | None = None) -> str:
    """Register the chosen variant's model in the MLflow Model Registry and point ``alias`` at it. -> version."""
    from tasks.core import tracking

    return tracking.register_model(run_id, name, alias, tags,
                                   description="effilm: best variant under the case study's constraints")
