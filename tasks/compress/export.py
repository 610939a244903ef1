"""Export to real runtimes: ONNX (run by ONNX Runtime, optionally int8) and ExecuTorch ``.pte`` (XNNPACK delegate,
optionally int8 through the PT2E XNNPACK quantizer) — the mobile runtime.

    compress(model_dir, step: ExportStep, ctx) -> model_dir    (step.format: onnx | pte, step.quantize: None | int8, step.seq_len)

Both exports trace :class:`ClassifierGraph`, a plain forward of a BERT classifier (embeddings -> blocks with an
additive mask -> pooler -> head) that matches the eager model and avoids transformers' mask builder, which the
PT2E quantizer cannot trace. For BERT layers and pooler its last block computes the [CLS] row alone (queries from that
row, keys and values from every row): the pooler reads nothing else, so fp32 logits are the same and that block's
query, output projection and FFN do 1/seq_len of the work (a 1-layer student: most of its time); int8 logits stay
within quantization error (dynamic activation scales of those projections now come from that row). Other layer types
(MobileBERT's bottlenecks, remote code) run whole, as before. ``tasks/measure/runtimes.py`` runs the exported files
*in their runtime*, so they are evaluated and benchmarked exactly like eager models.
"""

from __future__ import annotations

import copy
import logging
import threading
import warnings

import torch
import torch.nn as nn

from tasks.core import models
from tasks.core.config import ExportStep, StepContext

log = logging.getLogger(__name__)


def cls_row_of_layer(layer: nn.Module, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A BERT layer's output for the first ([CLS]) row only: (batch, 1, hidden). Exact: self-attention mixes every
    row into the [CLS] row through the keys and values, which are computed for all rows; the query, the attention
    output projection, the FFN and the layer norms act on each row alone. Works on head-pruned layers (the heads
    and head size come from the layer itself)."""
    att = layer.attention.self
    heads, size = att.num_attention_heads, att.attention_head_size
    first = h[:, :1]

    def split(x: torch.Tensor) -> torch.Tensor:  # (batch, rows, heads * size) -> (batch, heads, rows, size)
        return x.reshape(x.shape[0], x.shape[1], heads, size).transpose(1, 2)

    q, k, v = split(att.query(first)), split(att.key(h)), split(att.value(h))
    probs = torch.softmax(q @ k.transpose(-1, -2) * size ** -0.5 + mask, dim=-1)
    context = (probs @ v).transpose(1, 2).reshape(h.shape[0], 1, heads * size)
    attended = layer.attention.output(context, first)
    return layer.output(layer.intermediate(attended), attended)


class ClassifierGraph(nn.Module):
    def __init__(self, model: nn.Module):
        from transformers.models.bert.modeling_bert import BertLayer, BertPooler

        super().__init__()
        base = getattr(model, model.base_model_prefix)
        self.embeddings, self.layers, self.pooler = base.embeddings, base.encoder.layer, base.pooler
        self.classifier = model.classifier
        # the [CLS]-row shortcut where both ends are known: BERT's layer layout, and a pooler that reads row 0
        self.cls_row_only = isinstance(self.layers[-1], BertLayer) and isinstance(self.pooler, BertPooler)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.embeddings(input_ids=input_ids)
        mask = (1.0 - attention_mask[:, None, None, :].to(h.dtype)) * -10000.0
        whole = self.layers[:-1] if self.cls_row_only else self.layers
        for layer in whole:
            h = layer(h, mask)
        if self.cls_row_only:
            h = cls_row_of_layer(self.layers[-1], h, mask)
        return self.classifier(self.pooler(h))


def _example(tokenizer, seq_len: int, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tokenizer(["effilm export example text"] * batch, padding="max_length", max_length=seq_len,
                    truncation=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def _fp32_model(model_dir: str):
    manifest = models.read_manifest(model_dir)
    if manifest["format"] != "hf":
        raise ValueError(f"export needs an fp32 'hf' model folder (quantization happens in the target runtime), got {manifest.get('format')!r}")
    return models.load_hf_model(model_dir, manifest), manifest


def export_onnx(model_dir: str, step: ExportStep, out_dir: str) -> str:
    from transformers import AutoTokenizer

    model, manifest = _fp32_model(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    graph = ClassifierGraph(model).eval()
    ids, mask = _example(tokenizer, step.seq_len)
    with models.atomic_dir(out_dir) as tmp:
        fp32 = tmp / "model.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, (ids, mask), str(fp32), input_names=["input_ids", "attention_mask"],
                              output_names=["logits"], opset_version=17, dynamo=False,
                              dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                                            "logits": {0: "batch"}})
        if step.quantize == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            q = tmp / "model.int8.onnx"  # per-channel weight scales: what kept accuracy within 1 point here
            quantize_dynamic(str(fp32), str(q), weight_type=QuantType.QInt8, per_channel=True)
            fp32.unlink()
            q.rename(fp32)
        tokenizer.save_pretrained(tmp)
        model.config.save_pretrained(tmp)
        models.write_manifest(tmp, **models.inherited(manifest), format="onnx", quantize=step.quantize,
                              params=models.count_params(model), exported_from=str(model_dir))
    return out_dir


def export_pte(model_dir: str, step: ExportStep, out_dir: str) -> str:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
        XnnpackPartitioner,
    )
    from executorch.exir import to_edge_transform_and_lower
    from transformers import AutoTokenizer

    model, manifest = _fp32_model(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    seq_len = step.seq_len
    graph = ClassifierGraph(model).eval()
    example = _example(tokenizer, seq_len)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if step.quantize == "int8":
            from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
                XNNPACKQuantizer,
                get_symmetric_quantization_config,
            )
            from torchao.quantization.pt2e.quantize_pt2e import (
                convert_pt2e,
                prepare_pt2e,
            )

            quantizer = XNNPACKQuantizer()
            # Linear layers only: the embedding lookups must stay out of the quantized graph.
            quantizer.set_module_type(nn.Linear, get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True))
            gm = torch.export.export(copy.deepcopy(graph), example).module()
            gm = prepare_pt2e(gm, quantizer)
            gm(*example)
            graph = convert_pt2e(gm)
        program = to_edge_transform_and_lower(torch.export.export(graph, example), partitioner=[XnnpackPartitioner()]).to_executorch()
    with models.atomic_dir(out_dir) as tmp:
        (tmp / "model.pte").write_bytes(program.buffer)
        tokenizer.save_pretrained(tmp)
        model.config.save_pretrained(tmp)
        models.write_manifest(tmp, **{**models.inherited(manifest), "max_length": seq_len}, format="pte",
                              quantize=step.quantize, seq_len=seq_len, batch=1, params=models.count_params(model),
                              exported_from=str(model_dir))
    return out_dir


# torch's exporters keep process-wide state (torch.onnx: ``GLOBALS.in_onnx_export``; seen to fail with "must be
# False" when a search built two ONNX exports at once on the thread task runner): one export at a time per process.
_EXPORTING = threading.Lock()


def compress(model_dir: str, step: ExportStep, ctx: StepContext) -> str:
    export = {"onnx": export_onnx, "pte": export_pte}[step.format]  # the schema admits these two formats only
    with _EXPORTING:
        return export(model_dir, step, ctx.out_dir)

