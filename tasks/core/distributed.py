"""Data-parallel training on existing engines: ``torchrun`` + PyTorch DDP (gloo on CPU, NCCL on GPUs).

A training step with ``train.nproc_per_node: N`` (N > 1) relaunches its plain function under
``python -m torch.distributed.run --standalone --nproc_per_node N``; inside, ``train.train_loop`` wraps the model in
``DistributedDataParallel`` and every rank takes an equal share of each global batch, so the loss trajectory matches
one process with the same ``batch_size``. Only rank 0 writes the model folder and the result; MLflow is written by the
flow process, never by the ranks (so exactly one writer). Multi-node: run the same module under your own
``torchrun --nnodes ... --rdzv-endpoint ...`` (docs/scaling-out.md).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
from tasks import PROJECT_ROOT  # noqa: E402


def is_active() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if is_active() else 0


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if is_active() else 1


def wanted(nproc_per_node: int) -> int:
    """Processes asked for (``train.nproc_per_node``), when not already inside a distributed job (else 1)."""
    n = int(nproc_per_node or 1)
    return n if n > 1 and not is_active() and "LOCAL_RANK" not in os.environ else 1


def launch(target: str, kwargs: dict, nproc: int, work: str | Path) -> Any:
    """Run ``module:function(**kwargs)`` under torchrun with ``nproc`` processes; return rank 0's result."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    args_file, result_file, log_file = work / "ddp-args.json", work / "ddp-result.json", work / "ddp.log"
    result_file.unlink(missing_ok=True)
    args_file.write_text(json.dumps({"target": target, "kwargs": kwargs}, default=str))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "tasks.core.distributed", str(args_file), str(result_file)]
    log.info("distributed: %s on %d processes (log %s)", target, nproc, log_file)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    with open(log_file, "w") as fh:
        rc = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    if rc != 0 or not result_file.is_file():
        tail = log_file.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"distributed {target} failed (torchrun exit {rc}); last output:\n{tail}")
    return json.loads(result_file.read_text())


def _backend() -> str:
    import torch

    return "nccl" if torch.cuda.is_available() and os.environ.get("EFFILM_DDP_BACKEND", "") != "gloo" else "gloo"


def main(argv: list[str] | None = None) -> int:
    import torch
    import torch.distributed as dist

    args_file, result_file = (argv or sys.argv[1:])[:2]
    spec = json.loads(Path(args_file).read_text())
    backend = _backend()
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend)
    try:
        module, _, name = spec["target"].partition(":")
        result = getattr(importlib.import_module(module), name)(**spec["kwargs"])
        dist.barrier()
        if dist.get_rank() == 0:
            tmp = Path(result_file).with_suffix(".partial")
            tmp.write_text(json.dumps(result, default=str))
            tmp.rename(result_file)
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format=f"[rank {os.environ.get('RANK', '?')}] %(levelname)s %(name)s: %(message)s")
    sys.exit(main())
