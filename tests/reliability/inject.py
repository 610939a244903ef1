"""Test-only fault injection: ``python -m tests.reliability.inject <effilm args>`` runs the real `effilm` CLI with
one fault installed, chosen by environment (nothing of this lives in the product's modules):

- ``EFFILM_INJECT_FAULT=benchmark``: the first run of the flow's benchmark task raises (a transient error);
- ``EFFILM_INJECT_FAULT=export-onnx``: every ONNX export raises (a step that cannot be built);
- ``EFFILM_PAUSE_BEFORE_MANIFEST=<format>``: when a model folder of that format (``onnx``, ``pte``, ``hf``…) is about
  to get its manifest — weights written, folder not yet complete — the process writes the marker and stops there,
  so a test can SIGKILL it in the middle of writing a model folder.

``EFFILM_FAULT_MARKER`` names the marker file that records that the fault fired (once per marker).
"""

from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path


class InjectedFault(RuntimeError):
    pass


def _fire(point: str) -> bool:
    marker = Path(os.environ.get("EFFILM_FAULT_MARKER", ".effilm-fault-marker"))
    if marker.exists():
        return False
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(point)
    return True


def install() -> None:
    from tasks.core import models
    from tasks.measure import benchmark

    if os.environ.get("EFFILM_INJECT_FAULT") == "benchmark":
        real_benchmark = benchmark.benchmark_task.fn  # what the flow's Prefect task runs

        @functools.wraps(real_benchmark)  # same module and name: the task's cache key is unchanged
        def failing_once(*args, **kwargs):
            if _fire("benchmark"):
                raise InjectedFault("injected transient fault at benchmark")
            return real_benchmark(*args, **kwargs)

        benchmark.benchmark_task.fn = failing_once

    if os.environ.get("EFFILM_INJECT_FAULT") == "export-onnx":
        from tasks.compress import registry

        real_export = registry.TECHNIQUES["export"]

        @functools.wraps(real_export)  # same module: the step's work folder keeps its code version
        def failing_export(model_dir, step, ctx):
            if step.format == "onnx":
                raise InjectedFault("injected fault: ONNX export fails")
            return real_export(model_dir, step, ctx)

        registry.TECHNIQUES["export"] = failing_export

    fmt = os.environ.get("EFFILM_PAUSE_BEFORE_MANIFEST")
    if fmt:
        real_write = models.write_manifest

        def pausing_write(model_dir, **info):
            if info.get("format", "hf") == fmt and _fire(f"before-manifest:{fmt}:{model_dir}"):
                time.sleep(3600)  # killed here by the test
            return real_write(model_dir, **info)

        models.write_manifest = pausing_write


if __name__ == "__main__":
    install()
    from flows.cli import main

    sys.exit(main(sys.argv[1:]))
