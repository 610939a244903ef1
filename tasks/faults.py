"""Fault injection for the reliability tests: ``EFFILM_INJECT_FAULT=<point>`` makes that point raise once (a marker
file in ``EFFILM_FAULT_MARKER`` records that it did), which is how a transient error is simulated end to end."""

from __future__ import annotations

import os
from pathlib import Path


class InjectedFault(RuntimeError):
    pass


def maybe_fail(point: str) -> None:
    if os.environ.get("EFFILM_INJECT_FAULT") != point:
        return
    marker = Path(os.environ.get("EFFILM_FAULT_MARKER", ".effilm-fault-marker"))
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(point)
    raise InjectedFault(f"injected transient fault at {point}")
