"""Our blocked sliding-window attention against a dense masked reference of the same pattern, and long-ification."""

import pytest
import torch

from tasks.longdoc import attention, longify
from tests.conftest import make_tiny_model


@pytest.mark.parametrize("backend", ["blocked", "flex", "dense"])
@pytest.mark.parametrize("n, w, n_global, pad", [(37, 4, 0, 0), (64, 8, 1, 0), (50, 8, 3, 7), (16, 16, 1, 0), (9, 4, 2, 2),
                                                 (700, 32, 2, 30), (1000, 200, 2, 100), (1300, 300, 1, 0)])
def test_sliding_matches_reference(n, w, n_global, pad, backend):
    torch.manual_seed(n + w)
    b, h, d = 2, 3, 8
    q, k, v = (torch.randn(b, h, n, d) for _ in range(3))
    gq, gk, gv = (torch.randn(b, h, n, d) for _ in range(3))
    keep = torch.ones(b, n, dtype=torch.bool)
    if pad:
        keep[1, -pad:] = False
    glob = torch.zeros(b, n, dtype=torch.bool)
    if n_global:
        glob[:, 0] = True
        glob[0, torch.randperm(n - 1)[: n_global - 1] + 1] = True  # rows with different global counts
    ours = attention.sliding_window_attention(q, k, v, w, keep, glob, (gq, gk, gv), backend=backend)
    ref = attention.reference_attention(q, k, v, w, keep, glob, (gq, gk, gv))
    real = keep[:, None, :, None].expand_as(ref)
    assert torch.allclose(ours[real], ref[real], atol=1e-5), (ours - ref)[real].abs().max()
    if backend == "blocked":  # inputs that need gradients take the copying path (no strided views in autograd)
        trained = attention.sliding_window_attention(q.requires_grad_(), k, v, w, keep, glob, (gq, gk, gv),
                                                     backend=backend)
        assert torch.allclose(trained[real], ref[real], atol=1e-5), (trained - ref)[real].abs().max()


def test_window_covering_input_equals_full_attention():
    q, k, v = (torch.randn(1, 2, 20, 4) for _ in range(3))
    assert torch.allclose(attention.sliding_window_attention(q, k, v, 32), attention.full_attention(q, k, v), atol=1e-5)


def test_longified_model_matches_source_on_short_inputs(tmp_path):
    from tasks.core import models

    src = make_tiny_model(tmp_path / "m", num_labels=3)
    ref_model = models.load_hf_model(src)
    ids = torch.randint(1000, 2000, (2, 40))
    ids[:, 0] = 101
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0
    with torch.no_grad():
        ref = ref_model(input_ids=ids, attention_mask=mask).logits
        long = longify.longify(str(src), max_positions=2048, attention_window=128)  # 64 each side > 40 tokens
        assert long.embeddings.position_embeddings.weight.shape[0] == 2048
        assert torch.equal(long.embeddings.position_embeddings.weight[512:1024], long.embeddings.position_embeddings.weight[:512])
        assert torch.allclose(long(ids, mask), ref, atol=1e-4)
        long.set_mode("full")
        assert torch.allclose(long(ids, mask), ref, atol=1e-4)
        # and it runs far past the source model's 512 positions
        big = torch.randint(1000, 2000, (1, 1500))
        assert long(big).shape == (1, 3)


def test_many_lengths_one_process_no_recompile_fallback():
    """14 distinct lengths through FlexAttention in one process: every one compiled (never dynamo's recompile-limit
    fallback to eager dense attention: fullgraph=True would raise), at most one compile per padded shape, and each
    result equal to the dense reference."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    lengths = [1030 + 97 * i for i in range(14)]
    before = counters["stats"]["unique_graphs"]
    with torch.inference_mode():
        for n in lengths:
            q, k, v = (torch.randn(1, 2, n, 8) for _ in range(3))
            glob = torch.zeros(1, n, dtype=torch.bool)
            glob[:, 0] = True
            ours = attention.sliding_window_attention(q, k, v, 64, None, glob, backend="flex")
            assert torch.allclose(ours, attention.reference_attention(q, k, v, 64, None, glob), atol=1e-5), n
    shapes = {attention._padded(n, "cpu") for n in lengths}
    assert len(shapes) < len(lengths)  # buckets are shared: fewer compiles than lengths
    assert counters["stats"]["unique_graphs"] - before <= len(shapes)
    assert not counters["graph_break"]


def test_training_after_evaluation_in_one_process(tmp_path):
    """A forward under inference_mode, then training steps in the same process (no mask made under inference_mode
    may reach autograd), with every backend; gradients reach the global projections. On CPU ``auto`` evaluates
    and trains with ``blocked``; FlexAttention evaluates, and asking it to train on CPU is a clear error (it has no
    CPU backward)."""
    src = make_tiny_model(tmp_path / "m", num_labels=3)
    ids = torch.randint(1000, 2000, (2, 1100))
    for backend, evaluated, trained in (("auto", "blocked", "blocked"), ("blocked", "blocked", "blocked"),
                                        ("dense", "dense", "dense")):
        long = longify.longify(str(src), max_positions=2048, attention_window=64, backend=backend)
        with torch.inference_mode():
            long(ids)
        assert long.last_backend == evaluated
        long.train()
        loss = torch.nn.functional.cross_entropy(long(ids), torch.tensor([0, 2]))
        loss.backward()
        assert long.last_backend == trained
        g = long.layers[0].attention.self.query_global.weight.grad
        assert g is not None and g.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_close_to_reference(dtype):
    torch.manual_seed(1)
    n = 1200
    q, k, v = (torch.randn(1, 2, n, 16) for _ in range(3))
    glob = torch.zeros(1, n, dtype=torch.bool)
    glob[:, 0] = True
    ref = attention.reference_attention(q, k, v, 64, None, glob)
    with torch.inference_mode():
        for backend in ("flex", "blocked", "dense"):
            ours = attention.sliding_window_attention(*(x.to(dtype) for x in (q, k, v)), 64, None, glob, backend=backend)
            assert ours.dtype == dtype and (ours.float() - ref).abs().max() < 0.05, backend
    trained = attention.sliding_window_attention(q.to(dtype).requires_grad_(), k.to(dtype), v.to(dtype), 64, None, glob,
                                                 backend="blocked")  # the copying path, as autograd takes it
    assert trained.dtype == dtype and (trained.float() - ref).abs().max() < 0.05


def test_an_inference_plan_refuses_to_train():
    """A CPU plan built for inference reads strided bands (no backward): used under autograd it says so."""
    q, k, v = (torch.randn(1, 2, 600, 8) for _ in range(3))
    p = attention.plan(None, None, 32, (1, 600), "cpu", "blocked", grad=False)
    assert p.strided
    with pytest.raises(ValueError, match="built for inference"):
        attention.sliding_window_attention(q.requires_grad_(), k, v, 32, plan_=p)


def test_auto_choice_by_device_and_length_and_says_so(caplog):
    """CPU: dense while one block's band (BLOCK_QUERIES + 2w keys) covers the input, blocked above (the fastest
    there at every length measured); CUDA: dense for short inputs, FlexAttention for long ones."""
    import logging

    attention._SAID.clear()
    edge = attention.BLOCK_QUERIES + 2 * 64
    with caplog.at_level(logging.INFO, logger="tasks.longdoc.attention"):
        short = attention.plan(None, None, 64, (1, edge), "cpu")
        long = attention.plan(None, None, 64, (1, edge + 1), "cpu", grad=False)
    assert short.backend == "dense" and short.blocked_mask is None and short.dense_mask.shape == (1, 1, edge, edge)
    assert long.backend == "blocked" and long.dense_mask is None and long.block_mask is None
    c = attention.STRIDED_QUERIES  # inference on CPU: strided bands, the global keys merged afterwards
    assert long.strided and long.blocked_mask.shape == (-(-(edge + 1) // c), 1, c, c + 2 * 64)  # O(n (c + 2w))
    training = attention.plan(None, None, 64, (1, edge + 1), "cpu", grad=True)
    nb = -(-(edge + 1) // attention.BLOCK_QUERIES)
    assert not training.strided and training.blocked_mask.shape == (nb, 1, attention.BLOCK_QUERIES, edge)
    assert f"backend dense (asked: auto) from {edge} tokens on cpu" in caplog.text
    assert f"backend blocked (asked: auto) from {edge + 1} tokens on cpu" in caplog.text
    assert attention.choose("auto", 2048, "cuda") == "dense"
    assert attention.choose("auto", 2049, "cuda") == ("flex" if attention.flex_available() else "blocked")
    with pytest.raises(ValueError, match="expected one of auto, dense, flex, blocked"):
        attention.plan(None, None, 64, (1, 30), "cpu", "sparse")
    with pytest.raises(ValueError, match="'flex' cannot train on CPU"):
        attention.plan(None, None, 64, (1, 3000), "cpu", "flex", grad=True)


def test_flex_block_mask_is_block_sparse_not_dense():
    """The band's block mask holds O(n/128) tiles per row: at 16k tokens with w=128, at most 4 tiles per query tile
    (3 band tiles + the [CLS] tile), and no n x n tensor is built."""
    n = 16384
    glob = torch.zeros(1, n, dtype=torch.bool)
    glob[:, 0] = True
    p = attention.plan(None, glob, 128, (1, n), "cpu", "flex", grad=False)
    bm = p.block_mask
    per_row = bm.kv_num_blocks + bm.full_kv_num_blocks
    assert bm.seq_lengths == (n, n)  # 16,384 is a bucket: no padding
    assert int(per_row.max()) <= 4 and bm.kv_indices.numel() <= (n // 128) ** 2


@pytest.mark.parametrize("bias", [True, False])
def test_folded_global_rows_equal_projected_ones(bias):
    """Global rows computed with the key and value projections folded into the queries equal attention over every
    token's projected global keys and values (padding masked)."""
    torch.manual_seed(3)
    b, n, hidden, h = 2, 300, 48, 4
    d = hidden // h
    x = torch.randn(b, n, hidden)
    key, value = torch.nn.Linear(hidden, hidden, bias=bias), torch.nn.Linear(hidden, hidden, bias=bias)
    keep = torch.ones(b, n, dtype=torch.bool)
    keep[1, -50:] = False
    q_rows = torch.randn(b, h, 3, d)

    def heads(t):
        return t.view(b, n, h, d).transpose(1, 2)

    ref = torch.nn.functional.scaled_dot_product_attention(q_rows, heads(key(x)), heads(value(x)),
                                                           attn_mask=keep[:, None, None, :])
    ours = attention.global_rows_folded(q_rows, x, key, value, keep)
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()
    x[1, -50:] = 1e3  # padded tokens' values never reach the rows
    assert torch.allclose(attention.global_rows_folded(q_rows, x, key, value, keep)[1], ref[1], atol=1e-5)


@pytest.mark.parametrize("n", [512, 700])  # a multiple of the block (no query copy) and not
def test_inference_memory_path_equals_the_training_path(tmp_path, n):
    """In inference on CPU, ``blocked`` takes K and V projected straight into its padded buffers, queries without a
    copy and global rows written in place; the logits equal the path autograd takes (padding, two global tokens)."""
    src = make_tiny_model(tmp_path / "m", num_labels=3)
    long = longify.longify(str(src), max_positions=2048, attention_window=64, backend="blocked").eval()
    ids = torch.randint(1000, 2000, (2, n))
    ids[:, 0] = 101
    mask = torch.ones_like(ids)
    mask[1, n - 90:] = 0
    glob = torch.zeros_like(ids, dtype=torch.bool)
    glob[:, 0] = glob[0, 300] = True
    plan = attention.plan(mask.bool(), glob, 32, tuple(ids.shape), "cpu", "blocked")
    x = torch.randn(2, n, long.config.hidden_size)
    with torch.no_grad():
        banded = attention.project_banded(x, long.layers[0].attention.self.key, plan, long.config.num_attention_heads)
        assert banded is not None and banded.shape[1] == 32 + n + 32 + (-n % attention.BLOCK_QUERIES)
        assert (banded[:, :32] == 0).all() and (banded[:, 32 + n:] == 0).all()
        fast = long(ids, mask, glob)
    with torch.enable_grad():
        assert attention.project_banded(x, long.layers[0].attention.self.key, plan, 4) is None
        slow = long(ids, mask, glob)
    assert torch.allclose(fast, slow, atol=1e-5), (fast - slow).abs().max()


@pytest.mark.parametrize("mode", ["sliding", "full"])
def test_last_layer_computes_the_cls_row_alone_exactly(tmp_path, mode, monkeypatch):
    """Classification runs the last layer on the [CLS] row alone (its global row in sliding mode, its query against
    every key in full mode) and every FFN in chunks of tokens: logits and gradients equal those of whole layers with
    an unchunked FFN, with padding; a [CLS] that is not global in every row takes the whole layer."""
    src = make_tiny_model(tmp_path / "m", num_labels=3)
    long = longify.longify(str(src), max_positions=2048, attention_window=64, mode=mode, backend="blocked")
    assert long.cls_row_only
    n = longify.FFN_CHUNK + 188  # two FFN chunks, the second a partial one
    ids = torch.randint(1000, 2000, (2, n))
    ids[:, 0] = 101
    mask = torch.ones_like(ids)
    mask[1, 200:] = 0

    def whole(glob=None):  # the reference: transformers' own BertLayer.forward for every layer, the pooler on row 0
        if glob is None:
            glob = torch.zeros_like(ids, dtype=torch.bool)
            glob[:, 0] = True
        h = long.embeddings(input_ids=ids)
        plan = None if mode == "full" else attention.plan(mask.bool(), glob, 32, tuple(ids.shape), "cpu", "blocked")
        for layer in long.layers:
            h = layer(h, (mask.bool(), plan))
        assert h.shape[1] == n
        return long.classifier(long.pooler(h))

    with torch.no_grad():
        assert long.hidden_states(ids, mask, cls_only=True).shape == (2, 1, long.config.hidden_size)
        assert torch.allclose(long(ids, mask), whole(), atol=1e-5), (long(ids, mask) - whole()).abs().max()
        glob = torch.zeros_like(ids, dtype=torch.bool)
        glob[:, 0] = glob[:, 5] = True  # [CLS] and another global token in every row: the [CLS] row alone
        assert torch.allclose(long(ids, mask, glob), whole(glob), atol=1e-5)
        glob[1, 0] = False  # [CLS] global in one row only: the whole layer, the same logits
        assert torch.allclose(long(ids, mask, glob), whole(glob), atol=1e-5)
    long.train()
    torch.manual_seed(0)  # dropout off for the gradient comparison
    for m in long.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    grads = []
    for checkpointed, fn in ((True, lambda: long(ids, mask)), (False, whole)):
        long.gradient_checkpointing = checkpointed  # the [CLS]-row path recomputed in backward
        long.zero_grad()
        fn().pow(2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in long.named_parameters() if p.grad is not None})
    assert grads[0].keys() <= grads[1].keys()
    for name, g in grads[1].items():
        assert torch.allclose(grads[0].get(name, torch.zeros_like(g)), g, atol=1e-5), name
