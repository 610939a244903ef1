"""`effilm compare`, `effilm reproduce` and the Dask fan-out, on the real flow (tiny model, small BBC slice)."""

import csv
import os

import pytest
from mlflow import MlflowClient

from flows.cli import main
from tests.test_flow_mobile_bert import overrides

pytestmark = pytest.mark.integration

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
    assert "| int8 | quantize |" in next(tmp_path.glob("*.md")).read_text()

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
    # a tiny model's latency is ~1 ms of mostly noise: this test judges accuracy/loss/size exactly, latency loosely
    assert main(["reproduce", teacher["run_id"], "--output-dir", str(tmp_path / "re"), "--latency-tolerance", "5"]) == 0
    out = capsys.readouterr().out
    assert "| teacher-fp32 | eval/accuracy |" in out and "**reproduced**" in out
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
