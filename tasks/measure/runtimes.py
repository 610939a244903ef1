"""Runtimes: a model folder's ``format`` -> the runner that executes it, as ``(input_ids, attention_mask) -> logits``.

Evaluation, benchmarks and serving call ``load_for_inference`` and never ask how a folder was made: eager PyTorch
(``hf``), densified sparse weights (``hf-sparse``), fbgemm dynamic int8 (``int8``), ONNX Runtime (``onnx``) and
ExecuTorch with XNNPACK (``pte``). The table lives here, so ``tasks.core.models`` imports no technique.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from tasks.core import models


def eager_runner(model, device: torch.device | str = "cpu"):
    """The runner interface (input_ids, attention_mask) -> logits for an eager PyTorch classifier, on ``device``
    (inputs are moved there; logits come back on it)."""
    device = torch.device(device)
    model.to(device)

    def run(input_ids, attention_mask):
        return model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits

    run.model = model
    return run


def load_hf_runner(model_dir: str | Path, manifest: dict, device: str = "cpu"):
    return eager_runner(models.load_hf_model(model_dir, manifest), device)


def load_sparse_runner(model_dir: str | Path, manifest: dict, device: str = "cpu"):
    from tasks.compress import prune

    return eager_runner(prune.load_sparse_model(model_dir, manifest), device)


def load_int8_runner(model_dir: str | Path, manifest: dict, device: str = "cpu"):
    """PyTorch dynamic int8 kernels are CPU kernels: this runner is CPU whatever ``device`` says."""
    from tasks.compress import quantize

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return eager_runner(quantize.load_int8_model(model_dir, manifest))


def load_onnx_runner(model_dir: str | Path, manifest: dict, device: str = "cpu"):
    """ONNX Runtime on CPU, or with its CUDA provider when ``device`` is cuda and that provider is installed
    (``onnxruntime-gpu``); otherwise CPU, with a warning."""
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if torch.device(device).type == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        else:
            warnings.warn("device cuda asked for, but this onnxruntime has no CUDAExecutionProvider (install "
                          "onnxruntime-gpu): running ONNX on CPU", stacklevel=2)

    sessions: dict[int, ort.InferenceSession] = {}
    path = str(Path(model_dir) / "model.onnx")

    def session() -> ort.InferenceSession:
        threads = torch.get_num_threads()
        if threads not in sessions:
            so = ort.SessionOptions()
            so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            sessions[threads] = ort.InferenceSession(path, so, providers=providers)
        return sessions[threads]

    session()

    def run(input_ids, attention_mask):
        out = session().run(["logits"], {"input_ids": input_ids.numpy().astype(np.int64),
                                         "attention_mask": attention_mask.numpy().astype(np.int64)})[0]
        return torch.from_numpy(out)

    return run


def load_pte_runner(model_dir: str | Path, manifest: dict, device: str = "cpu"):
    """ExecuTorch runtime (XNNPACK), CPU whatever ``device`` says (what a phone runs). The program has a static
    (1, seq_len) input: batches run row by row."""
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    # XNNPACK's threadpool is process-wide; resizing it once a program has run crashed the process here, so it is
    # sized once, before loading, to torch's thread count (the benchmark sets 1 thread first: the mobile setting).
    threads = torch.get_num_threads()
    if portable_lib._threadpool_get_thread_count() != threads:
        portable_lib._unsafe_reset_threadpool(threads)
    method = Runtime.get().load_program(Path(model_dir) / "model.pte").load_method("forward")
    seq_len = manifest["seq_len"]

    def run(input_ids, attention_mask):
        outs = []
        for ids, mask in zip(input_ids, attention_mask):
            n = ids.shape[0]
            if n < seq_len:
                ids = torch.nn.functional.pad(ids, (0, seq_len - n))
                mask = torch.nn.functional.pad(mask, (0, seq_len - n))
            outs.append(method.execute((ids[None, :seq_len].long(), mask[None, :seq_len].long()))[0])
        return torch.cat(outs)

    run.batch_sizes = [1]
    run.thread_settings = [threads]
    return run


RUNNERS = {"hf": load_hf_runner, "hf-sparse": load_sparse_runner, "int8": load_int8_runner,
           "onnx": load_onnx_runner, "pte": load_pte_runner}


def load_for_inference(model_dir: str | Path, device: str = "cpu"):
    """-> (callable(input_ids, attention_mask) -> logits, tokenizer, manifest), whatever the folder's format.
    ``device``: where eager PyTorch formats (and ONNX with a CUDA provider) run; int8 and ExecuTorch stay on CPU."""
    from transformers import AutoTokenizer

    manifest = models.read_manifest(model_dir)
    fmt = manifest["format"]
    if fmt not in RUNNERS:
        raise ValueError(f"{model_dir}: unknown model format '{fmt}' in {models.MANIFEST}; known: {', '.join(RUNNERS)}")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return RUNNERS[fmt](model_dir, manifest, str(models.pick_device(device))), tokenizer, manifest
