"""Long-ify a BERT checkpoint (the Longformer paper's recipe): position embeddings extended to ``max_positions``
by copying the trained 512, global q/k/v projections initialised from the local ones, and every self-attention
swapped for sliding-window + global attention (``tasks/longdoc/attention.py``) with a configurable window.

    longify(model_dir, {"max_positions": 4096, "attention_window": 256, "mode": "sliding"}) -> LongClassifier

``mode="full"`` keeps SDPA full attention over the whole (long) input: the O(n²) baseline on the same weights.
On inputs no longer than the window, sliding attention sees every token, so the long model reproduces the source
model (checked in the tests).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn as nn
from transformers.models.bert.modeling_bert import BertLayer, BertPooler

from tasks.core import models
from tasks.longdoc import attention


# The FFN runs over chunks of this many tokens (both attention modes): its 4 x hidden intermediate is the largest
# activation of a layer (25 MB at 4,096 tokens for MiniLM, twice over with GELU's output). MiniLM-sized model at
# 4,096 tokens, 2 cores, one process each: peak RSS sliding 622 -> 575 MB, full 612 -> 579 MB, time unchanged
# (667 -> 650 ms; chunks of 256 / 512 / 1,024 within 2 % of each other).
FFN_CHUNK = 512


class LongSelfAttention(nn.Module):
    def __init__(self, src: nn.Module, window: int, mode: str):
        super().__init__()
        self.query, self.key, self.value = src.query, src.key, src.value
        self.query_global, self.key_global, self.value_global = (copy.deepcopy(src.query), copy.deepcopy(src.key),
                                                                 copy.deepcopy(src.value))
        self.head_size = src.attention_head_size
        self.window, self.mode = window, mode
        self.dropout_p = getattr(src, "dropout", nn.Dropout(0.0)).p

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, -1, self.head_size).transpose(1, 2)

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        key_padding, plan = attention_mask  # the padding mask and the pass's shared attention plan
        banded = None
        if plan is not None:  # K/V straight into blocked attention's padded buffers where it can (less memory)
            heads = self.query.out_features // self.head_size
            banded = [attention.project_banded(hidden_states, p, plan, heads) for p in (self.key, self.value)]
            banded = None if banded[0] is None else tuple(banded)
        if banded is not None:
            n, w = hidden_states.shape[1], plan.window
            q = self._heads(self.query(hidden_states))
            k, v = (x[:, w:w + n].transpose(1, 2) for x in banded)
        else:
            q, k, v = (self._heads(p(hidden_states)) for p in (self.query, self.key, self.value))
        if self.mode == "full":
            out = attention.full_attention(q, k, v, key_padding)
        else:
            g_rows = None
            if plan.n_glob:  # global queries at the global positions only, their keys and values folded into them
                rows = torch.gather(hidden_states, 1, plan.order[:, :, None].expand(-1, -1, hidden_states.shape[-1]))
                g_rows = attention.global_rows_folded(self._heads(self.query_global(rows)), hidden_states,
                                                      self.key_global, self.value_global, plan.keep)
            out = attention.sliding_window_attention(q, k, v, self.window, plan_=plan, global_out=g_rows,
                                                     banded_kv=banded)
        b, h, n, d = out.shape
        return out.transpose(1, 2).reshape(b, n, h * d), None

    def cls_row(self, hidden_states, key_padding, plan) -> torch.Tensor | None:
        """The attention output of the first ([CLS]) row alone, (b, 1, hidden), or None where it is not cheaper
        than the whole layer (sliding mode with [CLS] not global in every row). Full mode: the row's query against
        every real key. Sliding mode, [CLS] global: its global row, keys and values folded into the query
        (:func:`attention.global_rows_folded`), so no token's local or global key is projected at all."""
        first = hidden_states[:, :1]
        if self.mode == "full":
            q, k, v = self._heads(self.query(first)), self._heads(self.key(hidden_states)), self._heads(self.value(hidden_states))
            out = attention.full_attention(q, k, v, key_padding)
        elif plan.first_global:  # [CLS] is global in every row: it reads the whole input
            out = attention.global_rows_folded(self._heads(self.query_global(first)), hidden_states, self.key_global,
                                               self.value_global, plan.keep)
        else:
            return None
        return out.transpose(1, 2).reshape(out.shape[0], 1, -1)


class LongClassifier(nn.Module):
    """BERT classifier over long inputs: extended positions + sliding-window (or full) attention per layer."""

    def __init__(self, model: nn.Module, max_positions: int, attention_window: int, mode: str = "sliding",
                 backend: str = "auto"):
        super().__init__()
        base = getattr(model, model.base_model_prefix)
        self.embeddings = base.embeddings
        extend_positions(self.embeddings, max_positions)
        self.layers = base.encoder.layer
        for layer in self.layers:
            layer.attention.self = LongSelfAttention(layer.attention.self, attention_window // 2, mode)
        self.pooler, self.dropout, self.classifier = base.pooler, model.dropout, model.classifier
        self.max_positions, self.attention_window, self.mode = max_positions, attention_window, mode
        self.backend = backend  # sliding attention's implementation (tasks/longdoc/attention.py): auto|dense|flex|blocked
        self.last_backend: str | None = None  # what the last forward pass used (reported by the mechanisms)
        self.gradient_checkpointing = False  # recompute each layer in backward (training at long lengths)
        self.config = model.config
        # BERT's layer layout (attention -> output projection + norm -> FFN + norm): the FFN then runs in chunks,
        # and the last layer can compute the [CLS] row alone where the pooler reads only that row
        self.bert_layout = all(isinstance(layer, BertLayer) for layer in self.layers)
        self.cls_row_only = self.bert_layout and isinstance(self.pooler, BertPooler)

    def hidden_states(self, input_ids, attention_mask=None, global_mask=None, cls_only: bool = False) -> torch.Tensor:
        """The encoder's last hidden states (b, n, hidden); global attention on [CLS] unless ``global_mask`` says.
        ``cls_only``: the last layer computes the [CLS] row alone, (b, 1, hidden) — exact for a reader of that row
        (the pooler): every row reaches it through the keys and values, and the output projection, FFN and layer
        norms act on each row alone (the same shortcut as the mobile export's last block, ``compress/export.py``).
        At 4,096 tokens it skips about a sixth of the forward pass, in training as well."""
        if input_ids.shape[1] > self.max_positions:
            raise ValueError(f"input of {input_ids.shape[1]} tokens exceeds max_positions={self.max_positions}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if global_mask is None:  # global attention on [CLS], as Longformer does for classification
            global_mask = torch.zeros_like(input_ids, dtype=torch.bool)
            global_mask[:, 0] = True
        h = self.embeddings(input_ids=input_ids)
        keep = attention_mask.bool()
        plan = None
        if self.mode != "full":  # masks built once for every layer of this pass
            plan = attention.plan(keep, global_mask.bool(), self.attention_window // 2, tuple(input_ids.shape),
                                  input_ids.device, self.backend)
        self.last_backend = "sdpa-full" if plan is None else plan.backend
        last = len(self.layers) - 1
        run = self._bert_layer if self.bert_layout else (lambda layer_, h_, mask, _cls_only: layer_(h_, mask))
        for i, layer in enumerate(self.layers):
            args = (layer, h, (keep, plan), cls_only and i == last)
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                from torch.utils.checkpoint import checkpoint

                h = checkpoint(run, *args, use_reentrant=False)
            else:
                h = run(*args)
        return h

    @staticmethod
    def _bert_layer(layer: nn.Module, h: torch.Tensor, mask: tuple, cls_only: bool = False) -> torch.Tensor:
        """One BERT layer: attention (the [CLS] row alone where ``cls_only`` and it is cheaper), then the FFN in
        chunks of :data:`FFN_CHUNK` tokens. transformers' own FFN chunking (``chunk_size_feed_forward``) needs the
        length to be a multiple of the chunk, which documents are not."""
        row = layer.attention.self.cls_row(h, *mask) if cls_only else None
        attended = layer.attention(h, mask)[0] if row is None else layer.attention.output(row, h[:, :1])
        n = attended.shape[1]
        if n <= FFN_CHUNK:
            return layer.feed_forward_chunk(attended)
        pieces = (layer.feed_forward_chunk(attended[:, i:i + FFN_CHUNK]) for i in range(0, n, FFN_CHUNK))
        if torch.is_grad_enabled():
            return torch.cat(list(pieces), dim=1)
        out = torch.empty_like(attended)  # inference: each chunk written in place, no list of chunks to concatenate
        for i, piece in zip(range(0, n, FFN_CHUNK), pieces):
            out[:, i:i + FFN_CHUNK] = piece
        return out

    def forward(self, input_ids, attention_mask=None, global_mask=None):
        """Logits (b, labels): the pooler reads the [CLS] row, so the last layer computes that row alone."""
        h = self.hidden_states(input_ids, attention_mask, global_mask, cls_only=self.cls_row_only)
        return self.classifier(self.dropout(self.pooler(h)))

    def save_pretrained(self, path: str | Path, safe_serialization: bool = True) -> None:
        """Weights (global projections and extended positions included) as ``model.safetensors`` plus the source
        config with ``max_position_embeddings`` extended: what the training checkpoints and :func:`save_long` write."""
        from safetensors.torch import save_model

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_model(self, str(path / "model.safetensors"))
        self.config.save_pretrained(path)

    def set_mode(self, mode: str) -> None:
        for layer in self.layers:
            layer.attention.self.mode = mode
        self.mode = mode


def extend_positions(embeddings: nn.Module, max_positions: int) -> None:
    """Copy the trained position table until it covers ``max_positions`` (Longformer's initialisation)."""
    old = embeddings.position_embeddings.weight.detach()
    n_old, dim = old.shape
    if max_positions <= n_old:
        return
    new = torch.empty(max_positions, dim)
    for start in range(0, max_positions, n_old):
        new[start : start + n_old] = old[: max_positions - start]
    embeddings.position_embeddings = nn.Embedding.from_pretrained(new, freeze=False)
    embeddings.position_ids = torch.arange(max_positions).expand((1, -1))
    embeddings.token_type_ids = torch.zeros((1, max_positions), dtype=torch.long)


def save_long(long: LongClassifier, tokenizer, out_dir: str | Path, **manifest) -> str:
    """A trained long model folder (format ``long``): weights, config, tokenizer, manifest written last."""
    with models.atomic_dir(out_dir) as tmp:
        long.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        models.write_manifest(tmp, format="long", max_length=long.max_positions, max_positions=long.max_positions,
                              attention_window=long.attention_window, mode=long.mode, **manifest)
    return str(out_dir)


def is_long(model_dir: str | Path) -> bool:
    """A folder written by :func:`save_long` (not an ordinary classifier folder)."""
    return (Path(model_dir) / models.MANIFEST).is_file() and models.read_manifest(model_dir).get("format") == "long"


def load_long(model_dir: str | Path, backend: str = "auto") -> LongClassifier:
    """Load a folder written by :func:`save_long` (structure from its config, then every weight, strictly)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForSequenceClassification

    manifest = models.read_manifest(model_dir)
    if manifest.get("format") != "long":
        raise ValueError(f"{model_dir}: not a long model folder (format {manifest.get('format')!r}, expected 'long')")
    config = AutoConfig.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_config(config)
    long = LongClassifier(model, manifest["max_positions"], manifest["attention_window"], manifest["mode"], backend)
    long.load_state_dict(load_file(str(Path(model_dir) / "model.safetensors")))
    return long.eval()


def longify(model_dir: str, max_positions: int = 4096, attention_window: int = 256, mode: str = "sliding",
            backend: str = "auto") -> LongClassifier:
    model = models.load_hf_model(model_dir)
    long = LongClassifier(model, max_positions, attention_window, mode, backend).eval()
    long.config.max_position_embeddings = max_positions
    return long
