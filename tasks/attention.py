"""Attention for long documents: our blocked sliding-window + global attention (the Longformer pattern) and a
reference masked full-attention implementation of the same pattern, used to check it.

Pattern (Longformer): token i attends to every j with |i - j| <= w (w = one-sided window = attention_window / 2)
and to every global token; a global token attends to all tokens (with its own q/k/v projections). Global keys are
left out of the local band so they are not counted twice, as in Hugging Face's Longformer.

Ours is blocked: the sequence is cut into blocks of w queries; each block attends to the 3w keys of its own and
the two neighbouring blocks plus the G global keys, so the cost is O(n · (3w + G)) instead of O(n²), computed by
one batched ``scaled_dot_product_attention`` call with a boolean band mask (CPU and GPU alike).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def band_mask(w: int, device=None) -> torch.Tensor:
    """(w, 3w) bool: query i of a block may see key j of [previous, own, next] block when |rel| <= w."""
    i = torch.arange(w, device=device)[:, None]
    j = torch.arange(3 * w, device=device)[None, :]
    return (j - w - i).abs() <= w


def sliding_window_attention(q, k, v, window: int, key_padding: torch.Tensor | None = None,
                             global_mask: torch.Tensor | None = None, global_qkv: tuple | None = None,
                             scale: float | None = None) -> torch.Tensor:
    """q, k, v: (b, h, n, d). ``key_padding``: (b, n) bool, True = real token. ``global_mask``: (b, n) bool.
    ``global_qkv``: (q_g, k_g, v_g) projections (b, h, n, d) used for the global tokens' own rows.
    Returns (b, h, n, d)."""
    b, h, n, d = q.shape
    w = window
    nb = -(-n // w)
    pad = nb * w - n
    dev = q.device
    keep = torch.ones(b, n, dtype=torch.bool, device=dev) if key_padding is None else key_padding.bool()
    glob = torch.zeros(b, n, dtype=torch.bool, device=dev) if global_mask is None else global_mask.bool() & keep

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
    out = out.reshape(b, h, nb * w, d)[:, :, :n]

    if n_glob:
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
