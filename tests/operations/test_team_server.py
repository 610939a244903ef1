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


def test_a_search_study_on_postgresql_has_its_own_schema_and_recovers_a_silent_hosts_trial(tmp_path):
    """`effilm search` against a PostgreSQL tracking store: the study lives in schema `optuna` of the same database
    (MLflow's tables stay in `public`), and a trial of a searcher on another host whose heartbeat went silent is
    queued again by the next search that opens the study, while a live host's trial is left to it."""
    import time

    import sqlalchemy as sa

    from tasks.core.config import SearchConfig
    from tasks.search import recipes, study as studies

    with postgres(tmp_path) as db:
        url = studies.storage_url(db, tmp_path / "out")
        cfg = SearchConfig(sampler="random")
        study = studies.open_study("team", url, cfg)
        live, gone = study.ask(), study.ask()
        drawn = {}
        for t, host in ((live, "host-a"), (gone, "host-b")):
            drawn[host] = recipes.suggest(t, cfg.space, 6)
            t.set_user_attr("owner", {"host": host, "pid": 5})
        study.set_user_attr("heartbeat:host-a:5", time.time() - 20)
        study.set_user_attr("heartbeat:host-b:5", time.time() - 900)
        again = studies.open_study("team", studies.storage_url(db, tmp_path / "out"), cfg)
        assert studies.recover_interrupted(again) == [gone.number]
        retry = again.ask()
        assert retry.user_attrs["retry_of"] == gone.number and recipes.suggest(retry, cfg.space, 6) == drawn["host-b"]
        engine = sa.create_engine(db)
        with engine.connect() as conn:
            tables = set(conn.execute(sa.text("SELECT table_schema, table_name FROM information_schema.tables "
                                              "WHERE table_schema IN ('optuna', 'public')")).all())
        engine.dispose()
        assert ("optuna", "studies") in tables and ("optuna", "trials") in tables
        assert not {name for schema, name in tables if schema == "public"} & {"studies", "trials"}
