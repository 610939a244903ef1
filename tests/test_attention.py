"""Our blocked sliding-window attention against a dense masked reference of the same pattern, and long-ification."""

import pytest
import torch

from tasks.longdoc import attention, longify
from tests.conftest import make_tiny_model


@pytest.mark.parametrize("backend", ["blocked", "flex"])
@pytest.mark.parametrize("n, w, n_global, pad", [(37, 4, 0, 0), (64, 8, 1, 0), (50, 8, 3, 7), (16, 16, 1, 0), (9, 4, 2, 2),
                                                 (700, 32, 2, 30)])
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
