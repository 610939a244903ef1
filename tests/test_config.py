from pathlib import Path

import pytest
import yaml

from flows.cli import main
from tasks.core.config import ConfigError, load_config, parse_overrides


def write(tmp_path: Path, body: dict) -> Path:
    p = tmp_path / "study.yaml"
    p.write_text(yaml.safe_dump(body))
    return p


def test_packaged_profiles_validate():
    quick = load_config("mobile-bert", "quick")
    full = load_config("mobile-bert", "full")
    assert quick.model.source == "packaged:minilm-l6" and quick.data.source == "bbc"
    assert full.model.source == "bert-base-uncased" and full.data.source.startswith("hf:")
    assert quick.profile == "quick"


def test_set_overrides_are_typed_and_merged_last():
    cfg = load_config("mobile-bert", "quick", ["train.epochs=2", "benchmark.batch_sizes=[1, 8]", "data.max_samples=50"])
    assert cfg.train.epochs == 2.0
    assert cfg.benchmark.batch_sizes == [1, 8]
    assert cfg.data.max_samples == 50


@pytest.mark.parametrize(
    "body, key, fragment",
    [
        ({"train": {"epocs": 1}}, "train.epocs", "unknown key"),
        ({"train": {"epochs": "many"}}, "train.epochs", "valid number"),
        ({"train": {"learning_rate": -1}}, "train.learning_rate", "greater than 0"),
        ({"data": {"source": "csv", "path": "/nonexistent/x.csv"}}, "data.path", "not found"),
        ({"data": {"source": "csv"}}, "data.path", "needs data.path"),
        ({"data": {"source": "ftp"}}, "data.source", "unknown data source"),
        ({"benchmark": {"threads": [0]}}, "benchmark.threads", "positive"),
        ({"bogus_section": {}}, "bogus_section", "unknown key"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path, body, key, fragment):
    path = write(tmp_path, {**body, "profiles": {"quick": {}}})
    with pytest.raises(ConfigError) as exc:
        load_config("mobile-bert", "quick", path=path)
    msg = str(exc.value)
    assert str(path) in msg and f"key '{key}'" in msg and fragment in msg, msg


def test_unknown_profile_and_bad_yaml(tmp_path):
    path = write(tmp_path, {"profiles": {"quick": {}}})
    with pytest.raises(ConfigError, match="unknown profile 'fast'"):
        load_config("mobile-bert", "fast", path=path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config("mobile-bert", "quick", path=bad)


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_overrides(["train.epochs"])
    with pytest.raises(ConfigError, match="train.epocs"):
        load_config("mobile-bert", "quick", ["train.epocs=1"])


def test_cli_exit_code_2_and_message(capsys, mlflow_uri):
    assert main(["run", "mobile-bert", "--set", "train.epochs=-1"]) == 2
    err = capsys.readouterr().err
    assert "mobile_bert.yaml" in err and "train.epochs" in err
    assert main(["run", "no-such-study"]) == 2
    assert main(["validate", "mobile-bert"]) == 0
    # a config error creates no MLflow run
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri)
    assert client.search_experiments(filter_string="name = 'effilm/mobile-bert'") == []
