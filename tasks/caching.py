"""Prefect cache policy for effilm tasks: a task is skipped when its inputs (config slice, data fingerprint, upstream
paths) and effilm's code are unchanged and the files its cached result points to still exist.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import CachePolicy

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Hash of effilm's own Python sources (tasks/ and flows/): any code change invalidates cached results."""
    h = hashlib.sha256()
    for folder in ("tasks", "flows"):
        for p in sorted((PROJECT_ROOT / folder).rglob("*.py")):
            h.update(p.relative_to(PROJECT_ROOT).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def stable_hash(*parts: Any, length: int = 12) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:length]


def safe_join(root: str | Path, *parts: str) -> Path:
    """``root/parts`` that is guaranteed to stay inside ``root`` (no ``..``, no absolute parts)."""
    base = Path(root).resolve()
    path = base.joinpath(*parts).resolve()
    if path != base and base not in path.parents:
        raise ValueError(f"refusing to write outside the output folder {base}: {'/'.join(parts)}")
    return path


def work_dir(root: str | Path, name: str, *key_parts: Any) -> str:
    """Deterministic folder for a task's outputs: the same inputs land in the same place, so a killed run resumes."""
    return str(safe_join(root, name, stable_hash(*key_parts)))


@dataclass
class InputsAndCode(CachePolicy):
    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any) -> str | None:
        try:
            payload = json.dumps(inputs, sort_keys=True, default=str)
        except (TypeError, ValueError):
            return None
        return hashlib.sha256(f"{task_ctx.task.name}|{code_version()}|{payload}".encode()).hexdigest()


CACHE = InputsAndCode()


def result_paths(result: Any) -> list[str]:
    """Paths a task result points to (``*_dir`` keys and ``artifacts`` values), to check a cache hit is usable."""
    found: list[str] = []
    if isinstance(result, dict):
        for k, v in result.items():
            if isinstance(v, str) and (k.endswith("_dir") or k == "path"):
                found.append(v)
            elif k in ("artifacts", "paths") and isinstance(v, dict):
                found.extend(str(x) for x in v.values() if isinstance(x, str))
    return found
