"""End to end: the real mobile-bert flow (Prefect engine, MLflow sqlite store) on a small BBC slice, tiny model."""

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from flows.cli import main
from tasks.core import models

pytestmark = pytest.mark.integration


def overrides(tiny_model_dir, out):
    return [
        f"model.source={tiny_model_dir}", "model.max_length=64", f"output_dir={out}",
        "data.max_samples=120", "train.max_steps=4", "train.batch_size=8", "train.checkpoint_every=2",
        "benchmark.seq_len=32", "benchmark.batch_sizes=[1, 4]", "benchmark.iters=3", "benchmark.warmup=1",
        "benchmark.max_seconds=1", "variants=[]",
    ]


def task_states(flow_run_id: str) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name.rsplit("-", 1)[0]: r.state.name for r in runs}


def test_flow_end_to_end_and_cached_rerun(tiny_model_dir, mlflow_uri, tmp_path, capsys):
    args = ["run", "mobile-bert", "--profile", "quick"]
    for o in overrides(tiny_model_dir, tmp_path / "out"):
        args += ["--set", o]
    assert main(args) == 0

    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name("effilm/mobile-bert")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 1
    parent, teacher = parents[0], children[0]
    assert parent.info.status == teacher.info.status == "FINISHED"
    assert teacher.data.tags["mlflow.parentRunId"] == parent.info.run_id

    tags = teacher.data.tags
    assert tags["variant"] == "teacher-fp32" and tags["technique"] == "baseline" and tags["case_study"] == "mobile-bert"
    assert tags["profile"] == "quick" and len(tags["data_fingerprint"]) == 64 and tags["git_sha"]
    m = teacher.data.metrics
    for key in ("eval/accuracy", "eval/macro_f1", "bench/latency_ms_p50_b1_t1", "bench/latency_ms_p95_b1_t1",
                "bench/latency_ms_p50_b4_tall", "bench/throughput_b4", "bench/peak_rss_mb", "size/disk_mb", "size/params"):
        assert key in m, key
    assert [p.step for p in client.get_metric_history(teacher.info.run_id, "train/loss")] == [1, 2, 3, 4]

    artifacts = {a.path for a in client.list_artifacts(teacher.info.run_id, "eval")}
    assert "eval/confusion_matrix.png" in artifacts
    parent_files = {a.path for a in client.list_artifacts(parent.info.run_id, "config")}
    assert "config/resolved.yaml" in parent_files
    env_files = {a.path for a in client.list_artifacts(parent.info.run_id, "environment")}
    assert "environment/requirements-freeze.txt" in env_files
    assert parent.data.params["train.max_steps"] == "4"
    assert {d.dataset.name for d in parent.inputs.dataset_inputs} == {"bbc-train", "bbc-val", "bbc-test"}

    # the logged model loads back from MLflow and predicts labels
    model = mlflow.pyfunc.load_model(f"runs:/{teacher.info.run_id}/model")
    pred = model.predict(pd.DataFrame({"text": ["Shares rose after the bank's profits beat forecasts."]}))
    assert pred.loc[0, "label"] in {"business", "entertainment", "politics", "sports", "tech"}
    from tasks.core import models, tracking

    local = tracking.download_model(teacher.info.run_id, dst=str(tmp_path / "dl"))
    assert models.read_manifest(local)["labels"] == ["business", "entertainment", "politics", "sports", "tech"]

    first_states = task_states(parent.data.tags["prefect_flow_run_id"])
    assert first_states["fine-tune-teacher"] == "Completed"

    # second run, nothing changed: training, evaluation and benchmark come from Prefect's cache
    assert main(args) == 0
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])
    new_parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags][0]
    states = task_states(new_parent.data.tags["prefect_flow_run_id"])
    assert states["fine-tune-teacher"] == "Cached" and states["evaluate"] == "Cached" and states["benchmark"] == "Cached"
    new_teacher = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == new_parent.info.run_id][0]
    assert new_teacher.data.metrics["eval/accuracy"] == m["eval/accuracy"]

    # a code-relevant input change (more steps) retrains
    assert main(args + ["--set", "train.max_steps=5"]) == 0
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])
    third = [r for r in runs if "mlflow.parentRunId" not in r.data.tags][0]
    assert task_states(third.data.tags["prefect_flow_run_id"])["fine-tune-teacher"] == "Completed"
    assert all(r.info.status == "FINISHED" for r in runs)


VARIANTS = ("[{name: int8, steps: [{technique: quantize, embeddings: true}]},"
            " {name: l1-50, steps: [{technique: prune_unstructured, sparsity: 0.5}]},"
            " {name: onnx8, steps: [{technique: export, format: onnx, quantize: int8}]},"
            " {name: one-layer, steps: [{technique: layer_reduce, keep: 1, finetune: {max_steps: 2}}]},"
            " {name: one-layer-int8, source: one-layer, steps: [{technique: quantize}]}]")


def test_flow_variants_selection_and_registry(tiny_model_dir, mlflow_uri, tmp_path):
    from flows.mobile_bert import mobile_bert

    sets = overrides(tiny_model_dir, tmp_path / "out") + [
        f"variants={VARIANTS}", "constraints.max_latency_ms=10000", "constraints.max_size_mb=10000",
        "constraints.max_accuracy_drop=1.0", "select.objective=size"]
    result = mobile_bert(profile="quick", overrides=sets)
    names = [r["variant"] for r in result["variants"]]
    assert names == ["teacher-fp32", "int8", "l1-50", "onnx8", "one-layer", "one-layer-int8"]
    by = {r["variant"]: r for r in result["variants"]}
    for r in result["variants"]:
        assert {"eval/accuracy", "bench/latency_ms_p50_b1_t1", "size/disk_mb"} <= set(r), r["variant"]
    assert by["int8"]["technique"] == "quantize"
    # agreement with the source variant and accuracy, recomputed from the saved predictions and the test split
    (test_split,) = (tmp_path / "out").rglob("test.parquet")
    labels = models.read_manifest(by["teacher-fp32"]["model_dir"])["labels"]
    y_true = np.array([labels.index(l) for l in pd.read_parquet(test_split)["label"]])
    preds = {r["variant"]: np.load(r["predictions"]) for r in result["variants"]}
    for r in result["variants"]:
        assert len(preds[r["variant"]]) == len(y_true) == r["eval/num_samples"], r["variant"]
        assert r["eval/accuracy"] == pytest.approx(float(np.mean(preds[r["variant"]] == y_true)), abs=1e-12), r["variant"]
    for name, source in {"int8": "teacher-fp32", "l1-50": "teacher-fp32", "onnx8": "teacher-fp32",
                         "one-layer": "teacher-fp32", "one-layer-int8": "one-layer"}.items():
        assert by[name]["eval/agreement_with_source"] == pytest.approx(
            float(np.mean(preds[name] == preds[source])), abs=1e-12), name
    assert "eval/agreement_with_source" not in by["teacher-fp32"]
    assert by["int8"]["size/disk_mb"] < by["teacher-fp32"]["size/disk_mb"]
    # the smallest variant wins under the size objective, and is registered as @mobile
    smallest = min(result["variants"], key=lambda r: r["size/disk_mb"])
    assert result["selected"] == smallest["variant"]
    client = MlflowClient(mlflow_uri)
    mv = client.get_model_version_by_alias("effilm-mobile-bert", "mobile")
    assert mv.run_id == smallest["run_id"]
    loaded = mlflow.pyfunc.load_model("models:/effilm-mobile-bert@mobile")
    assert len(loaded.predict(pd.DataFrame({"text": ["a football match", "a new phone"]}))) == 2
    parent = client.get_run(result["parent_run_id"])
    assert "report/pareto.png" in {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    child = client.get_run(by["one-layer-int8"]["run_id"])
    assert child.data.tags["source_variant"] == "one-layer" and child.data.tags["mlflow.parentRunId"] == parent.info.run_id

    # impossible constraints (relative to the teacher: 1000x faster and smaller): nothing registered, the message
    # names the nearest variants and the misses, in the absolute limits the teacher's measurement gives
    impossible = sets[:-4] + ["constraints.min_speedup=1000", "constraints.min_size_ratio=1000"]
    again = mobile_bert(profile="quick", overrides=impossible)
    assert again["selected"] is None and again["registered"] is None
    tag = client.get_run(again["parent_run_id"]).data.tags["selection"]
    assert "no variant meets the constraints" in tag and "over by" in tag
    teacher_ms = next(r for r in again["variants"] if r["variant"] == "teacher-fp32")["bench/latency_ms_p50_b1_t1"]
    assert f"max_latency_ms={teacher_ms / 1000}" in tag
    assert len(client.search_model_versions("name = 'effilm-mobile-bert'")) == 1
