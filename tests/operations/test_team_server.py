"""The team tracking server: `mlflow server` on a real PostgreSQL backend store with a proxied artifact root.
Four flow runs at once (separate processes, as four users would) lose nothing: every run, metric, artifact and
registered model version is there, and each flow's reported version is its own. The flows report to one Prefect
server (the session's), as a team's flows do."""

import pytest
from mlflow import MlflowClient

from tests.reliability.helpers import flows_at_once
from tests.services import mlflow_server, postgres

pytestmark = pytest.mark.integration

VARIANT = "variants=[{name: int8, steps: [{technique: quantize}]}]"


def test_flows_at_once_against_mlflow_server_on_postgresql(tiny_model_dir, tmp_path, monkeypatch):
    with postgres(tmp_path) as db, mlflow_server(db, tmp_path) as uri:
        n = 4
        # constraints every variant meets, so that every flow must register (the test is about the registry, not
        # about latency on a loaded 2-core machine)
        runs = flows_at_once(tiny_model_dir, tmp_path, uri, n, own_prefect_server=False, variants=VARIANT.split("=", 1)[1],
                             **{"constraints.max_latency_ms": 100000, "constraints.max_size_mb": 100000,
                                "constraints.max_accuracy_drop": 1})
        c = MlflowClient(uri)
        assert sorted(r.data.tags["variant"] for r in runs) == sorted(["parent", "teacher-fp32", "int8"] * n)
        parents = [r for r in runs if r.data.tags["variant"] == "parent"]
        for r in runs:
            assert r.info.status == "FINISHED", r.info
            assert r.data.tags["env.torch"] and r.data.tags["code_version"]
            if r.data.tags["variant"] == "parent":
                assert {"config/resolved.yaml"} <= {a.path for a in c.list_artifacts(r.info.run_id, "config")}
                assert "report/variants.csv" in {a.path for a in c.list_artifacts(r.info.run_id, "report")}
                assert {d.dataset.name for d in r.inputs.dataset_inputs} == {"bbc-train", "bbc-val", "bbc-test"}
                assert r.data.params["train.max_steps"] == "4"
                continue
            assert r.data.tags["mlflow.parentRunId"] in {p.info.run_id for p in parents}
            for key in ("eval/accuracy", "bench/latency_ms_p50_b1_t1", "size/disk_mb"):
                assert key in r.data.metrics, (r.data.tags["variant"], key)
            assert "model/MLmodel" in {a.path for a in c.list_artifacts(r.info.run_id, "model")}
            assert "eval/confusion_matrix.png" in {a.path for a in c.list_artifacts(r.info.run_id, "eval")}
            if r.data.tags["variant"] == "teacher-fp32":
                assert len(c.get_metric_history(r.info.run_id, "train/loss")) == 4
        # every flow registered its selection in the shared registry (PostgreSQL): one version each, no duplicates,
        # and the version each flow reported is the one pointing at that flow's selected run
        versions = c.search_model_versions("name = 'effilm-mobile-bert'")
        assert len(versions) == n, [(v.version, v.run_id) for v in versions]
        assert len({v.run_id for v in versions}) == n
        children = {}
        for r in runs:
            children.setdefault(r.data.tags.get("mlflow.parentRunId"), []).append(r)
        for p in parents:
            reported = p.data.tags["registered_version"]
            mv = c.get_model_version("effilm-mobile-bert", reported)
            selected = [r for r in children[p.info.run_id] if r.data.tags.get("selected") == "true"]
            assert len(selected) == 1 and mv.run_id == selected[0].info.run_id, (reported, mv.run_id)
            assert selected[0].data.tags["registered_version"] == reported
        assert c.get_model_version_by_alias("effilm-mobile-bert", "mobile").version in {v.version for v in versions}
        # and a model comes back through the server's artifact proxy
        from tasks.core import models, tracking

        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        local = tracking.download_model(versions[0].run_id, dst=str(tmp_path / "dl"))
        assert models.read_manifest(local)["labels"]
