"""The MLflow pyfunc wrapper around an effilm model folder: text in, label and probabilities out."""

from __future__ import annotations

import mlflow.pyfunc


class EffilmClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from tasks import models

        self._run, self._tokenizer, self._manifest = models.load_for_inference(context.artifacts["model_dir"])

    def predict(self, context, model_input, params=None):
        import pandas as pd
        import torch

        from tasks import models

        if isinstance(model_input, pd.DataFrame):
            texts = model_input.iloc[:, 0].astype(str).tolist()
        elif isinstance(model_input, str):
            texts = [model_input]
        else:
            texts = [str(t) for t in model_input]
        from tasks.preprocess import normalize

        texts = normalize(texts, self._manifest.get("preprocess"))
        labels = self._manifest["labels"]
        with torch.inference_mode():
            enc = models.encode(self._tokenizer, texts, self._manifest.get("max_length", 128))
            probs = torch.softmax(self._run(enc["input_ids"], enc["attention_mask"]).float(), -1)
        top = probs.argmax(-1).tolist()
        return pd.DataFrame({"label": [labels[i] for i in top], "score": probs.max(-1).values.tolist()})
