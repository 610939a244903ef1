"""A classifier head that starts where a linear probe ends (LP-FT: Kumar et al., "Fine-Tuning can Distort Pretrained
Features and Underperform Out-of-Distribution", ICLR 2022): logistic regression (scikit-learn) is fitted on the frozen
encoder's features of the training examples, its C chosen on validation macro-F1, and its weights become the head's
final linear layer before fine-tuning. A fresh head is random, so the first optimizer steps go to learning the head
while its noise flows back into the encoder; with few steps (a few hundred documents, 14 classes) a random-headed
model can end near chance where the probe alone is far above it.

What it writes is only the last ``nn.Linear`` of the head; what it reads are that layer's inputs (:func:`head_inputs`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)


def head_linear(model: nn.Module) -> nn.Linear:
    """The final linear layer of a classifier's head: ``model.classifier`` itself (BERT, effilm's long and
    hierarchical models) or the last ``nn.Linear`` inside it (RoBERTa's ``out_proj``)."""
    head = getattr(model, "classifier", None)
    if isinstance(head, nn.Linear):
        return head
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)] if head is not None else []
    if not linears:
        raise ValueError(f"{type(model).__name__}: no linear classifier head to initialise (train.head_init: random "
                         "trains the head from scratch)")
    return linears[-1]


@torch.inference_mode()
def head_inputs(model: nn.Module, forward, batches) -> tuple[np.ndarray, np.ndarray]:
    """Run ``forward(model, batch)`` over ``batches`` in eval mode and collect (the head's input features, the
    encoder's [CLS] vectors): the first from a hook on :func:`head_linear`, the second from what ``forward`` returns."""
    linear, feats, cls = head_linear(model), [], []
    hook = linear.register_forward_hook(lambda mod, args, out: feats.append(args[0].float().cpu()))
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            cls.append(forward(model, batch).float().cpu())
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(feats).numpy(), torch.cat(cls).numpy()


def fit(train: tuple[np.ndarray, list[int]], val: tuple[np.ndarray, list[int]], n_classes: int,
        balanced: bool = True) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Logistic regression on the features, C from :data:`C_GRID` by validation macro-F1 (ties: the smaller C; no
    validation examples: C = 1) -> (weight (n_classes, d), bias (n_classes,), {"C", "val_macro_f1"}). A class absent
    from training gets weight 0 and a bias below every other, so it is never predicted until fine-tuning teaches it."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    ids = list(range(n_classes))
    fitted, scores = {}, {}
    for c in C_GRID if len(val[1]) else (1.0,):  # no validation split: scikit-learn's default C
        clf = LogisticRegression(C=c, max_iter=2000, class_weight="balanced" if balanced else None)
        fitted[c] = clf.fit(train[0], train[1])
        scores[c] = (f1_score(val[1], clf.predict(val[0]), labels=ids, average="macro", zero_division=0)
                     if len(val[1]) else float("nan"))
    best = max(scores, key=lambda c: (scores[c], -c))
    clf = fitted[best]
    coef, intercept = clf.coef_, clf.intercept_
    if len(clf.classes_) == 2 and coef.shape[0] == 1:  # binary: one logit z -> (-z/2, z/2), the same softmax
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    weight = np.zeros((n_classes, coef.shape[1]), dtype=np.float32)
    bias = np.full(n_classes, float(intercept.min()) - 10.0, dtype=np.float32)
    weight[clf.classes_] = coef
    bias[clf.classes_] = intercept
    info = {"C": best, "val_macro_f1": round(float(scores[best]), 4)}
    return torch.from_numpy(weight), torch.from_numpy(bias), info


def set_head(model: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> None:
    linear = head_linear(model)
    if tuple(linear.weight.shape) != tuple(weight.shape):
        raise ValueError(f"probe weights {tuple(weight.shape)} do not fit the head {tuple(linear.weight.shape)}")
    with torch.no_grad():
        linear.weight.copy_(weight.to(linear.weight))
        if linear.bias is not None:
            linear.bias.copy_(bias.to(linear.bias))
