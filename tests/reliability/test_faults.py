"""Faults: SIGKILL during fine-tuning, distillation or export (ONNX, ExecuTorch): the next run resumes from the
checkpoint or rebuilds the half-written folder, and the killed run ends KILLED; a transient task error is retried
without duplicating MLflow runs; an interrupted write never leaves a complete-looking folder."""

import os
import signal
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tasks.core import models
from tasks.measure import runtimes
from tests.reliability.helpers import effilm, env_for, tiny_args

pytestmark = pytest.mark.integration


def runs(uri):
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("effilm/mobile-bert")
    return [] if exp is None else c.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def test_sigkill_during_fine_tuning_resumes_and_marks_killed(tiny_model_dir, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = env_for(tmp_path, uri)
    args = tiny_args(tiny_model_dir, tmp_path / "out", **{"train.max_steps": 60, "train.checkpoint_every": 10,
                                                            "train.batch_size": 16, "model.max_length": 128,
                                                            "data.max_samples": 400})
    proc = effilm(args, env)
    deadline = time.time() + 240
    ckpts = []
    while time.time() < deadline and not ckpts:
        ckpts = list((tmp_path / "out" / "teacher").glob("*/checkpoint/trainer_state.pt"))
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    assert ckpts, "no checkpoint appeared"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert [r.info.status for r in runs(uri)] == ["RUNNING"]  # SIGKILL leaves it RUNNING ...

    again = effilm(args, env)
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out[-3000:]
    all_runs = runs(uri)
    killed = all_runs[0]
    assert killed.info.status == "KILLED" and "effilm.reaped" in killed.data.tags  # ... until the next flow reaps it
    teacher = [r for r in all_runs if r.data.tags.get("variant") == "teacher-fp32"][0]
    assert teacher.info.status == "FINISHED"
    assert teacher.data.metrics["train/resumed_from_step"] >= 10  # resumed, not restarted
    assert not list((tmp_path / "out" / "teacher").glob("*/checkpoint"))  # checkpoint cleaned after success


def kill_when(proc, ready, what: str, timeout: float = 300) -> None:
    """SIGKILL the flow's whole process group as soon as ``ready()`` (the flow must still be running then)."""
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, f"the flow ended before {what}:\n" + proc.stdout.read()[-3000:]
        assert time.time() < deadline, f"no {what} within {timeout}s"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


def rerun_after_kill(args, env, uri) -> list:
    """The killed flow left its parent run RUNNING; the next flow reaps it (KILLED) and finishes. -> all runs."""
    assert [r.info.status for r in runs(uri)] == ["RUNNING"]
    again = effilm(args, env)
    out, _ = again.communicate(timeout=900)
    assert again.returncode == 0, out[-3000:]
    all_runs = runs(uri)
    assert all_runs[0].info.status == "KILLED" and "effilm.reaped" in all_runs[0].data.tags
    assert all(r.info.status == "FINISHED" for r in all_runs[1:])
    return all_runs


def test_sigkill_during_distillation_resumes_and_marks_killed(tiny_model_dir, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = env_for(tmp_path, uri)
    out = tmp_path / "out"
    kd = "[{name: kd, steps: [{technique: distill, keep: 1, finetune: {max_steps: 60}}]}]"
    args = tiny_args(tiny_model_dir, out, variants=kd, **{"train.checkpoint_every": 10, "train.batch_size": 16,
                                                          "model.max_length": 128, "data.max_samples": 400})
    kill_when(effilm(args, env), lambda: list(out.glob("variants/*.work/checkpoint/trainer_state.pt")),
              "distillation checkpoint")
    folders = [p for p in (out / "variants").iterdir() if not p.name.endswith((".work", ".partial"))]
    assert not any((p / models.MANIFEST).exists() for p in folders)  # nothing complete-looking was left

    all_runs = rerun_after_kill(args, env, uri)
    student = [r for r in all_runs if r.data.tags.get("variant") == "kd"][0]
    assert "eval/accuracy" in student.data.metrics
    done = [p for p in (out / "variants").iterdir() if (p / models.MANIFEST).is_file()]
    assert len(done) == 1
    manifest = models.read_manifest(done[0])
    assert manifest["train"]["resumed_from_step"] >= 10 and manifest["train"]["steps"] == 60  # resumed, not restarted
    assert manifest["kept_layers"] == [0]
    assert not list(out.glob("variants/*.work/checkpoint"))  # checkpoint cleaned after success


@pytest.mark.parametrize("fmt", ["onnx", "pte"])
def test_sigkill_during_export_rebuilds_the_half_written_folder(fmt, tiny_model_dir, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out, marker = tmp_path / "out", tmp_path / "paused"
    step = "{technique: export, format: onnx, quantize: int8}" if fmt == "onnx" else \
        "{technique: export, format: pte, seq_len: 64}"
    args = tiny_args(tiny_model_dir, out, variants=f"[{{name: exported, steps: [{step}]}}]")
    # paused with the weights written and the manifest not yet: the worst moment to die
    paused_env = env_for(tmp_path, uri, EFFILM_PAUSE_BEFORE_MANIFEST=fmt, EFFILM_FAULT_MARKER=str(marker))
    kill_when(effilm(args, paused_env, module="tests.reliability.inject"), marker.exists, f"{fmt} export")
    partial = [p for p in (out / "variants").iterdir() if p.name.endswith(".partial")]
    assert len(partial) == 1 and (partial[0] / f"model.{fmt}").is_file()
    final = partial[0].with_name(partial[0].name[: -len(".partial")])
    with pytest.raises(FileNotFoundError):  # the half-written folder is never taken for a model
        models.read_manifest(final)

    all_runs = rerun_after_kill(args, env_for(tmp_path, uri), uri)
    exported = [r for r in all_runs if r.data.tags.get("variant") == "exported"][0]
    assert exported.data.metrics["eval/accuracy"] == pytest.approx(
        [r for r in all_runs if r.data.tags.get("variant") == "teacher-fp32"][0].data.metrics["eval/accuracy"], abs=0.05)
    assert models.read_manifest(final)["format"] == fmt and not partial[0].exists()
    run, _, _ = runtimes.load_for_inference(final)  # the rebuilt folder loads in its runtime


def test_transient_error_is_retried_without_duplicate_runs(tiny_model_dir, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    marker = tmp_path / "fault-fired"
    env = env_for(tmp_path, uri, EFFILM_INJECT_FAULT="benchmark", EFFILM_FAULT_MARKER=str(marker))
    proc = effilm(tiny_args(tiny_model_dir, tmp_path / "out"), env, module="tests.reliability.inject")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert marker.read_text() == "benchmark"  # it did fail once (then Prefect retried the task) ...
    all_runs = runs(uri)
    assert sorted(r.data.tags["variant"] for r in all_runs) == ["parent", "teacher-fp32"]  # ... and no run doubled
    assert all(r.info.status == "FINISHED" for r in all_runs)


def test_interrupted_write_leaves_no_complete_folder(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(KeyboardInterrupt):
        with models.atomic_dir(target) as tmp:
            (tmp / "model.safetensors").write_bytes(b"half")
            raise KeyboardInterrupt
    assert not target.exists() and not Path(str(target) + ".partial").exists()
    # a killed process leaves only a .partial folder, which is never read as a model
    (tmp_path / "m2.partial").mkdir()
    with pytest.raises(FileNotFoundError):
        models.read_manifest(tmp_path / "m2")


def test_flow_exception_marks_run_failed(tiny_model_dir, tmp_path, mlflow_uri, monkeypatch):
    from flows.mobile_bert import mobile_bert
    from tasks.core import tracking

    sets = tiny_args(tiny_model_dir, tmp_path / "out")[5::2]

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(tracking, "log_model", broken)
    with pytest.raises(OSError, match="disk full"):
        mobile_bert(profile="quick", overrides=sets)
    statuses = {r.data.tags["variant"]: r.info.status for r in runs(mlflow_uri)}
    assert statuses == {"parent": "FAILED", "teacher-fp32": "FAILED"}
    assert "disk full" in [r for r in runs(mlflow_uri) if r.data.tags["variant"] == "parent"][0].data.tags["error"]
