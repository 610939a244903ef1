"""Attention for long documents: our sliding-window + global attention (the Longformer pattern) and a
reference masked full-attention implementation of the same pattern, used to check it.

Pattern (Longformer): token i attends to every j with |i - j| <= w (w = one-sided window = attention_window / 2)
and to every global token; a global token attends to all tokens (with its own q/k/v projections). Global keys are
left out of the local band so they are not counted twice, as in Hugging Face's Longformer.

Three ways to compute the local part, chosen once per forward pass by :func:`plan` (``backend``):

* ``dense`` — the same pattern as one SDPA call with an n x n boolean mask. O(n²): ``auto`` picks it for short
  inputs (on CUDA below :data:`DENSE_MAX_TOKENS`; on CPU where one block's band already covers the input).
* ``flex`` — PyTorch FlexAttention under ``torch.compile``, never dynamo's silent recompile-limit fallback to eager
  dense attention: on CUDA one ``dynamic=True`` kernel serves every length; on CPU, where inductor's FlexAttention
  template cannot be compiled with dynamic shapes (torch 2.13: C++ compile error), lengths are padded to a declared
  set of buckets (:data:`CPU_BUCKETS`, at most 25 % padding) and the compiled function's recompile limit
  covers them. Its block mask is built in closed form from the band (``BlockMask.from_kv_blocks``): O((n/128)²) block
  indices, never the dense n x n mask; tiles wholly inside the band with no padding or global key skip the mask
  function.
* ``blocked`` — no compiler needed; ``auto``'s choice on CPU at every length (fastest there, training included) and
  on CUDA where FlexAttention cannot run: the sequence is cut into blocks of c = :data:`BLOCK_QUERIES` queries; each
  block attends to the c + 2w keys of its band plus the G global keys, O(n · (c + 2w + G)), the blocks being the
  batch of one 4-D ``scaled_dot_product_attention`` call with a boolean band mask (so the fused kernel serves it).
  In inference on CPU the bands are not copied at all: each block's keys and values are an overlapping strided view
  of K and V, the G global keys are merged afterwards through the kernel's log-sum-exp (:func:`_strided_local`).

Global tokens' own rows (full attention with the global projections) are computed separately in every case.
A :class:`Plan` holds what every layer of one forward pass shares (the choice, the masks, the global positions), so
the masks are built once per forward, nothing is cached across calls (a mask made under ``inference_mode`` is never
reused in training) and the only host sync is reading the number of global tokens, once per forward.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

BACKENDS = ("auto", "dense", "flex", "blocked")
# On CUDA, up to this many tokens ``auto`` computes the band with one dense masked SDPA call, FlexAttention above
# (measured on an H100). On CPU ``auto`` picks ``blocked`` wherever one block's keys do not already cover the input:
# one attention layer (12 heads x 32 dims, w = 128, [CLS] global, 2 cores) took 7-9 / 13 / 47 ms at 512 / 1,024 /
# 4,096 tokens against dense masked SDPA's 10 / 25 / 572 and FlexAttention's - / 36 / 139 (SDPA full without the
# band: 5 / 18 / 280).
DENSE_MAX_TOKENS = {"cuda": 2048}
# Queries per block of ``blocked``: each block copies its c + 2w keys and values, so smaller blocks waste less of the
# band (c = 64: 80 % of scores visible) but copy more (5x K and V). One layer at 4,096 tokens, w = 128, [CLS] global:
# c = 64 / 128 / 256 took 62-67 / 47 / 55 ms (2 cores; SDPA full 271-288 ms).
BLOCK_QUERIES = 128
# Queries per block where the bands are strided views, not copies (inference on CPU): smaller blocks waste less of
# the band. One layer at 4,096 tokens, w = 128, [CLS] global, 2 cores: c = 32 / 64 / 128 took 34 / 29 / 36 ms
# (the copying path: 44 ms)
STRIDED_QUERIES = 64
STRIDED_GROUP = 16  # blocks per kernel call there: bounds its float mask and output to ~1.5 MB each at MiniLM's size
GROUP_BLOCKS = 4  # blocks per SDPA call of ``blocked``: bounds its K/V band copies (4 x 384 keys: ~2.4 MB each at
# MiniLM's size). 4,096 tokens, 2 cores, side by side: 8 -> 4 took peak RSS 608 -> 593 MB at the same speed
FLEX_BLOCK = 128  # FlexAttention's tile; sequences are padded to a multiple of it


def _buckets(lo: int = 1024, hi: int = 1 << 17) -> tuple[int, ...]:
    """Powers of two and three quarter-steps between them (1024, 1280, 1536, 1792, 2048, 2560, ...): at most 25 %
    padding, and the usual lengths (4,096, 8,192, ...) exactly."""
    out, base = [], lo
    while base < hi:
        out += [base * m // 4 for m in (4, 5, 6, 7)]
        base *= 2
    return tuple(out + [hi])


CPU_BUCKETS = _buckets()  # padded lengths FlexAttention is compiled for on CPU (1,024 ... 131,072: 29 shapes)
_FLEX: dict = {}
_SAID: set = set()


def flex_available() -> bool:
    """FlexAttention is importable and torch.compile can build a kernel here (a C++ compiler on CPU, triton on CUDA)."""
    if "ok" not in _FLEX:
        try:
            from torch.nn.attention.flex_attention import flex_attention  # noqa: F401

            _FLEX["ok"] = True
        except ImportError:
            _FLEX["ok"] = False
    return _FLEX["ok"]


def choose(backend: str, n: int, device: torch.device | str, grad: bool = False, window: int = 0) -> str:
    """The backend one forward pass uses: ``backend`` unless ``auto`` (or overridden by EFFILM_ATTENTION_BACKEND).
    ``auto``: on CPU ``blocked`` (``dense`` when one block's band, BLOCK_QUERIES + 2 x ``window`` keys, covers the
    input); on CUDA ``dense`` for short inputs, FlexAttention for long ones (``blocked`` without a compiler).
    FlexAttention has no backward on CPU (torch 2.13)."""
    backend = os.environ.get("EFFILM_ATTENTION_BACKEND", backend)
    if backend not in BACKENDS:
        raise ValueError(f"attention backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    dev = torch.device(device).type
    if backend == "flex" and grad and dev == "cpu":
        raise ValueError("attention backend 'flex' cannot train on CPU (FlexAttention has no CPU backward in torch "
                         f"{torch.__version__}): use 'auto' or 'blocked'")
    if backend != "auto":
        return backend
    if dev == "cpu":
        return "dense" if n <= BLOCK_QUERIES + 2 * window else "blocked"
    if n <= DENSE_MAX_TOKENS.get(dev, 2048):
        return "dense"
    return "flex" if flex_available() else "blocked"


@dataclass
class Plan:
    """What every attention layer of one forward pass shares (built by :func:`plan`)."""

    backend: str
    window: int
    n: int
    keep: torch.Tensor  # (b, n) bool, real tokens
    glob: torch.Tensor  # (b, n) bool, global tokens (real ones only)
    n_glob: int  # most global tokens in any row
    first_global: bool = False  # the first token ([CLS]) is global in every row
    strided: bool = False  # ``blocked`` reads its bands as strided views (inference on CPU: :func:`_strided_local`)
    order: torch.Tensor | None = None  # (b, G) positions of each row's global tokens (padded with non-global ones)
    g_valid: torch.Tensor | None = None  # (b, G) which of ``order`` are global
    dense_mask: torch.Tensor | None = None  # (b, 1, n, n) for ``dense``
    block_mask: object | None = None  # FlexAttention BlockMask for ``flex``
    blocked_mask: torch.Tensor | None = None  # (b * nb, 1, c, c + 2w + G) for ``blocked`` (strided: no G)


def plan(key_padding: torch.Tensor | None, global_mask: torch.Tensor | None, window: int, shape: tuple[int, int],
         device, backend: str = "auto", grad: bool | None = None) -> Plan:
    """Build the shared masks once. ``shape``: (b, n). ``window``: one-sided w. ``grad``: a backward pass will follow
    (FlexAttention then also needs the transposed block index; default: ``torch.is_grad_enabled()``). A CPU plan
    built with ``grad=False`` serves inference only (``blocked`` then reads strided bands, which have no backward)."""
    b, n = shape
    keep = torch.ones(b, n, dtype=torch.bool, device=device) if key_padding is None else key_padding.bool()
    glob = torch.zeros(b, n, dtype=torch.bool, device=device) if global_mask is None else global_mask.bool() & keep
    n_glob, first_global = 0, False
    if n:  # the one host sync of a forward pass
        n_glob, first_global = torch.stack([glob.sum(1).max(), glob[:, 0].all().long()]).tolist()
    grad = torch.is_grad_enabled() if grad is None else grad
    chosen = choose(backend, n, device, grad, window)
    if (chosen, backend) not in _SAID:
        _SAID.add((chosen, backend))
        log.info("sliding-window attention: backend %s (asked: %s) from %d tokens on %s", chosen, backend, n,
                 torch.device(device).type)
    p = Plan(chosen, window, n, keep, glob, n_glob, bool(first_global))
    if n_glob:
        p.order = torch.argsort((~glob).to(torch.int8), dim=1, stable=True)[:, :n_glob]  # global positions first
        p.g_valid = torch.gather(glob, 1, p.order)
    if chosen == "dense":
        pos = torch.arange(n, device=device)
        band = (pos[:, None] - pos[None, :]).abs() <= window
        p.dense_mask = ((band[None] & ~glob[:, None, :] | glob[:, None, :]) & keep[:, None, :])[:, None]
    elif chosen == "flex":
        p.block_mask = _band_block_mask(keep, glob, window, grad)
    elif not grad and torch.device(device).type == "cpu":
        p.strided = True
        p.blocked_mask = _blocked_mask(p, STRIDED_QUERIES, with_globals=False)
    else:
        p.blocked_mask = _blocked_mask(p, BLOCK_QUERIES)
    return p


def _band_block_mask(keep: torch.Tensor, glob: torch.Tensor, w: int, grad: bool):
    """The band + global-column block mask in closed form: which 128 x 128 tiles hold any visible pair (partial: the
    mask function decides per element) and which hold only visible pairs (full: computed without it)."""
    from torch.nn.attention.flex_attention import BlockMask

    b, n = keep.shape
    B = FLEX_BLOCK
    n_pad = _padded(n, keep.device)
    keep_p, glob_p = F.pad(keep, (0, n_pad - n), value=False), F.pad(glob, (0, n_pad - n), value=False)
    nb = n_pad // B
    blk = torch.arange(nb, device=keep.device)
    dist = (blk[:, None] - blk[None, :]).abs()  # (nb, nb) block distance
    band_any = (dist == 0) | ((dist - 1) * B + 1 <= w)  # the closest pair of the two tiles is inside the band
    band_all = dist * B + B - 1 <= w  # the farthest pair is
    kb, gb = keep_p.view(b, nb, B), glob_p.view(b, nb, B)
    keep_any, keep_all, glob_any = kb.any(-1), kb.all(-1), gb.any(-1)  # (b, nb) per key tile
    some = (band_any[None] & keep_any[:, None, :]) | glob_any[:, None, :]  # (b, nq, nk)
    full = band_all[None] & keep_all[:, None, :] & ~glob_any[:, None, :]
    partial = some & ~full

    def sparse(m: torch.Tensor):
        num = m.sum(-1, dtype=torch.int32)[:, None]  # (b, 1, nq)
        idx = torch.argsort((~m).to(torch.int8), dim=-1, stable=True).to(torch.int32)[:, None]  # listed tiles first
        return num, idx

    def mask_mod(bi, hi, qi, ki):
        return keep_p[bi, ki] & ((((qi - ki).abs() <= w) & ~glob_p[bi, ki]) | glob_p[bi, ki])

    (kv_num, kv_idx), (full_num, full_idx) = sparse(partial), sparse(full)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=B, mask_mod=mask_mod,
                                    seq_lengths=(n_pad, n_pad), compute_q_blocks=grad)


def _padded(n: int, device) -> int:
    """The length FlexAttention computes: a multiple of its tile on CUDA, the next declared bucket on CPU."""
    if torch.device(device).type != "cpu":
        return -(-n // FLEX_BLOCK) * FLEX_BLOCK
    for size in CPU_BUCKETS:
        if size >= n:
            return size
    return -(-n // CPU_BUCKETS[-1]) * CPU_BUCKETS[-1]


def _flex_fn(device) -> object:
    kind = torch.device(device).type
    if kind not in _FLEX:
        from torch.nn.attention.flex_attention import flex_attention

        # fullgraph=True: hitting the recompile limit raises instead of silently running flex_attention eagerly
        # (dense n x n scores, 10x slower)
        if kind == "cpu":  # one compile per bucket (and per dtype / grad mode): the limit covers them all
            _FLEX[kind] = torch.compile(flex_attention, dynamic=False, fullgraph=True,
                                        recompile_limit=4 * len(CPU_BUCKETS))
        else:  # one kernel for every length (measured on an H100: 14 lengths, one compile)
            _FLEX[kind] = torch.compile(flex_attention, dynamic=True, fullgraph=True)
    return _FLEX[kind]


def _flex_local(q, k, v, p: Plan, scale) -> torch.Tensor:
    n = q.shape[2]
    pad = p.block_mask.seq_lengths[0] - n
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
    return _flex_fn(q.device)(q.contiguous(), k.contiguous(), v.contiguous(), block_mask=p.block_mask, scale=scale)[:, :, :n]


def sliding_window_attention(q, k, v, window: int, key_padding: torch.Tensor | None = None,
                             global_mask: torch.Tensor | None = None, global_qkv: tuple | None = None,
                             scale: float | None = None, backend: str = "auto", plan_: Plan | None = None,
                             global_out: torch.Tensor | None = None, banded_kv: tuple | None = None) -> torch.Tensor:
    """q, k, v: (b, h, n, d). ``key_padding``: (b, n) bool, True = real token. ``global_mask``: (b, n) bool.
    ``global_qkv``: (q_g, k_g, v_g) projections (b, h, n, d) used for the global tokens' own rows; or ``global_out``:
    those rows already computed (b, h, G, d), in ``plan_.order`` (:func:`global_rows_folded`). ``banded_kv``: for
    ``blocked``, K and V as :func:`project_banded` wrote them (``k``/``v`` then are views into them).
    ``backend``: auto | dense | flex | blocked. ``plan_``: a :class:`Plan` shared by the layers of one forward pass
    (built here when not given). Returns (b, h, n, d)."""
    b, n = q.shape[0], q.shape[2]
    p = plan_ or plan(key_padding, global_mask, window, (b, n), q.device, backend,
                      grad=torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v)))
    if p.backend == "dense":
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=p.dense_mask, scale=scale)
    elif p.backend == "flex":
        out = _flex_local(q, k, v, p, scale)
    else:
        out = _blocked_local(q, k, v, p, scale, banded_kv)
    # ``blocked`` writes its own output buffer: in inference the global rows go in in place (one n x hidden copy less)
    return _global_rows(out, q, k, v, p, global_qkv, scale, global_out,
                        inplace=p.backend == "blocked" and not torch.is_grad_enabled())


def _blocked_mask(p: Plan, c: int, with_globals: bool = True) -> torch.Tensor:
    """(b * nb, 1, c, c + 2w + G) bool for ``blocked``: block j's c queries see the band keys of positions
    [j*c - w, j*c + c + w) that are real and not global, then (``with_globals``) the row's G global keys. Every
    query also sees its own position, so no row is fully masked (padded and global rows are cut off or replaced
    afterwards; a fully masked row would be NaN, and NaN reaches the gradients)."""
    b, n, w = p.keep.shape[0], p.n, p.window
    nb = -(-n // c)
    L = c + 2 * w
    local_ok = p.keep & ~p.glob
    ok = F.pad(local_ok, (w, w + nb * c - n), value=False).unfold(1, L, c)  # (b, nb, L)
    rel = torch.arange(L, device=ok.device)[None, :] - w - torch.arange(c, device=ok.device)[:, None]  # (c, L)
    mask = (rel.abs() <= w)[None, None] & ok[:, :, None, :] | (rel == 0)[None, None]  # (b, nb, c, L)
    g = p.n_glob if with_globals else 0
    if g:
        mask = torch.cat([mask, p.g_valid[:, None, None, :].expand(b, nb, c, g)], dim=3)
    return mask.reshape(b * nb, 1, c, L + g)


def _blocked_local(q, k, v, p: Plan, scale, banded_kv: tuple | None = None) -> torch.Tensor:
    """Blocks of c queries become batch entries of 4-D SDPA calls (so the fused CPU/CUDA kernels serve them; a 5-D
    call falls back to the unfused path, measured 5-8x slower on CPU), each with its c + 2w band keys (+ G global),
    :data:`GROUP_BLOCKS` blocks per call so the band copies stay a few MB whatever the length. Keys are gathered in
    (token, head, dim) layout, where each block's band is one contiguous run of memory: the copy is a memcpy per
    block (the same copy from (head, token, dim) layout took as long as the attention). A plan built for inference
    on CPU takes :func:`_strided_local` instead."""
    if p.strided:
        if torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v)):
            raise ValueError("this attention plan was built for inference (grad=False): its strided bands have no "
                             "backward; build the plan with grad=True (the default under autograd) to train")
        return _strided_local(q, k, v, p, scale, banded_kv)
    b, h, n, d = q.shape
    w, c, g = p.window, BLOCK_QUERIES, p.n_glob
    nb = -(-n // c)
    L = c + 2 * w
    qt, kt, vt = _token_major(q, k, v, w, nb * c, banded_kv)
    qt = qt.view(b, nb, c, h, d)
    if g:  # each row's global keys (padded to the max count), appended as extra keys of every block
        gk, gv = (x[:, None] for x in _global_keys(kt, vt, p, n))
    masks = p.blocked_mask.view(b, nb, 1, c, L + g)
    out = q.new_empty(b, nb, c, h, d)
    for j0 in range(0, nb, GROUP_BLOCKS):
        m = min(GROUP_BLOCKS, nb - j0)

        def bands(xt: torch.Tensor, glob_x) -> torch.Tensor:
            x = xt.new_empty(b, m, L + g, h, d)
            x[:, :, :L] = xt.as_strided((b, m, L, h, d), (xt.stride(0), c * h * d, h * d, d, 1),
                                        xt.storage_offset() + j0 * c * h * d)
            if g:
                x[:, :, L:] = glob_x
            return x.view(b * m, L + g, h, d).transpose(1, 2)

        qb = qt[:, j0:j0 + m].reshape(b * m, c, h, d).transpose(1, 2)
        o = F.scaled_dot_product_attention(qb, bands(kt, gk if g else None), bands(vt, gv if g else None),
                                           attn_mask=masks[:, j0:j0 + m].reshape(b * m, 1, c, L + g), scale=scale)
        out[:, j0:j0 + m] = o.view(b, m, h, c, d).transpose(2, 3)
    return out.view(b, nb * c, h, d)[:, :n].transpose(1, 2)


def _token_major(q, k, v, w: int, N: int, banded_kv: tuple | None):
    """Q as (b, N, h, d) and K, V as (b, w + N + w, h, d), zero-padded, in the projection's own (token, head, dim)
    layout: no copy where Q needs no padding and K, V come already projected into buffers long enough
    (:func:`project_banded`). The bands read past no row's own buffer."""
    n = q.shape[2]
    qt = q.transpose(1, 2)
    qt = qt if N == n and qt.is_contiguous() else F.pad(qt, (0, 0, 0, 0, 0, N - n)).contiguous()
    if banded_kv is not None and all(x.is_contiguous() and x.shape[1] >= w + N + w for x in banded_kv):
        return (qt, *banded_kv)
    return (qt, *(F.pad(x.transpose(1, 2), (0, 0, 0, 0, w, w + N - n)).contiguous() for x in (k, v)))


def _global_keys(kt: torch.Tensor, vt: torch.Tensor, p: Plan, n: int) -> tuple:
    """Each row's global keys and values (b, G, h, d), padded to the most global tokens of any row."""
    b, _, h, d = kt.shape
    idx = p.order[:, :, None, None].expand(b, p.n_glob, h, d)
    return tuple(torch.gather(x[:, p.window:p.window + n], 1, idx) for x in (kt, vt))


def _strided_local(q, k, v, p: Plan, scale, banded_kv: tuple | None = None) -> torch.Tensor:
    """``blocked`` without copying a band (inference on CPU): block j's c = :data:`STRIDED_QUERIES` queries and its
    c + 2w keys and values are overlapping strided views of the (token, head, dim) buffers, :data:`STRIDED_GROUP`
    blocks the batch of one fused-kernel call. The G global keys are not appended to every block: the kernel also
    returns each query's log-sum-exp over its band, and the global keys join through it, out = (e^lse · band +
    Σ e^s_g · v_g) / (e^lse + Σ e^s_g). The private op is called because public SDPA does not return the log-sum-exp.
    Training takes the copying path: autograd through overlapping strided views is not worth the risk."""
    b, h, n, d = q.shape
    w, c, g = p.window, STRIDED_QUERIES, p.n_glob
    nb = -(-n // c)
    N, L = nb * c, c + 2 * w
    qt, kt, vt = _token_major(q, k, v, w, N, banded_kv)
    mask = p.blocked_mask.view(b, nb, 1, c, L)
    scale = d ** -0.5 if scale is None else scale
    out, lse = qt.new_empty(b, N, h, d), qt.new_empty(b, N, h, dtype=torch.float32)
    for i in range(b):
        for j0 in range(0, nb, STRIDED_GROUP):
            m = min(STRIDED_GROUP, nb - j0)
            rows = slice(j0 * c, (j0 + m) * c)
            kb, vb = (x.as_strided((m, L, h, d), (c * h * d, h * d, d, 1), x[i].storage_offset() + j0 * c * h * d)
                      .transpose(1, 2) for x in (kt, vt))  # block j: rows j*c ... j*c + L of the buffer, no copy
            ok = mask[i, j0:j0 + m]
            o, lse_ = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                qt[i, rows].view(m, c, h, d).transpose(1, 2), kb, vb, scale=scale,
                attn_mask=torch.zeros(ok.shape, dtype=torch.float32).masked_fill_(~ok, float("-inf")))
            out[i, rows] = o.transpose(1, 2).reshape(m * c, h, d)  # the kernel writes (block, query, head, dim)
            lse[i, rows] = lse_.transpose(1, 2).reshape(m * c, h)
    if g:  # the global keys through the log-sum-exp: (b, N, h, G) scores, padded global slots masked out
        gk, gv = _global_keys(kt, vt, p, n)
        # every query's score to each global key of its head, as one GEMM with a block-diagonal (h d, h G) matrix
        # (a batched (h, n, d) x (h, d, G) product runs a matrix-vector kernel per head: 6x slower here)
        per_head = torch.einsum("bghd,hk->bhdkg", gk, torch.eye(h, dtype=gk.dtype)).reshape(b, h * d, h * g)
        s = torch.bmm(qt.view(b, N, h * d).float(), per_head.float()).view(b, N, h, g).mul_(scale)  # fp32 scores
        s.masked_fill_(~p.g_valid[:, None, None, :], float("-inf"))
        total = torch.logaddexp(lse, torch.logsumexp(s, -1))
        out.mul_(torch.exp(lse - total)[..., None].to(out.dtype))
        wts = torch.exp(s - total[..., None]).to(out.dtype)
        for j in range(g):
            out.addcmul_(wts[..., j:j + 1], gv[:, j:j + 1])
    return out[:, :n].transpose(1, 2)


def _global_rows(out, q, k, v, p: Plan, global_qkv, scale, g_rows=None, inplace: bool = False) -> torch.Tensor:
    """Global tokens attend to every token with the global projections; their rows replace the local ones."""
    if not p.n_glob:
        return out
    b, h, n, d = q.shape
    idx = p.order[:, None, :, None].expand(b, h, p.n_glob, d)
    if g_rows is None:
        qg, kg, vg = global_qkv if global_qkv is not None else (q, k, v)
        g_rows = F.scaled_dot_product_attention(torch.gather(qg, 2, idx), kg, vg, attn_mask=p.keep[:, None, None, :],
                                                scale=scale)
    valid = p.g_valid[:, None, :, None].expand(b, h, p.n_glob, d)
    rows = torch.where(valid, g_rows.to(out.dtype), torch.gather(out, 2, idx))
    return out.scatter_(2, idx, rows) if inplace else out.scatter(2, idx, rows)


def project_banded(x: torch.Tensor, linear: torch.nn.Linear, p: Plan, heads: int) -> torch.Tensor | None:
    """``linear(x)`` written straight into the zero-padded (b, w + n + w + pad, heads, d) buffer that ``blocked``
    reads its key/value bands from, instead of projecting and then copying into a padded one (two n x hidden copies
    per layer fewer). Inference on CPU only (``out=`` has no autograd; autocast picks its own dtype): else None."""
    if p.backend != "blocked" or torch.is_grad_enabled() or x.device.type != "cpu" or torch.is_autocast_enabled("cpu"):
        return None
    b, n, hidden = x.shape
    w, pad = p.window, -n % BLOCK_QUERIES
    buf = x.new_empty(b, w + n + w + pad, linear.out_features, dtype=torch.result_type(x, linear.weight))
    buf[:, :w].zero_()
    buf[:, w + n:].zero_()
    for i in range(b):  # a (n, out) slice of one row is contiguous: the matmul writes it in place
        if linear.bias is None:
            torch.mm(x[i], linear.weight.t(), out=buf[i, w:w + n])
        else:
            torch.addmm(linear.bias, x[i], linear.weight.t(), out=buf[i, w:w + n])
    return buf.view(b, buf.shape[1], heads, linear.out_features // heads)


def global_rows_folded(q_rows: torch.Tensor, x: torch.Tensor, key: torch.nn.Linear, value: torch.nn.Linear,
                       keep: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """The global tokens' own rows (b, h, G, d) from their queries ``q_rows`` and the layer input ``x`` (b, n, H),
    without projecting every token's global key and value (two n x H x H products: 14 % of a MiniLM layer's
    matmuls at 4,096 tokens): a score q . (W_k x + b_k) = (W_k^T q) . x + q . b_k, where the bias term is the same
    for every key of a row and softmax ignores it; the output sum_j p_j (W_v x_j + b_v) = W_v (sum_j p_j x_j) + b_v,
    as the p_j sum to 1. One SDPA call over the h x G folded queries, O(n . H . h . G)."""
    b, h, g, d = q_rows.shape
    hidden = x.shape[-1]
    wk, wv = key.weight.view(h, d, hidden), value.weight.view(h, d, hidden)
    qk = torch.einsum("bhgd,hdk->bhgk", q_rows, wk.to(q_rows.dtype)).reshape(b, 1, h * g, hidden)
    xs = x[:, None].to(qk.dtype)
    ctx = F.scaled_dot_product_attention(qk, xs, xs, attn_mask=keep.bool()[:, None, None, :],
                                         scale=d ** -0.5 if scale is None else scale).view(b, h, g, hidden)
    out = torch.einsum("bhgk,hdk->bhgd", ctx, wv.to(ctx.dtype))
    return out if value.bias is None else out + value.bias.view(h, d)[None, :, None].to(out.dtype)


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
