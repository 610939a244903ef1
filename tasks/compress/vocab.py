"""Vocabulary trimming: keep the WordPiece tokens the domain corpus uses (plus special and single-character
tokens, so any text still tokenizes) and shrink the embedding table to match, with the tokenizer rebuilt on the
trimmed vocabulary. Words seen in the corpus tokenize exactly as before (greedy longest-match over a subset that
contains every piece the original chose); unseen words may split into more pieces.

    compress(model_dir, cfg) -> model_dir     cfg: {"min_count": 1, "corpus": "train"}
"""

from __future__ import annotations

import tempfile
from collections import Counter

import torch
import torch.nn as nn

from tasks.core import data as data_mod
from tasks.core import models
from tasks.core.config import StepContext, VocabTrimStep


def used_token_ids(tokenizer, texts: list[str], min_count: int = 1) -> list[int]:
    counts: Counter = Counter()
    for i in range(0, len(texts), 256):
        for ids in tokenizer(texts[i : i + 256], add_special_tokens=False)["input_ids"]:
            counts.update(ids)
    vocab = tokenizer.get_vocab()
    keep = {i for i, c in counts.items() if c >= min_count}
    keep |= set(tokenizer.all_special_ids)
    keep |= {i for tok, i in vocab.items() if len(tok) == 1 or (tok.startswith("##") and len(tok) == 3)}
    return sorted(keep)


def trim(model: nn.Module, tokenizer, keep_ids: list[int]):
    """-> (model with a smaller embedding table, tokenizer over the kept tokens)."""
    from transformers import AutoTokenizer, BertTokenizer

    inv = {i: t for t, i in tokenizer.get_vocab().items()}
    tokens = [inv[i] for i in keep_ids]
    with tempfile.TemporaryDirectory() as tmp:
        new_tok = BertTokenizer(vocab={t: i for i, t in enumerate(tokens)},
                                do_lower_case=getattr(tokenizer, "do_lower_case", True),
                                model_max_length=tokenizer.model_max_length)
        if new_tok.convert_tokens_to_ids(tokens[-1]) != len(tokens) - 1:
            raise RuntimeError("trimmed tokenizer did not take the new vocabulary")
        new_tok.save_pretrained(tmp + "/tok")
        new_tok = AutoTokenizer.from_pretrained(tmp + "/tok")
    emb = model.get_input_embeddings()
    index = torch.tensor(keep_ids)
    new_emb = nn.Embedding(len(keep_ids), emb.embedding_dim, padding_idx=new_tok.pad_token_id)
    new_emb.weight.data.copy_(emb.weight.detach()[index])
    model.set_input_embeddings(new_emb)
    model.config.vocab_size = len(keep_ids)
    model.config.pad_token_id = new_tok.pad_token_id
    return model, new_tok


def compress(model_dir: str, step: VocabTrimStep, ctx: StepContext) -> str:
    from transformers import AutoTokenizer

    manifest = models.read_manifest(model_dir)
    model = models.load_hf_model(model_dir, manifest)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = data_mod.load_split(ctx.data["paths"][step.corpus])["text"].tolist()
    keep_ids = used_token_ids(tokenizer, texts, step.min_count)
    before = tokenizer.vocab_size
    model, new_tok = trim(model, tokenizer, keep_ids)
    return models.save_hf(model, new_tok, ctx.out_dir, **models.inherited(manifest), vocab_before=before,
                          vocab_after=len(keep_ids),
                          trimmed_from=str(model_dir))
