"""Two flow runs at once on the embedded sqlite store; safe defaults."""

import pytest
from mlflow import MlflowClient

from tasks.core import config, models, orchestrate, tracking
from tests.reliability.helpers import flows_at_once


@pytest.mark.integration
def test_two_flows_at_once_on_sqlite(tiny_model_dir, tmp_path):
    rs = flows_at_once(tiny_model_dir, tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}", 2)
    assert sorted(r.data.tags["variant"] for r in rs) == ["parent", "parent", "teacher-fp32", "teacher-fp32"]
    assert all(r.info.status == "FINISHED" and "eval/accuracy" in r.data.metrics for r in rs if r.data.tags["variant"] != "parent")


def test_busy_store_message_says_what_to_do(tiny_model_dir, mlflow_uri, tmp_path, monkeypatch, capsys):
    """sqlite reports "database is locked" on every try: `effilm run` exits 1 with a message that names the store and
    the problem and says what to do (run one at a time, or use an `mlflow server`); no run is left behind."""
    import sqlite3

    import mlflow
    from sqlalchemy.exc import OperationalError

    from flows.cli import main
    from tasks import PROJECT_ROOT

    locked = OperationalError("INSERT INTO runs ...", {}, sqlite3.OperationalError("database is locked"))
    assert tracking._busy(locked) and tracking._busy(Exception("database is busy"))
    assert not tracking._busy(Exception("(sqlite3.IntegrityError) UNIQUE constraint failed: runs.run_uuid"))

    attempts = []

    def create_run(self, *a, **kw):
        attempts.append(1)
        raise locked

    monkeypatch.setattr(mlflow.MlflowClient, "create_run", create_run)
    monkeypatch.setattr(tracking, "_pause", lambda s: None)
    code = main(["run", "mobile-bert", "--set", f"model.source={tiny_model_dir}", "--set", "model.max_length=64",
                 "--set", "benchmark.seq_len=32", "--set", f"output_dir={tmp_path / 'out'}",
                 "--set", "data.max_samples=60", "--set", "variants=[]"])
    err = capsys.readouterr().err
    assert code == 1, err  # not a config error (2): nothing is wrong with the command
    assert len(attempts) == tracking.RETRIES + 1  # retried as transient first, then given up
    line = err[err.index("effilm: error:"):]  # one message (sqlite's own text inside it may span lines)
    # the problem: which store, and that another writer holds it
    assert f"the MLflow store {mlflow_uri} is locked by another writer" in line, err
    assert "database is locked" in line, err
    # what to do
    assert "run flows one after another" in line, err
    assert "point MLFLOW_TRACKING_URI at an `mlflow server`" in line, err
    assert "(see docs/reliability.md)" in line and (PROJECT_ROOT / "docs" / "reliability.md").is_file()
    exp = MlflowClient(mlflow_uri).get_experiment_by_name("effilm/mobile-bert")
    assert exp is None or not MlflowClient(mlflow_uri).search_runs([exp.experiment_id])


def test_ui_binds_loopback_by_default():
    from flows.cli import build_parser

    a = build_parser().parse_args(["ui"])
    assert a.host == "127.0.0.1"


def test_paths_cannot_escape_output_folder(tmp_path):
    assert orchestrate.safe_join(tmp_path, "a", "b") == (tmp_path / "a" / "b").resolve()
    with pytest.raises(ValueError, match="outside the output folder"):
        orchestrate.safe_join(tmp_path, "..", "etc")
    with pytest.raises(ValueError, match="outside the output folder"):
        orchestrate.safe_join(tmp_path, "/etc/passwd")


ARCH_VARIANT = "variants=[{name: arch, steps: [{technique: architecture, model: google/mobilebert-uncased}]}]"


def test_trust_remote_code_off_by_default(tiny_model_dir, tmp_path):
    """Neither the teacher nor an `architecture` step (the one step that loads someone else's model) trusts remote
    code unless the config says so, and with the default a model folder that ships code is refused, its code unrun."""
    import json
    import shutil

    cfg = config.load_config("mobile-bert", "quick", [ARCH_VARIANT])
    assert cfg.model.trust_remote_code is False
    (step,) = cfg.variants[0].steps
    assert step.technique == "architecture" and step.model == "google/mobilebert-uncased"
    assert step.trust_remote_code is False
    assert step.model_dump(mode="json", exclude_none=True)["trust_remote_code"] is False  # also once serialized
    # the shipped full profile's architecture variants keep the default
    full = config.load_config("mobile-bert", "full")
    arch = [s for v in full.variants for s in v.steps if s.technique == "architecture"]
    assert arch and all(s.trust_remote_code is False for s in arch)
    # the field is real: opting in is read back (a renamed or dropped field would fail here, not pass silently)
    opted_in = ARCH_VARIANT.replace("google/mobilebert-uncased}", "google/mobilebert-uncased, trust_remote_code: true}")
    assert config.load_config("mobile-bert", "quick", [opted_in]).variants[0].steps[0].trust_remote_code is True

    # what "off" means: a folder whose config maps to its own modeling code is refused, and that code never runs
    evidence = tmp_path / "ran"
    remote = tmp_path / "remote"
    shutil.copytree(tiny_model_dir, remote)
    c = json.loads((remote / "config.json").read_text())
    c.update(model_type="customarch", auto_map={"AutoConfig": "custom.CustomConfig",
                                                "AutoModelForSequenceClassification": "custom.CustomModel"})
    (remote / "config.json").write_text(json.dumps(c))
    (remote / "custom.py").write_text(f"open({str(evidence)!r}, 'w').close()\n"
                                      "from transformers import BertConfig, BertForSequenceClassification\n"
                                      "class CustomConfig(BertConfig):\n    model_type = 'customarch'\n"
                                      "class CustomModel(BertForSequenceClassification):\n    config_class = CustomConfig\n")
    with pytest.raises(ValueError, match=r"(?s)contains custom code.*`trust_remote_code=True`"):
        models.load_classifier(str(remote), ["a", "b"], step.trust_remote_code)
    assert not evidence.exists()


def test_pickle_weights_are_refused(tiny_model_dir, tmp_path):
    """A folder with only a pickled pytorch_model.bin is not loaded (safetensors only)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    m = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    d = tmp_path / "pickled"
    d.mkdir()
    m.config.save_pretrained(d)
    torch.save(m.state_dict(), d / "pytorch_model.bin")
    models.load_tokenizer(str(tiny_model_dir)).save_pretrained(d)
    with pytest.raises(config.ConfigError, match=r"^model\.source: key '.*pickled': cannot load model") as err:
        models.load_classifier(str(d), ["a", "b"])
    assert err.value.key == str(d)
    # refused because the weights are not safetensors (transformers' own error, kept as the context)
    assert "model.safetensors" in str(err.value.__context__), repr(err.value.__context__)


def test_malicious_checkpoint_pickle_is_not_executed(tiny_model_dir, tmp_path):
    """Trainer state (.pt, unavoidable for optimizer state) is read with weights_only=True: code in it never runs."""
    import pickle

    from tasks.core import train

    evidence = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(evidence), "w"))

    ckpt = tmp_path / "work" / "checkpoint"
    ckpt.mkdir(parents=True)
    with open(ckpt / train.STATE_FILE, "wb") as fh:
        pickle.dump({"step": 1, "x": Evil()}, fh)
    m = models.load_classifier(str(tiny_model_dir), ["a", "b"])
    tok = models.load_tokenizer(str(tiny_model_dir))
    cfg = {"epochs": 1, "batch_size": 2, "learning_rate": 1e-3, "weight_decay": 0.0, "warmup_ratio": 0.0,
           "max_grad_norm": 1.0, "checkpoint_every": 10, "max_steps": 2, "device": "cpu"}
    with pytest.raises(pickle.UnpicklingError):
        train.train_loop(m, tok, ["a b", "c d"], [0, 1], cfg, 0, 16, tmp_path / "work")
    assert not evidence.exists()


@pytest.mark.integration
def test_two_flows_at_once_against_an_mlflow_server(tiny_model_dir, tmp_path):
    """A real `mlflow server` on 127.0.0.1 (sqlite backend, proxied artifacts): two concurrent flows lose nothing.
    The flows report to one Prefect server, as on a team's machines (a temporary server per flow is
    test_two_flows_at_once_on_sqlite's case). (The PostgreSQL-backed team server is tests/operations/test_team_server.py.)"""
    from tests.services import mlflow_server

    with mlflow_server(f"sqlite:///{tmp_path / 'server.db'}", tmp_path, workers=1) as uri:
        rs = flows_at_once(tiny_model_dir, tmp_path, uri, 2, own_prefect_server=False)
        c = MlflowClient(uri)
        assert sorted(r.data.tags["variant"] for r in rs) == ["parent", "parent", "teacher-fp32", "teacher-fp32"]
        for r in rs:
            assert r.info.status == "FINISHED"
            if r.data.tags["variant"] == "teacher-fp32":
                assert "eval/accuracy" in r.data.metrics
                assert "model/MLmodel" in {a.path for a in c.list_artifacts(r.info.run_id, "model")}

def test_tracking_writes_retry_only_transient_store_errors(monkeypatch):
    monkeypatch.setattr(tracking, "_pause", lambda s: None)
    calls = []

    class Store:
        def log_inputs(self, run_id):
            calls.append(run_id)
            if len(calls) < 3:
                raise Exception("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id")
            return "ok"

        def log_batch(self, run_id):
            raise ValueError("bad metric value")

    c = tracking._RetryingClient(Store())
    assert c.log_inputs("r") == "ok" and len(calls) == 3
    with pytest.raises(ValueError, match="bad metric"):
        c.log_batch("r")


def test_creates_are_not_retried_blindly_but_after_looking_up_the_first_attempt(monkeypatch):
    monkeypatch.setattr(tracking, "_pause", lambda s: None)
    store: list[str] = []

    class Server:
        def create_model_version(self, token, lose_answer):
            store.append(token)  # the server did create it ...
            if lose_answer:
                raise Exception("API request failed: too many 500 error responses")  # ... but the answer was lost

    c = tracking._RetryingClient(Server())
    with pytest.raises(Exception, match="too many 500"):  # the wrapper does not retry a create on its own
        c.create_model_version("a", True)
    assert store == ["a"]

    attempts = iter([True, False])
    made = tracking.create_once("create", lambda: c.create_model_version("b", next(attempts)),
                                lambda: [t for t in store if t == "b"])
    assert made == "b" and store.count("b") == 1  # looked up after the failure: not created twice

    store.clear()
    failures = iter([Exception("database is locked"), None])

    def create_failing_before_effect():
        exc = next(failures)
        if exc:
            raise exc  # failed before anything was written
        store.append("c")

    assert tracking.create_once("create", create_failing_before_effect, lambda: [t for t in store if t == "c"]) == "c"
    assert store == ["c"]

    store[:] = ["d", "d"]  # an HTTP-level retry made two copies: the first is kept, the other removed
    assert tracking.create_once("create", lambda: None, lambda: [t for t in store if t == "d"], store.remove) == "d"
    assert store == ["d"]

    with pytest.raises(RuntimeError, match="cannot be found"):  # success reported, nothing there: fail loudly
        tracking.create_once("create", lambda: None, lambda: [])


def test_register_model_returns_a_version_pointing_at_the_run(mlflow_uri):
    run_a = tracking.start_run("effilm/test-registry", "a", {"variant": "a"})
    run_b = tracking.start_run("effilm/test-registry", "b", {"variant": "b"})
    assert tracking.register_model(run_a, "m", "mobile") == "1"
    assert tracking.register_model(run_b, "m", "mobile", {"variant": "b"}) == "2"
    c = tracking.client()
    assert [c.get_model_version("m", v).run_id for v in ("1", "2")] == [run_a, run_b]
    assert str(c.get_model_version_by_alias("m", "mobile").version) == "2"
    assert len(c.search_runs([c.get_experiment_by_name("effilm/test-registry").experiment_id])) == 2
