"""Bad configuration: one clear message naming the file and key, exit code 2, no MLflow run."""

import pytest
from mlflow import MlflowClient

from flows.cli import main


def no_runs(uri):
    exp = MlflowClient(uri).get_experiment_by_name("effilm/mobile-bert")
    return exp is None or not MlflowClient(uri).search_runs([exp.experiment_id])


@pytest.mark.parametrize("override, key, fragment", [
    ("train.epocs=1", "train.epocs", "unknown key"),
    ("train.batch_size=big", "train.batch_size", "valid integer"),
    ("variants=[{name: x, steps: [{technique: prune_unstructured, sparsity: 1.5}]}]", "sparsity", "less than 1"),
    ("variants=[{name: x, steps: [{technique: distill, temperature: 0}]}]", "temperature", "greater than 0"),
    ("variants=[{name: x, steps: [{technique: shrink}]}]", "variants.0.steps.0", "technique"),
    ("variants=[{name: ../escape, steps: [{technique: quantize}]}]", "variants.0.name", "pattern"),
    ("variants=[{name: a, source: b, steps: [{technique: quantize}]}]", "variants.0.source", "earlier variant"),
    ("data.source=csv", "data.path", "needs data.path"),
    ("constraints.max_accuracy_drop=2", "constraints.max_accuracy_drop", "less than or equal to 1"),
    ("benchmark.seq_len=256", "benchmark.seq_len", "contradicts model.max_length"),
])
def test_bad_config_exit_2_and_no_run(override, key, fragment, mlflow_uri, capsys):
    assert main(["run", "mobile-bert", "--set", override]) == 2
    err = capsys.readouterr().err
    assert "mobile_bert.yaml" in err and key in err and fragment in err, err
    assert no_runs(mlflow_uri)


def test_unknown_model_offline_exit_2_no_run(mlflow_uri, capsys, tmp_path):
    assert main(["run", "mobile-bert", "--set", "model.source=nobody/no-such-model", "--set", f"output_dir={tmp_path}",
                 "--set", "data.max_samples=60", "--set", "variants=[]"]) == 2
    err = capsys.readouterr().err
    assert "model.source" in err and "packaged:minilm-l6" in err
    assert no_runs(mlflow_uri)


def test_unknown_dataset_offline_exit_2_no_run(mlflow_uri, capsys, tmp_path):
    assert main(["run", "mobile-bert", "--set", "data.source=hf:nobody/no-such-data", "--set", f"output_dir={tmp_path}"]) == 2
    assert "offline default is data.source=bbc" in capsys.readouterr().err
    assert no_runs(mlflow_uri)


def test_missing_data_file_named(mlflow_uri, capsys):
    assert main(["run", "mobile-bert", "--set", "data.source=jsonl", "--set", "data.path=/no/such/file.jsonl"]) == 2
    err = capsys.readouterr().err
    assert "data.path" in err and "/no/such/file.jsonl" in err
