"""`effilm compare`, `effilm reproduce` and the Dask fan-out, on the real flow (tiny model, small BBC slice)."""

import csv
import os

import pytest
from mlflow import MlflowClient

from flows.cli import main
from tests.test_flow_mobile_bert import overrides

pytestmark = pytest.mark.integration


def md_rows(text: str) -> list[list[str]]:
    """The cells of every markdown table row in ``text`` (tables are padded by DataFrame.to_markdown)."""
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines() if line.startswith("|")]

VARIANTS = ("[{name: int8, steps: [{technique: quantize, embeddings: true}]},"
            " {name: l1-50, steps: [{technique: prune_unstructured, sparsity: 0.5}]}]")


@pytest.fixture(scope="module")
def flow_run(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ops")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        from flows.mobile_bert import mobile_bert

        result = mobile_bert(profile="quick", overrides=overrides(tiny_model_dir, tmp / "out") + [f"variants={VARIANTS}"])
    return {"uri": uri, "tmp": tmp, "result": result}


def test_compare_prints_and_writes_the_variant_table(flow_run, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", flow_run["uri"])
    assert main(["compare", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in ("teacher-fp32", "int8", "l1-50", "eval/accuracy", "bench/latency_ms_p50_b1_t1", "size/disk_mb"):
        assert name in out
    assert "#/compare-runs?runs=" in out
    rows = list(csv.DictReader(next(tmp_path.glob("*.csv")).open()))
    by = {r["variant"]: r for r in rows}
    assert set(by) == {"teacher-fp32", "int8", "l1-50"}
    c = MlflowClient(flow_run["uri"])
    for r in flow_run["result"]["variants"]:  # the table holds exactly what MLflow holds
        assert float(by[r["variant"]]["eval/accuracy"]) == c.get_run(r["run_id"]).data.metrics["eval/accuracy"]
    assert ["int8", "quantize"] in [r[:2] for r in md_rows(next(tmp_path.glob("*.md")).read_text())]

    assert main(["compare", "--run", flow_run["result"]["variants"][1]["run_id"], "--metrics", "size/*",
                 "--out", str(tmp_path / "b")]) == 0
    assert "eval/accuracy" not in capsys.readouterr().out.split("\n", 2)[1]
    # nothing to compare -> exit 2 with what exists
    assert main(["compare", "--experiment", "no/such", "--out", str(tmp_path)]) == 2
    assert "effilm/mobile-bert" in capsys.readouterr().err
    assert main(["compare", "--metrics", "nope/*", "--out", str(tmp_path)]) == 2


def test_reproduce_teacher_run_exactly(flow_run, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", flow_run["uri"])
    teacher = flow_run["result"]["variants"][0]
    # a tiny model's latency is ~1 ms of mostly noise (the median of 3 iterations moved 1.2 -> 10.3 ms between two
    # identical runs on a loaded 2-core machine): this test judges accuracy/loss/size exactly and latency only nominally;
    # the tolerance rules themselves are tested on the quick-profile figures above
    assert main(["reproduce", teacher["run_id"], "--output-dir", str(tmp_path / "re"), "--latency-tolerance", "100"]) == 0
    out = capsys.readouterr().out
    assert "**reproduced**" in out
    rule = {r[1]: r[5] for r in md_rows(out) if r[0] == "teacher-fp32"}  # metric -> tolerance column
    assert rule["eval/accuracy"] == rule["train/loss"] == "exact"
    assert rule["bench/latency_ms_p50_b1_t1"] == "±10000%"  # judged, with this run's --latency-tolerance
    assert rule["bench/latency_ms_p95_b1_t1"] == rule["bench/latency_ms_p50_b1_tall"] == "not judged"
    c = MlflowClient(flow_run["uri"])
    new_parent = c.search_runs([c.get_experiment_by_name("effilm/mobile-bert").experiment_id],
                               filter_string=f"tags.reproduced_from = '{teacher['run_id']}'")[0]
    assert new_parent.data.metrics["reproduce/metrics_outside_tolerance"] == 0
    kids = c.search_runs([new_parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{new_parent.info.run_id}'")
    assert [k.data.tags["variant"] for k in kids] == ["teacher-fp32"]  # only what is needed was rebuilt
    assert kids[0].data.metrics["eval/accuracy"] == teacher["eval/accuracy"]
    assert kids[0].data.tags["env.torch"] and kids[0].data.tags["env.cpu"]
    # the registry alias was not moved by the reproduction
    assert not c.search_model_versions(f"run_id = '{kids[0].info.run_id}'")


def test_reproduce_judges_p50_at_one_thread_and_reports_tails_and_all_threads():
    """The tolerance rules on the case from the issue: a re-run with identical quality metrics whose p95 at batch 1 /
    all threads moved +34 % is reproduced; a median at one thread outside the tolerance is not."""
    from flows.reproduce import LATENCY_TOLERANCE, Check, Report, tolerance_for

    assert tolerance_for("bench/latency_ms_p50_b1_t1") == ("rel", LATENCY_TOLERANCE)
    assert tolerance_for("bench/latency_ms_p50_b32_t1", 0.5) == ("rel", 0.5)
    for key in ("bench/latency_ms_p95_b1_t1", "bench/latency_ms_p95_b1_tall", "bench/latency_ms_p95_b32_t1",
                "bench/latency_ms_p50_b1_tall", "bench/latency_ms_p50_b32_tall", "bench/throughput_b32",
                "bench/throughput_b1_t1", "bench/throughput_b32_tall", "bench/latency_ms_L4096", "bench/load_seconds",
                "bench/iters_b1_t1", "eval/seconds", "train/seconds", "train/samples_per_second"):
        assert tolerance_for(key) == ("info", 0.0), key
    for key in ("eval/accuracy", "eval/macro_f1", "eval/f1_business", "train/loss", "eval/num_samples", "eval/rouge2",
                "bench/seq_len", "bench/threads_all"):
        assert tolerance_for(key) == ("exact", 0.0), key
    assert tolerance_for("size/disk_mb") == tolerance_for("size/params") == ("rel", 0.01)
    # the model's own memory tightly; the whole benchmark process's peak (torch, allocator, thread pools) looser
    assert tolerance_for("bench/model_rss_mb") == ("rel", 0.10)
    assert tolerance_for("bench/peak_rss_mb") == tolerance_for("bench/runtime_rss_mb") == ("rel", 0.25)

    # the teacher run from benchmarks/results/reproduce_teacher_quick.md
    original = {"eval/accuracy": 0.973094, "eval/macro_f1": 0.973574, "train/loss": 0.157047, "eval/num_samples": 446,
                "size/disk_mb": 90.873, "bench/latency_ms_p50_b1_t1": 35.344, "bench/latency_ms_p50_b32_t1": 1042.56,
                "bench/latency_ms_p95_b1_t1": 37.641, "bench/latency_ms_p95_b1_tall": 25.804,
                "bench/latency_ms_p50_b1_tall": 21.145, "bench/throughput_b32": 54.97, "train/seconds": 111.15}

    def report(**changed) -> Report:
        new = {**original, **{k.replace("__", "/"): v for k, v in changed.items()}}
        return Report("old", "new", [Check("teacher-fp32", k, v, new.get(k), *tolerance_for(k)) for k, v in original.items()])

    def failing(r: Report) -> list[str]:
        return [c.key for c in r.checks if not c.ok]

    loaded = report(bench__latency_ms_p95_b1_tall=25.804 * 1.34, bench__latency_ms_p50_b1_tall=21.145 * 1.5,
                    bench__latency_ms_p95_b1_t1=37.641 * 1.8, bench__throughput_b32=54.97 / 2, train__seconds=400.0,
                    bench__latency_ms_p50_b1_t1=35.344 * 1.10, bench__latency_ms_p50_b32_t1=1042.56 * 0.9)
    assert loaded.ok and "**reproduced**" in loaded.markdown()
    rows = {r[1]: r for r in md_rows(loaded.markdown())}
    assert rows["bench/latency_ms_p95_b1_tall"][5:] == ["not judged", "–"]
    assert rows["bench/latency_ms_p50_b1_t1"][5:] == [f"±{LATENCY_TOLERANCE:.0%}", "yes"]

    slower = report(bench__latency_ms_p50_b1_t1=35.344 * (1 + LATENCY_TOLERANCE + 0.05))
    assert failing(slower) == ["bench/latency_ms_p50_b1_t1"]
    assert "**NO**" in {r[1]: r for r in md_rows(slower.markdown())}["bench/latency_ms_p50_b1_t1"]
    assert "1 metric(s) outside tolerance" in slower.markdown()
    assert failing(report(bench__latency_ms_p50_b32_t1=1042.56 * 0.6)) == ["bench/latency_ms_p50_b32_t1"]
    # quality exactly, sizes 1 %, and a metric the re-run did not record fails
    assert failing(report(eval__accuracy=0.973094 + 1e-9, train__loss=0.157048)) == ["eval/accuracy", "train/loss"]
    assert failing(report(size__disk_mb=90.873 * 1.005)) == []
    assert failing(report(size__disk_mb=90.873 * 1.02)) == ["size/disk_mb"]
    missing = Report("old", "new", [Check("teacher-fp32", "eval/accuracy", 0.97, None, *tolerance_for("eval/accuracy"))])
    assert not missing.ok and "missing" in missing.markdown()


def test_reproduce_refuses_when_code_or_data_changed(flow_run, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", flow_run["uri"])
    c = MlflowClient(flow_run["uri"])
    parent_id = flow_run["result"]["parent_run_id"]
    original = c.get_run(parent_id).data.tags
    try:
        c.set_tag(parent_id, "code_version", "0123456789abcdef")
        assert main(["reproduce", parent_id, "--output-dir", str(tmp_path / "a")]) == 2
        err = capsys.readouterr().err
        assert "tags.code_version" in err and "git checkout" in err and "--force" in err
        c.set_tag(parent_id, "code_version", original["code_version"])
        c.set_tag(parent_id, "data_fingerprint", "f" * 64)
        assert main(["reproduce", parent_id, "--output-dir", str(tmp_path / "b")]) == 2
        assert "tags.data_fingerprint" in capsys.readouterr().err
    finally:
        c.set_tag(parent_id, "code_version", original["code_version"])
        c.set_tag(parent_id, "data_fingerprint", original["data_fingerprint"])
    assert main(["reproduce", "0" * 32]) == 2


def test_dask_task_runner_fans_out_evaluation(flow_run, tiny_model_dir, monkeypatch, tmp_path):
    """A local Dask cluster (2 worker processes) evaluates the variants; numbers equal the thread runner's."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    from flows.mobile_bert import mobile_bert

    result = mobile_bert(profile="quick", overrides=overrides(tiny_model_dir, tmp_path / "out") + [
        f"variants={VARIANTS}", "execution.task_runner=dask", "execution.max_workers=2"])
    before = {r["variant"]: r for r in flow_run["result"]["variants"]}
    for r in result["variants"]:
        assert r["eval/accuracy"] == before[r["variant"]]["eval/accuracy"]
        assert r["eval/macro_f1"] == before[r["variant"]]["eval/macro_f1"]
    # the evaluations ran in the Dask worker processes, not in this one (the thread runner's ran here)
    assert os.getpid() not in {r["eval_pid"] for r in result["variants"]}
    assert {r["eval_pid"] for r in flow_run["result"]["variants"]} == {os.getpid()}
