"""Attention for long documents: our sliding-window + global attention (the Longformer pattern) and a
reference masked full-attention implementation of the same pattern, used to check it.

Pattern (Longformer): token i attends to every j with |i - j| <= w (w = one-sided window = attention_window / 2)
and to every global token; a global token attends to all tokens (with its own q/k/v projections). Global keys are
left out of the local band so they are not counted twice, as in Hugging Face's Longformer.

Two implementations of the local part, chosen by ``backend``:

* ``flex`` — PyTorch FlexAttention compiled with ``torch.compile`` and a block-sparse mask: only the key blocks
  inside the band (and the global columns) are computed. Sequences are padded to a multiple of 512 so a handful of
  compiled shapes serve every length; block masks are cached. Used from 1024 tokens on (``auto``).
* ``blocked`` — no compiler needed: the sequence is cut into blocks of w queries; each block attends to the 3w
  keys of its own and the two neighbouring blocks plus the G global keys, O(n · (3w + G)), in one batched
  ``scaled_dot_product_attention`` call with a boolean band mask.

Global tokens' own rows (full attention with the global projections) are computed separately in both cases.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict

import torch
import torch.nn.functional as F


def band_mask(w: int, device=None) -> torch.Tensor:
    """(w, 3w) bool: query i of a block may see key j of [previous, own, next] block when |rel| <= w."""
    i = torch.arange(w, device=device)[:, None]
    j = torch.arange(3 * w, device=device)[None, :]
    return (j - w - i).abs() <= w


_FLEX: dict = {}
_MASKS: OrderedDict = OrderedDict()
FLEX_MIN_TOKENS = 1024
PAD_MULTIPLE = 512


def _flex_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401

        return True
    except ImportError:
        return False


def _choose(backend: str, n: int) -> str:
    backend = os.environ.get("EFFILM_ATTENTION_BACKEND", backend)
    if backend == "auto":
        return "flex" if n >= FLEX_MIN_TOKENS and _flex_available() else "blocked"
    return backend


def _flex_local(q, k, v, w: int, keep: torch.Tensor, glob: torch.Tensor, scale) -> torch.Tensor:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    if "fn" not in _FLEX:
        _FLEX["fn"] = torch.compile(flex_attention, dynamic=False)
    b, h, n, d = q.shape
    n_pad = -(-n // PAD_MULTIPLE) * PAD_MULTIPLE
    pad = n_pad - n
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        keep, glob = F.pad(keep, (0, pad), value=False), F.pad(glob, (0, pad), value=False)
    key = (n_pad, w, b, str(q.device), hashlib.sha1(keep.cpu().numpy().tobytes() + glob.cpu().numpy().tobytes()).hexdigest())
    block_mask = _MASKS.get(key)
    if block_mask is None:
        def mask_mod(bi, hi, qi, ki):
            return keep[bi, ki] & ((((qi - ki).abs() <= w) & ~glob[bi, ki]) | glob[bi, ki])

        block_mask = create_block_mask(mask_mod, b, None, n_pad, n_pad, device=q.device)
        _MASKS[key] = block_mask
        while len(_MASKS) > 32:
            _MASKS.popitem(last=False)
    else:
        _MASKS.move_to_end(key)
    return _FLEX["fn"](q.contiguous(), k.contiguous(), v.contiguous(), block_mask=block_mask, scale=scale)[:, :, :n]


def sliding_window_attention(q, k, v, window: int, key_padding: torch.Tensor | None = None,
                             global_mask: torch.Tensor | None = None, global_qkv: tuple | None = None,
                             scale: float | None = None, backend: str = "auto") -> torch.Tensor:
    """q, k, v: (b, h, n, d). ``key_padding``: (b, n) bool, True = real token. ``global_mask``: (b, n) bool.
    ``global_qkv``: (q_g, k_g, v_g) projections (b, h, n, d) used for the global tokens' own rows.
    ``backend``: auto | flex | blocked. Returns (b, h, n, d)."""
    b, h, n, d = q.shape
    w = window
    dev = q.device
    keep = torch.ones(b, n, dtype=torch.bool, device=dev) if key_padding is None else key_padding.bool()
    glob = torch.zeros(b, n, dtype=torch.bool, device=dev) if global_mask is None else global_mask.bool() & keep
    if _choose(backend, n) == "flex":
        out = _flex_local(q, k, v, w, keep, glob, scale)
    else:
        out = _blocked_local(q, k, v, w, keep, glob, scale)
    return _global_rows(out, q, k, v, keep, glob, global_qkv, scale)


def _blocked_local(q, k, v, w: int, keep: torch.Tensor, glob: torch.Tensor, scale) -> torch.Tensor:
    b, h, n, d = q.shape
    nb = -(-n // w)
    pad = nb * w - n
    dev = q.device

    # local keys: real, and not global (global keys are added separately below)
    local_ok = keep & ~glob
    qp = F.pad(q, (0, 0, 0, pad)).view(b, h, nb, w, d)
    kp = F.pad(k, (0, 0, w, w + pad)).unfold(2, 3 * w, w).transpose(-1, -2)  # (b, h, nb, 3w, d)
    vp = F.pad(v, (0, 0, w, w + pad)).unfold(2, 3 * w, w).transpose(-1, -2)
    ok = F.pad(local_ok, (w, w + pad), value=False).unfold(1, 3 * w, w)  # (b, nb, 3w)
    mask = band_mask(w, dev)[None, None] & ok[:, :, None, :]  # (b, nb, w, 3w)

    n_glob = int(glob.sum(1).max()) if glob.any() else 0
    if n_glob:
        # gather each row's global positions (padded to the max count) and append them as extra keys
        order = torch.argsort((~glob).to(torch.int8), dim=1, stable=True)[:, :n_glob]  # global positions first
        g_valid = torch.gather(glob, 1, order)  # (b, G)
        idx = order[:, None, :, None].expand(b, h, n_glob, d)
        gk, gv = torch.gather(k, 2, idx), torch.gather(v, 2, idx)  # (b, h, G, d)
        kp = torch.cat([kp, gk[:, :, None].expand(b, h, nb, n_glob, d)], dim=3)
        vp = torch.cat([vp, gv[:, :, None].expand(b, h, nb, n_glob, d)], dim=3)
        mask = torch.cat([mask, g_valid[:, None, None, :].expand(b, nb, w, n_glob)], dim=3)

    out = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask[:, None], scale=scale)
    # padded query rows have no visible key -> NaN; they are cut off here
    return out.reshape(b, h, nb * w, d)[:, :, :n]


def _global_rows(out, q, k, v, keep, glob, global_qkv, scale) -> torch.Tensor:
    """Global tokens attend to every token with the global projections; their rows replace the local ones."""
    b, h, n, d = q.shape
    n_glob = int(glob.sum(1).max()) if glob.any() else 0
    if n_glob:
        order = torch.argsort((~glob).to(torch.int8), dim=1, stable=True)[:, :n_glob]
        g_valid = torch.gather(glob, 1, order)
        qg, kg, vg = global_qkv if global_qkv is not None else (q, k, v)
        idx = order[:, None, :, None].expand(b, h, n_glob, d)
        g_rows = F.scaled_dot_product_attention(torch.gather(qg, 2, idx), kg, vg, attn_mask=keep[:, None, None, :], scale=scale)
        valid = g_valid[:, None, :, None].expand(b, h, n_glob, d)
        out = out.scatter(2, idx, torch.where(valid, g_rows, torch.gather(out, 2, idx)))
    return out


def reference_attention(q, k, v, window: int, key_padding=None, global_mask=None, global_qkv=None, scale=None):
    """The same pattern as a dense (n x n) masked attention: slow, obviously right; for tests."""
    b, h, n, d = q.shape
    keep = torch.ones(b, n, dtype=torch.bool) if key_padding is None else key_padding.bool()
    glob = torch.zeros(b, n, dtype=torch.bool) if global_mask is None else global_mask.bool() & keep
    pos = torch.arange(n)
    band = (pos[:, None] - pos[None, :]).abs() <= window
    mask = (band[None] & ~glob[:, None, :] | glob[:, None, :]) & keep[:, None, :]  # (b, n, n)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None], scale=scale)
    if glob.any():
        qg, kg, vg = global_qkv if global_qkv is not None else (q, k, v)
        full = F.scaled_dot_product_attention(qg, kg, vg, attn_mask=keep[:, None, None, :], scale=scale)
        out = torch.where(glob[:, None, :, None], full, out)
    return out


def full_attention(q, k, v, key_padding=None, scale=None):
    """SDPA full attention with a key-padding mask (the O(n²) baseline)."""
    mask = None if key_padding is None else key_padding.bool()[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
