"""Peak memory of an exported model in a process that loads only its runtime and tokenizer — what a phone app would
hold — instead of the benchmark process, which imports torch and transformers beside the model (~600 MB).

Run as a child: ``python -m tasks.measure.runtime_probe --model-dir D --texts T.json --seq-len 128 --out R.json``.
ONNX: onnxruntime + the ``tokenizers`` library, nothing else (this module imports no torch, and ``tasks`` /
``tasks.measure`` import nothing heavy). ExecuTorch: its Python bindings take torch tensors, so torch is loaded too
(a phone's C++ runtime would not); the figure says so in ``bench/runtime_rss_includes_torch``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _rss(field: str) -> float:
    """Peak RSS in MB: /proc's VmHWM on Linux, else getrusage (KB on Linux, bytes on macOS)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 1024), 1)


def probe(model_dir: str, texts: list[str], seq_len: int, iters: int = 20) -> dict:
    import numpy as np
    from tokenizers import Tokenizer

    folder = Path(model_dir)
    fmt = json.loads((folder / "effilm.json").read_text())["format"]
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.enable_truncation(seq_len)
    tok.enable_padding(length=seq_len)
    if fmt == "onnx":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
        session = ort.InferenceSession(str(folder / "model.onnx"), so, providers=["CPUExecutionProvider"])

        def run(ids, mask):
            return session.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0]
    elif fmt == "pte":
        import torch
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        portable_lib._unsafe_reset_threadpool(1)
        method = Runtime.get().load_program(folder / "model.pte").load_method("forward")

        def run(ids, mask):
            return method.execute((torch.from_numpy(ids), torch.from_numpy(mask)))[0]
    else:
        raise ValueError(f"{model_dir}: runtime_probe measures exported formats (onnx, pte), not '{fmt}'")
    for i in range(iters):  # batch 1, the phone setting
        enc = tok.encode(texts[i % len(texts)])
        run(np.array([enc.ids], dtype=np.int64), np.array([enc.attention_mask], dtype=np.int64))
    return {"bench/runtime_rss_mb": _rss("VmHWM"), "bench/runtime_rss_includes_torch": float("torch" in sys.modules)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="effilm: peak RSS of an exported model in its runtime alone")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--texts", required=True, help="JSON list of texts (no parquet reader: it would count too)")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    texts = json.loads(Path(a.texts).read_text())
    Path(a.out).write_text(json.dumps(probe(a.model_dir, texts, a.seq_len), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
