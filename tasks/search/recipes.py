"""A compression recipe as a searchable object: one value per key of ``search.space``, turned into the same typed
variant steps a hand-written variant uses (tasks/core/config.py), so a trial is built by the same technique tasks.

A recipe becomes a chain of one-step variants — distill -> prune -> trim vocabulary -> runtime — each named by the
hash of its step and its source. Two trials that share a prefix (say the same 3-layer distilled student) name the
same variants, so the prefix is built once and every later trial reuses its folder.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from tasks.core.config import RUNTIMES, SearchSpace, Step, Variant
from tasks.core.orchestrate import stable_hash


class Recipe(BaseModel):
    """One point of the search space (the trial's params)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    layers: int
    layer_pick: Literal["spread", "bottom", "top"]
    temperature: float
    alpha: float
    hidden_mse: float
    distill_epochs: float | None = None  # None: the train section's epochs
    distill_learning_rate: float | None = None  # None: the train section's learning rate
    heads_fraction: float
    ffn_fraction: float
    recovery_epochs: float
    vocab_trim: bool
    vocab_min_count: int = 1
    runtime: Literal[RUNTIMES]  # type: ignore[valid-type]

    def label(self) -> str:
        """Short human-readable form, e.g. ``3L-spread T2 a0.5 h1 / heads25 ffn50 vocab / onnx-int8``."""
        prune = " ".join(p for p in (f"heads{self.heads_fraction:.0%}" if self.heads_fraction else "",
                                     f"ffn{self.ffn_fraction:.0%}" if self.ffn_fraction else "",
                                     ("vocab" + (f">={self.vocab_min_count}" if self.vocab_min_count > 1 else ""))
                                     if self.vocab_trim else "") if p) or "-"
        epochs = f" e{self.distill_epochs:g}" if self.distill_epochs is not None else ""
        epochs += f" lr{self.distill_learning_rate:g}" if self.distill_learning_rate is not None else ""
        return (f"{self.layers}L-{self.layer_pick} T{self.temperature:g} a{self.alpha:g} h{self.hidden_mse:g}{epochs} / "
                f"{prune.replace('%', '')} / {self.runtime}")


PARAMS_VERSION = 2  # a trial's params: `student` and `vocab` grouped (1: one per space key); part of study names
GROUPED = ("layers", "layer_pick", "vocab_trim", "vocab_min_count")  # sampled as `student` and `vocab`


def students(space: SearchSpace, total: int) -> dict[tuple[int, ...], str]:
    """The distinct students of the space, {kept layers: name}: ``layers`` x ``layer_pick`` less the pairs that keep
    the same layers (1 layer spread is layer 0, the bottom one), each named once (``1L-bottom``, ``3L-spread``)."""
    out: dict[tuple[int, ...], str] = {}
    for k in space.layers:
        for pick in sorted(space.layer_pick, key=lambda p: p == "spread"):  # a spread equal to bottom/top: their name
            out.setdefault(tuple(kept_layers(k, pick, total)), f"{k}L-{pick}")
    return out


def dimensions(space: SearchSpace, total: int) -> dict[str, list]:
    """The sampler's categorical dimensions. Each space key is one, except two pairs whose combinations would build
    the same model under two names (and steer the sampler toward it twice): the student (layers and which) and the
    vocabulary (``off``, or trimmed to tokens seen ``>=N`` times)."""
    vocab = (["off"] if False in space.vocab_trim else []) + \
        ([f">={m}" for m in space.vocab_min_count] if True in space.vocab_trim else [])
    rest = {key: list(getattr(space, key)) for key in SearchSpace.model_fields if key not in GROUPED}
    return {"student": list(students(space, total).values()), **rest, "vocab": vocab}


def from_params(params: dict, space: SearchSpace) -> Recipe:
    """A trial's params (``dimensions``' keys) as the recipe."""
    p = dict(params)
    layers, pick = p.pop("student").split("L-")
    vocab = p.pop("vocab")
    trim = vocab != "off"
    return Recipe(layers=int(layers), layer_pick=pick, vocab_trim=trim,
                  vocab_min_count=int(vocab[2:]) if trim else space.vocab_min_count[0], **p)


def to_params(recipe: dict, space: SearchSpace, total: int) -> dict:
    """A recipe (space keys -> one value, e.g. a seed recipe) as a trial's params, for ``enqueue_trial``."""
    p = {k: v for k, v in recipe.items() if k not in GROUPED}
    p["student"] = students(space, total)[tuple(kept_layers(recipe["layers"], recipe["layer_pick"], total))]
    p["vocab"] = f">={recipe['vocab_min_count']}" if recipe["vocab_trim"] else "off"
    return p


def suggest(trial, space: SearchSpace, total: int) -> Recipe:
    """Ask an Optuna trial for a recipe: one categorical choice per dimension (a one-value list fixes it)."""
    return from_params({key: trial.suggest_categorical(key, values)
                        for key, values in dimensions(space, total).items()}, space)


def kept_layers(k: int, pick: str, total: int) -> list[int]:
    """Which of the teacher's ``total`` encoder layers a ``k``-layer student keeps."""
    if not 1 <= k < total:
        raise ValueError(f"search.space.layers: {k} layers cannot be kept of a {total}-layer teacher "
                         f"(use 1..{total - 1})")
    if pick == "bottom":
        return list(range(k))
    if pick == "top":
        return list(range(total - k, total))
    return [i * total // k for i in range(k)]  # spread: 3 of 6 -> 0, 2, 4 (the hand recipe's every_other)


def runtime_step(runtime: str, seq_len: int) -> dict | None:
    """The last step of a recipe: how the model is run (None: eager PyTorch fp32, no step)."""
    return {"torch-fp32": None,
            "torch-int8": {"technique": "quantize", "embeddings": True},
            "onnx-fp32": {"technique": "export", "format": "onnx"},
            "onnx-int8": {"technique": "export", "format": "onnx", "quantize": "int8"},
            "pte-fp32": {"technique": "export", "format": "pte", "seq_len": seq_len},
            "pte-int8": {"technique": "export", "format": "pte", "quantize": "int8", "seq_len": seq_len}}[runtime]


def variants(recipe: Recipe, teacher_layers: int, seq_len: int) -> list[Variant]:
    """The recipe as a chain of one-step variants, each named by the hash of (its source, its step)."""
    finetune = {k: v for k, v in (("epochs", recipe.distill_epochs), ("learning_rate", recipe.distill_learning_rate))
                if v is not None}  # unset: the train section's
    steps: list[tuple[str, dict]] = [("distill", {
        "technique": "distill", "keep": kept_layers(recipe.layers, recipe.layer_pick, teacher_layers),
        "temperature": recipe.temperature, "alpha": recipe.alpha, "hidden_mse": recipe.hidden_mse,
        **({"finetune": finetune} if finetune else {})})]
    if recipe.heads_fraction or recipe.ffn_fraction:
        steps.append(("prune", {"technique": "prune_structured", "ffn_fraction": recipe.ffn_fraction,
                                "heads_fraction": recipe.heads_fraction,
                                "recovery": {"epochs": recipe.recovery_epochs}}))
    if recipe.vocab_trim:
        steps.append(("vocab", {"technique": "vocab_trim", "min_count": recipe.vocab_min_count}))
    last = runtime_step(recipe.runtime, seq_len)
    if last is not None:
        steps.append(("runtime", last))
    chain, source = [], "teacher"
    for kind, step in steps:
        name = f"search-{kind}-{stable_hash(source, step, length=10)}"
        chain.append(Variant(name=name, source=source, steps=[step]))
        source = name
    return chain


def technique_of(chain: list[Variant]) -> str:
    return "+".join(s.technique for v in chain for s in v.steps)


def steps_of(chain: list[Variant]) -> list[Step]:
    return [s for v in chain for s in v.steps]
