"""The compression table: technique name -> ``compress(model_dir, step, ctx) -> model_dir``.

Every technique has the same shape, so a flow loops over variants without knowing their insides: ``step`` is the
technique's own typed settings (its pydantic model in tasks/core/config.py, where every default lives once) and
``ctx`` the typed context the flow passes (``data``, ``train``, ``seed``, ``out_dir``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

from prefect import task

from tasks.compress import (
    architectures,
    distill,
    export,
    layers,
    prune,
    quantize,
    vocab,
)
from tasks.core.config import STEP, Step, StepContext
from tasks.core.models import MANIFEST
from tasks.core.orchestrate import CACHE

TECHNIQUES: dict[str, Callable[[str, Any, StepContext], str]] = {
    "quantize": quantize.compress,
    "export": export.compress,
    "prune_unstructured": prune.compress_unstructured,
    "prune_structured": prune.compress_structured,
    "layer_reduce": layers.compress,
    "distill": distill.compress,
    "vocab_trim": vocab.compress,
    "architecture": architectures.compress,
}


def run_step(model_dir: str, step: Step, context: dict, out_dir: str) -> str:
    """Apply one configured step. Returns the new model folder (written atomically). The folder is named by the
    step's inputs and its technique's code, so a complete one from an earlier (or killed) run is reused instead of
    recomputed. ``context``: ``data`` (prepared data), ``train`` (the train section), ``seed``."""
    if (Path(out_dir) / MANIFEST).is_file():  # folders are written atomically: a manifest means complete
        return out_dir
    step = STEP.validate_python(step)  # a typed step passes through; a plain dict (a test, a user) is validated
    ctx = StepContext.model_validate({**context, "out_dir": out_dir})
    out = TECHNIQUES[step.technique](model_dir, step, ctx)
    # the step's training checkpoints (``<out_dir>.work``) served a killed run's resume; the model is complete now
    shutil.rmtree(out_dir + ".work", ignore_errors=True)
    return out


def module_of(technique: str) -> str:
    """The module that implements a technique (its code version keys the step's work folder)."""
    if technique not in TECHNIQUES:
        raise ValueError(f"unknown technique {technique!r}; known: {', '.join(TECHNIQUES)}")
    return TECHNIQUES[technique].__module__


@task(name="compress", cache_policy=CACHE, persist_result=True, retries=1, retry_delay_seconds=2)
def compress_task(model_dir: str, step: Step, context: dict, out_dir: str) -> dict:
    return {"model_dir": run_step(model_dir, step, context, out_dir)}
