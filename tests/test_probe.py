"""The linear-probe head (LP-FT): the torch head predicts exactly what the fitted logistic regression predicts,
binary and multi-class, with a class absent from training; it finds the final linear layer of each head shape."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from tasks.core import probe


def blobs(n_classes: int, n: int, seed: int, d: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(0, 2, (n_classes, d))
    y = rng.integers(0, n_classes, n)
    return (centres[y] + rng.normal(0, 1.5, (n, d))).astype(np.float32), y


class Head(nn.Module):
    def __init__(self, d: int, k: int):
        super().__init__()
        self.classifier = nn.Linear(d, k)


@pytest.mark.parametrize("n_classes", [2, 4])
def test_head_predicts_what_the_regression_predicts(n_classes):
    x, y = blobs(n_classes, 300, 0)
    xv, yv = blobs(n_classes, 80, 1)
    weight, bias, info = probe.fit((x, y.tolist()), (xv, yv.tolist()), n_classes)
    assert info["C"] in probe.C_GRID and 0.5 < info["val_macro_f1"] <= 1  # well above chance on separable blobs
    model = Head(x.shape[1], n_classes)
    probe.set_head(model, weight, bias)
    clf = LogisticRegression(C=info["C"], max_iter=2000, class_weight="balanced").fit(x, y)
    with torch.no_grad():
        ours = model.classifier(torch.from_numpy(xv)).argmax(-1).numpy()
        probs = model.classifier(torch.from_numpy(xv)).softmax(-1).numpy()
    assert (ours == clf.predict(xv)).all()
    assert np.allclose(probs, clf.predict_proba(xv), atol=1e-4)


def test_a_class_absent_from_training_is_never_predicted_by_the_probe():
    x, y = blobs(3, 300, 0)
    xv, yv = blobs(3, 60, 1)
    weight, bias, _ = probe.fit((x, y.tolist()), (xv, yv.tolist()), 5)  # labels 3 and 4 exist, never seen
    assert weight.shape == (5, x.shape[1]) and (weight[3:] == 0).all() and (bias[3:] < bias[:3].min()).all()
    model = Head(x.shape[1], 5)
    probe.set_head(model, weight, bias)
    with torch.no_grad():
        assert set(model.classifier(torch.from_numpy(xv)).argmax(-1).tolist()) <= {0, 1, 2}
    with pytest.raises(ValueError, match="do not fit the head"):
        probe.set_head(Head(x.shape[1], 4), weight, bias)


def test_head_linear_finds_the_last_layer_of_each_head_shape():
    from transformers import BertConfig, BertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification

    small = dict(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                 num_labels=3)
    bert = BertForSequenceClassification(BertConfig(**small))
    roberta = RobertaForSequenceClassification(RobertaConfig(**small, max_position_embeddings=40))
    assert probe.head_linear(bert) is bert.classifier
    assert probe.head_linear(roberta) is roberta.classifier.out_proj
    with pytest.raises(ValueError, match="head_init: random"):
        probe.head_linear(nn.Sequential(nn.Linear(2, 2)))


def test_without_validation_examples_the_probe_uses_the_default_c():
    x, y = blobs(3, 120, 0)
    _, _, info = probe.fit((x, y.tolist()), (x[:0], []), 3)
    assert info["C"] == 1.0 and np.isnan(info["val_macro_f1"])
