"""Bad data: a clear error naming the file and field/line, or a handled outcome with counts."""

import json

import pandas as pd
import pytest

from tasks.core import data, models
from tasks.core.config import ConfigError
from tasks.measure import evaluate


def cfg(kind, path, **kw):
    return {"source": kind, "path": str(path), "text_field": "text", "label_field": "label", "hf_config": None,
            "hf_split": "train", "max_samples": None, "val_fraction": 0.2, "test_fraction": 0.2, **kw}


def rows(n=10):
    return [{"text": f"document number {i} about {'sport' if i % 2 else 'tech'}", "label": "sport" if i % 2 else "tech"}
            for i in range(n)]


def test_empty_file(tmp_path):
    p = tmp_path / "e.csv"
    p.write_text("")
    with pytest.raises(ConfigError, match=r"e.csv.*data.path.*file is empty"):
        data.prepare(cfg("csv", p), 0, tmp_path)


def test_missing_columns_named(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps({"body": r["text"], "label": r["label"]}) for r in rows()))
    with pytest.raises(ConfigError, match=r"data.text_field.*'text' not found; columns are: body, label"):
        data.prepare(cfg("jsonl", p), 0, tmp_path)
    with pytest.raises(ConfigError, match=r"data.label_field.*'topic' not found"):
        data.prepare(cfg("jsonl", p, text_field="body", label_field="topic"), 0, tmp_path)


def test_whitespace_texts_dropped_and_counted(tmp_path):
    p = tmp_path / "d.csv"
    df = pd.DataFrame(rows(12) + [{"text": "   ", "label": "tech"}, {"text": "", "label": "sport"}, {"text": "x y", "label": None}])
    df.to_csv(p, index=False)
    out = data.prepare(cfg("csv", p), 0, tmp_path)
    assert out["stats"]["dropped_empty_text"] == 2 and out["stats"]["dropped_missing_label"] == 1 and out["stats"]["rows_used"] == 12


def test_all_texts_empty(tmp_path):
    p = tmp_path / "d.csv"
    pd.DataFrame([{"text": " ", "label": "a"}, {"text": "\t", "label": "b"}]).to_csv(p, index=False)
    with pytest.raises(ConfigError, match="every row has an empty text or label"):
        data.prepare(cfg("csv", p), 0, tmp_path)


def test_single_class_and_tiny_class(tmp_path):
    p = tmp_path / "d.csv"
    pd.DataFrame([{"text": f"t {i}", "label": "only"} for i in range(6)]).to_csv(p, index=False)
    with pytest.raises(ConfigError, match="only one class"):
        data.prepare(cfg("csv", p), 0, tmp_path)
    pd.DataFrame(rows(10) + [{"text": "lonely", "label": "rare"}]).to_csv(p, index=False)
    with pytest.raises(ConfigError, match="class 'rare' has 1 row"):
        data.prepare(cfg("csv", p), 0, tmp_path)


def test_duplicates_across_splits_are_counted(tmp_path):
    p = tmp_path / "d.csv"
    pd.DataFrame(rows(10) * 3).to_csv(p, index=False)
    out = data.prepare(cfg("csv", p), 0, tmp_path)
    assert out["stats"]["duplicate_texts"] == 20 and out["stats"]["train_test_overlap"] > 0


def test_non_utf8_csv_and_folder(tmp_path):
    p = tmp_path / "latin.csv"
    p.write_bytes("text,label\nCaf\xe9 au lait,food\nna\xefve art,art\nd\xe9j\xe0 vu,art\nr\xe9sum\xe9,food\n".encode("latin-1"))
    df, _ = data.read_source(cfg("csv", p))
    assert "Café au lait" in set(df["text"])


def test_csv_quoted_newline_and_jsonl_broken_line(tmp_path):
    p = tmp_path / "q.csv"
    p.write_text('text,label\n"first line\nsecond line",a\nplain,b\n')
    df, _ = data.read_source(cfg("csv", p))
    assert df.loc[0, "text"] == "first line\nsecond line" and len(df) == 2
    j = tmp_path / "b.jsonl"
    j.write_text('{"text": "ok", "label": "a"}\n{"text": "ok2", "label": "b"}\n{"text": broken\n')
    with pytest.raises(ConfigError, match=r"b.jsonl: key 'line 3': broken JSON"):
        data.read_source(cfg("jsonl", j))


def test_huge_document_is_truncated_not_fatal(tiny_model_dir, tmp_path):
    words = ("market " * 200_000).strip()  # ~200,000 tokens
    p = tmp_path / "d.jsonl"
    recs = rows(10) + [{"text": words, "label": "tech"}]
    p.write_text("\n".join(json.dumps(r) for r in recs))
    out = data.prepare(cfg("jsonl", p, test_fraction=0.4), 0, tmp_path)
    preds = evaluate.predict(str(tiny_model_dir) if (tiny_model_dir / models.MANIFEST).exists() else _with_manifest(tiny_model_dir, tmp_path),
                             [words, "short one"], 2, 64)
    assert len(preds) == 2
    assert out["stats"]["rows_used"] == 11


def _with_manifest(src, tmp_path):
    m = models.load_classifier(str(src), ["sport", "tech"])
    return models.save_hf(m, models.load_tokenizer(str(src)), tmp_path / "m", labels=["sport", "tech"], max_length=64)
