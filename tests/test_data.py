import json

import pandas as pd
import pytest

from tasks.core import data
from tasks.core.config import ConfigError

TEXTS = {
    "sport": ["The striker scored twice in the final.", "A late goal won the cup.", "The team lost at home.",
              "Fans cheered the new coach.", "The match ended in a draw."],
    "tech": ["The phone ships with a faster chip.", "A new browser update fixes bugs.", "The startup built a search tool.",
             "Broadband speeds rose again.", "The console sold out quickly."],
}


def rows():
    return [{"body": t, "topic": lab} for lab, ts in TEXTS.items() for t in ts]


def cfg(**kw):
    base = {"source": "bbc", "path": None, "text_field": "text", "label_field": "label", "hf_config": None,
            "hf_split": "train", "max_samples": None, "val_fraction": 0.2, "test_fraction": 0.2}
    base.update(kw)
    return base


def check(df):
    assert list(df.columns[:2]) == ["text", "label"]
    assert set(df["label"]) == {"sport", "tech"} and len(df) == 10


def test_bbc_packaged_corpus(tmp_path):
    out = data.prepare(cfg(max_samples=None), 42, tmp_path)
    s = out["stats"]
    assert s["rows_read"] == 2225 and out["labels"] == ["business", "entertainment", "politics", "sports", "tech"]
    assert s["train"] + s["val"] + s["test"] == 2225
    test = pd.read_parquet(out["paths"]["test"])
    # stratified: every class in the test split in proportion
    assert test["label"].value_counts().min() >= 70
    # deterministic: same seed -> same split and fingerprint
    again = data.prepare(cfg(max_samples=None), 42, tmp_path)
    assert again["fingerprint"] == out["fingerprint"] and again["paths"] == out["paths"]


def test_csv_with_quoted_newline(tmp_path):
    p = tmp_path / "d.csv"
    df = pd.DataFrame(rows())
    df.loc[0, "body"] = "line one\nline two, with comma"
    df.to_csv(p, index=False)
    got, _ = data.read_source(cfg(source="csv", path=str(p), text_field="body", label_field="topic"))
    check(got)
    assert got.loc[0, "text"] == "line one\nline two, with comma"


def test_jsonl_and_broken_line_named(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows()) + "\n")
    got, _ = data.read_source(cfg(source="jsonl", path=str(p), text_field="body", label_field="topic"))
    check(got)
    p.write_text(json.dumps(rows()[0]) + "\n{broken\n")
    with pytest.raises(ConfigError, match="line 2"):
        data.read_source(cfg(source="jsonl", path=str(p), text_field="body", label_field="topic"))


def test_parquet_and_missing_column(tmp_path):
    p = tmp_path / "d.parquet"
    pd.DataFrame(rows()).to_parquet(p)
    got, _ = data.read_source(cfg(source="parquet", path=str(p), text_field="body", label_field="topic"))
    check(got)
    with pytest.raises(ConfigError, match=r"data.text_field.*'text' not found; columns are: body, topic"):
        data.read_source(cfg(source="parquet", path=str(p)))


def test_folder_source(tmp_path):
    for lab, ts in TEXTS.items():
        (tmp_path / lab).mkdir()
        for i, t in enumerate(ts):
            (tmp_path / lab / f"{i}.txt").write_text(t)
    (tmp_path / "tech" / "latin1.txt").write_bytes("Caf\xe9 opens".encode("latin-1"))
    got, _ = data.read_source(cfg(source="folder", path=str(tmp_path)))
    assert len(got) == 11 and "Café opens" in set(got["text"])


def test_hf_source_with_local_dataset_folder(tmp_path):
    folder = tmp_path / "hfdata"
    folder.mkdir()
    pd.DataFrame(rows()).to_csv(folder / "train.csv", index=False)
    got, where = data.read_source(cfg(source=f"hf:{folder}", text_field="body", label_field="topic"))
    check(got)
    assert where == f"hf:{folder}"


def test_hf_unknown_dataset_offline_is_clear():
    with pytest.raises(ConfigError, match="offline default is data.source=bbc"):
        data.read_source(cfg(source="hf:no-such-user/no-such-dataset"))


def test_clean_counts_and_single_class(tmp_path):
    df = pd.DataFrame({"text": ["a b", "  ", None, "c d", "e f"], "label": ["x", "x", "y", None, "y"]})
    out, stats = data.clean(df, "mem")
    assert stats["dropped_empty_text"] == 2 and stats["dropped_missing_label"] == 1 and len(out) == 2
    with pytest.raises(ConfigError, match="only one class"):
        data.clean(pd.DataFrame({"text": ["a", "b"], "label": ["x", "x"]}), "mem")


def test_fingerprint_depends_on_content_not_order():
    df = pd.DataFrame(rows()).rename(columns={"body": "text", "topic": "label"})
    assert data.fingerprint(df) == data.fingerprint(df.iloc[::-1])
    changed = df.copy()
    changed.loc[0, "text"] += "!"
    assert data.fingerprint(changed) != data.fingerprint(df)
