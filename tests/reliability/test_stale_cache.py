"""Caching cannot serve a stale model: a work folder is keyed by its inputs *and* the code version of the technique
that writes it. Changing a technique's code rebuilds that technique's folder (and the result differs), while the
teacher, whose code did not change, is reused; an unchanged re-run reuses everything."""

import shutil
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from tasks import PROJECT_ROOT
from tasks.core import models
from tests.reliability.helpers import env_for, tiny_args

pytestmark = pytest.mark.integration

# appended to the copy's quantize.py: from now on, embeddings are quantized too (a real change of the result)
CHANGE = '''

_compress_before_change = compress


def compress(model_dir, step, ctx):
    return _compress_before_change(model_dir, step.model_copy(update={"embeddings": True}), ctx)
'''


def run_flow(project, args, env) -> None:
    proc = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=project, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


def folders(out, name):
    return sorted(p for p in (out / name).iterdir() if (p / models.MANIFEST).is_file() or (p / "model").is_dir())


def test_changed_technique_code_rebuilds_its_folder_and_nothing_else(tiny_model_dir, tmp_path):
    project = tmp_path / "effilm"  # a checkout of effilm whose code the test edits
    for part in ("tasks", "flows", "case_studies"):
        shutil.copytree(PROJECT_ROOT / part, project / part, ignore=shutil.ignore_patterns("__pycache__"))
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**env_for(tmp_path, uri), "PYTHONPATH": str(project)}
    args = tiny_args(tiny_model_dir, out, variants="[{name: int8, steps: [{technique: quantize}]}]")

    run_flow(project, args, env)
    [teacher], [int8] = folders(out, "teacher"), folders(out, "variants")
    before = models.read_manifest(int8)
    assert before["quantized_embeddings"] == []

    with open(project / "tasks" / "compress" / "quantize.py", "a") as fh:
        fh.write(CHANGE)
    run_flow(project, args, env)
    assert folders(out, "teacher") == [teacher]  # training code unchanged: the teacher is reused, not retrained
    rebuilt = [p for p in folders(out, "variants") if p != int8]
    assert len(rebuilt) == 1  # the changed technique wrote a new folder ...
    after = models.read_manifest(rebuilt[0])
    assert after["quantized_embeddings"] and models.disk_size_mb(rebuilt[0]) < models.disk_size_mb(int8)  # ... unlike before
    assert models.read_manifest(int8) == before  # and the old one is left as it was

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("effilm/mobile-bert").experiment_id
    sizes = [r.data.metrics["size/disk_mb"] for r in c.search_runs([exp], "tags.variant = 'int8'",
                                                                   order_by=["attributes.start_time ASC"])]
    assert len(sizes) == 2 and sizes[1] < sizes[0]  # the second flow measured the rebuilt model

    run_flow(project, args, env)  # unchanged code and inputs: nothing new is built
    assert folders(out, "teacher") == [teacher] and len(folders(out, "variants")) == 2
