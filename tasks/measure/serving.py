"""The MLflow pyfunc wrapper around an effilm model folder: text in, label and probabilities out.

A logged model carries effilm's ``tasks`` package as MLflow ``code_paths`` and names only public packages in its
requirements, so ``mlflow models serve`` or ``mlflow.pyfunc.load_model`` works where effilm is not installed.
"""

from __future__ import annotations

import importlib.metadata

import mlflow.pyfunc

from tasks import PROJECT_ROOT
from tasks.core import models

# what loading a model folder needs, by format (the runtime of an exported model is named too)
_COMMON = ("torch", "transformers", "tokenizers", "safetensors", "numpy", "pandas", "pydantic", "pyyaml")
_RUNTIME = {"onnx": ("onnxruntime",), "pte": ("executorch",)}


def _pinned(dist: str) -> str:
    try:
        return f"{dist}=={importlib.metadata.version(dist).split('+')[0]}"
    except importlib.metadata.PackageNotFoundError:
        return dist


def pyfunc_spec(model_dir: str) -> dict:
    """-> keyword arguments for ``tracking.log_model``: the wrapper, pinned public requirements, effilm's code."""
    fmt = models.read_manifest(model_dir)["format"]
    return {"python_model": EffilmClassifier(),
            "pip_requirements": [_pinned(d) for d in (*_COMMON, *_RUNTIME.get(fmt, ()))],
            "code_paths": [str(PROJECT_ROOT / "tasks")]}


class EffilmClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from tasks.measure import runtimes

        self._run, self._tokenizer, self._manifest = runtimes.load_for_inference(context.artifacts["model_dir"])

    def predict(self, context, model_input, params=None):
        import pandas as pd
        import torch

        from tasks.core import models

        if isinstance(model_input, pd.DataFrame):
            texts = model_input.iloc[:, 0].astype(str).tolist()
        elif isinstance(model_input, str):
            texts = [model_input]
        else:
            texts = [str(t) for t in model_input]
        from tasks.core.preprocess import normalize

        texts = normalize(texts, self._manifest.get("preprocess"))
        labels = self._manifest["labels"]
        with torch.inference_mode():
            enc = models.encode(self._tokenizer, texts, self._manifest["max_length"])
            probs = torch.softmax(self._run(enc["input_ids"], enc["attention_mask"]).float(), -1)
        top = probs.argmax(-1).tolist()
        return pd.DataFrame({"label": [labels[i] for i in top], "score": probs.max(-1).values.tolist()})
