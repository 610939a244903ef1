from tasks.measure import select


def row(name, acc, ms, mb):
    return {"variant": name, "eval/accuracy": acc, "bench/latency_ms_p50_b1_t1": ms, "size/disk_mb": mb, "run_id": name}


ROWS = [row("teacher", 0.97, 35, 90), row("int8", 0.968, 10, 23), row("tiny", 0.962, 4, 8), row("bad", 0.90, 3, 5),
        row("dominated", 0.96, 12, 30)]


def test_selects_fastest_feasible_on_frontier():
    s = select.select(ROWS, {"max_latency_ms": 11, "max_size_mb": 25, "max_accuracy_drop": 0.01}, 0.97)
    assert s.chosen["variant"] == "tiny"
    assert set(s.feasible) == {"int8", "tiny"} and "bad" not in s.feasible
    assert "selected 'tiny'" in s.message


def test_objectives():
    c = {"max_latency_ms": 11, "max_size_mb": 25, "max_accuracy_drop": 0.01}
    assert select.select(ROWS, c, 0.97, "accuracy").chosen["variant"] == "int8"
    assert select.select(ROWS, c, 0.97, "size").chosen["variant"] == "tiny"


def test_pareto_front_excludes_dominated():
    names = {r["variant"] for r in select.pareto_front(ROWS)}
    assert "dominated" not in names and {"teacher", "int8", "tiny", "bad"} <= names


def test_nothing_fits_names_nearest_and_misses():
    s = select.select(ROWS, {"max_latency_ms": 2, "max_size_mb": 4, "max_accuracy_drop": 0.001}, 0.97)
    assert s.chosen is None
    assert "no variant meets the constraints" in s.message and "'tiny'" in s.message
    assert s.misses["tiny"]["latency_ms"] == 2 and s.misses["tiny"]["size_mb"] == 4
    assert abs(s.misses["bad"]["accuracy_points"] - 6.9) < 1e-6
    assert s.nearest == ["tiny", "bad", "int8"]  # misses relative to each limit: 2.7, 7.65, 8.85
    assert "over by" in s.message


def test_nothing_measured_says_so():
    stopped = [{"variant": "trial-000", "eval/accuracy": None, "run_id": "x"}]  # stopped early: no benchmark
    s = select.select(stopped, {"max_latency_ms": 9, "max_size_mb": 22, "max_accuracy_drop": 0.01}, 0.98)
    assert s.chosen is None and "no variant was measured" in s.message and "Nearest" not in s.message


def test_constraints_relative_to_the_teacher_resolve_to_the_tighter_limit():
    """min_speedup / min_size_ratio against the teacher's own measurement: 35 ms / 10x = 3.5 ms selects only
    'tiny' where an absolute 11 ms admitted 'int8' too; with both forms the tighter one holds; a relative limit
    without a teacher measurement is an error naming the key; absolute-only constraints are unchanged."""
    import pytest

    from tasks.core.config import Constraints

    teacher = ROWS[0]
    rel = Constraints(min_speedup=10, min_size_ratio=3, max_accuracy_drop=0.01)
    limits = rel.resolved(teacher["bench/latency_ms_p50_b1_t1"], teacher["size/disk_mb"])
    assert limits.model_dump(exclude_none=True) == {"max_latency_ms": 3.5, "max_size_mb": 30, "max_accuracy_drop": 0.01}
    assert select.select(ROWS, limits.model_dump(), 0.97).chosen is None  # 'tiny' (4 ms) misses 3.5 ms
    limits = Constraints(min_speedup=8, max_latency_ms=11, max_size_mb=25, max_accuracy_drop=0.01).resolved(35, 90)
    assert limits.max_latency_ms == 35 / 8 and select.select(ROWS, limits.model_dump(), 0.97).feasible == ["tiny"]
    assert Constraints(min_speedup=1, max_latency_ms=11).resolved(35, 90).max_latency_ms == 11  # absolute is tighter
    plain = Constraints(max_latency_ms=11, max_size_mb=25, max_accuracy_drop=0.01)
    assert plain.resolved(None, None) == plain
    with pytest.raises(ValueError, match="constraints.min_size_ratio"):
        Constraints(min_size_ratio=10).resolved(35, None)
