"""The hierarchical classifier — the classic peer of sparse attention for long documents: the document is cut into
chunks of ``chunk_tokens``, each chunk is encoded on its own by the (short) pretrained encoder, the chunks' [CLS]
vectors (plus a learned chunk-position embedding) pass through one small transformer layer so chunks can read each
other, and their masked mean feeds the classifier. Trained end to end (``tasks/longdoc/train_long.py``).

Cost grows linearly with the document (chunks are independent, 512 tokens each) like sliding-window attention,
but tokens in different chunks only meet through their chunks' summary vectors.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from tasks.core import models

FORMAT = "hierarchical"


class HierarchicalClassifier(nn.Module):
    def __init__(self, encoder: nn.Module, num_labels: int, chunk_tokens: int = 512, max_chunks: int = 8):
        super().__init__()
        self.encoder, self.config = encoder, encoder.config
        self.chunk_tokens, self.max_chunks = chunk_tokens, max_chunks
        hidden = encoder.config.hidden_size
        heads = next(h for h in (encoder.config.num_attention_heads, 4, 2, 1) if hidden % h == 0)
        self.chunk_position = nn.Embedding(max_chunks, hidden)
        nn.init.normal_(self.chunk_position.weight, std=0.02)
        self.mixer = nn.TransformerEncoderLayer(hidden, heads, dim_feedforward=2 * hidden, dropout=0.1,
                                                batch_first=True, norm_first=True)
        self.dropout = nn.Dropout(0.1)
        self.classifier = nn.Linear(hidden, num_labels)

    def chunks(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """(B, n) tokens of whole documents (leading [CLS], as a tokenizer writes them) -> (B*k, chunk_tokens) chunks
        each led by [CLS], their masks, and the (B, k) mask of chunks that hold any token."""
        cls = input_ids[:, :1]
        ids, mask = input_ids[:, 1:], attention_mask[:, 1:]
        size = self.chunk_tokens - 1
        k = min(self.max_chunks, max(1, math.ceil(ids.shape[1] / size)))
        pad = k * size - ids.shape[1]
        if pad > 0:
            ids = nn.functional.pad(ids, (0, pad), value=self.config.pad_token_id or 0)
            mask = nn.functional.pad(mask, (0, pad), value=0)
        ids, mask = ids[:, : k * size].reshape(-1, k, size), mask[:, : k * size].reshape(-1, k, size)
        b = ids.shape[0]
        chunk_ids = torch.cat([cls[:, None, :].expand(b, k, 1), ids], dim=2).reshape(b * k, size + 1)
        chunk_mask = torch.cat([mask.new_ones(b, k, 1), mask], dim=2).reshape(b * k, size + 1)
        present = mask.any(dim=2)
        present[:, 0] = True  # an empty document still has its [CLS] chunk
        return chunk_ids, chunk_mask, present

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        chunk_ids, chunk_mask, present = self.chunks(input_ids, attention_mask)
        b, k = present.shape
        flat = present.reshape(-1)
        vectors = self.encode_chunks(chunk_ids[flat], chunk_mask[flat])
        out = vectors.new_zeros(b * k, vectors.shape[-1])
        out[flat] = vectors
        return self.classifier(self.dropout(self.pool(out.reshape(b, k, -1), present)))

    def encode_chunks(self, chunk_ids: torch.Tensor, chunk_mask: torch.Tensor) -> torch.Tensor:
        """[CLS] vector of each chunk. Full chunks and partial ones (a document's tail: often a few tokens) are
        encoded apart, each cut to its own longest, so a tail of 1 token does not cost a full chunk's attention."""
        ends = (chunk_mask * torch.arange(1, chunk_mask.shape[1] + 1, device=chunk_mask.device)).amax(1)
        full = ends == chunk_mask.shape[1]  # (the width each chunk needs: up to its last real token)
        if bool(full.all()) or not bool(full.any()):
            width = int(ends.max())
            return self.encoder(input_ids=chunk_ids[:, :width], attention_mask=chunk_mask[:, :width]).last_hidden_state[:, 0]
        out = chunk_ids.new_zeros(chunk_ids.shape[0], self.config.hidden_size, dtype=self.chunk_position.weight.dtype)
        for part in (full, ~full):
            width = int(ends[part].max())
            states = self.encoder(input_ids=chunk_ids[part, :width], attention_mask=chunk_mask[part, :width])
            out = out.index_put((part.nonzero(as_tuple=True)[0],), states.last_hidden_state[:, 0].to(out.dtype))
        return out

    def pool(self, vectors: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """(B, k, hidden) chunk [CLS] vectors, (B, k) mask of real chunks -> (B, hidden): what the classifier reads
        (chunk positions added, one transformer layer across chunks, masked mean)."""
        vectors = vectors + self.chunk_position.weight[: vectors.shape[1]]
        mixed = self.mixer(vectors, src_key_padding_mask=~present)
        weights = present.unsqueeze(-1).to(mixed.dtype)
        return (mixed * weights).sum(1) / weights.sum(1).clamp(min=1)

    def save_pretrained(self, path: str | Path, safe_serialization: bool = True) -> None:
        """Every weight as ``model.safetensors`` plus the encoder's config (what checkpoints and :func:`save` write)."""
        from safetensors.torch import save_model

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_model(self, str(path / "model.safetensors"))
        self.config.save_pretrained(path)


def from_classifier(model, num_labels: int, chunk_tokens: int, max_tokens: int) -> HierarchicalClassifier:
    """A hierarchical classifier around a pretrained sequence classifier's encoder (its head is not used)."""
    return HierarchicalClassifier(model.base_model, num_labels, chunk_tokens,
                                  max_chunks=max(1, math.ceil((max_tokens - 1) / (chunk_tokens - 1))))


def save(model: HierarchicalClassifier, tokenizer, out_dir: str | Path, **manifest) -> str:
    with models.atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        models.write_manifest(tmp, format=FORMAT, max_length=model.chunk_tokens * model.max_chunks,
                              chunk_tokens=model.chunk_tokens, max_chunks=model.max_chunks, **manifest)
    return str(out_dir)


def is_hierarchical(model_dir: str | Path) -> bool:
    return (Path(model_dir) / models.MANIFEST).is_file() and models.read_manifest(model_dir).get("format") == FORMAT


def load(model_dir: str | Path) -> HierarchicalClassifier:
    """Load a folder written by :func:`save` (structure from its config and manifest, then every weight, strictly)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForSequenceClassification

    manifest = models.read_manifest(model_dir)
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{model_dir}: not a hierarchical model folder (format {manifest.get('format')!r})")
    # the encoder as from_classifier took it: a sequence classifier's base model (RoBERTa's has no pooler, AutoModel's
    # would, and the strict load would fail)
    encoder = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(model_dir)).base_model
    model = HierarchicalClassifier(encoder, len(manifest["labels"]), manifest["chunk_tokens"], manifest["max_chunks"])
    model.load_state_dict(load_file(str(Path(model_dir) / "model.safetensors")))
    return model.eval()
