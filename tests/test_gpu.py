"""The GPU as a first-class device: training, distillation, evaluation, long-document mechanisms, summarization
features and sliding-window attention on CUDA. Skipped without CUDA (CI is CPU); run on a GPU machine with
``pytest -m gpu``."""

import numpy as np
import pytest
import torch

from tasks.compress import registry as compress
from tasks.core import models, train
from tasks.longdoc import attention, longify, mechanisms, summarize
from tasks.measure import evaluate
from tests.conftest import make_tiny_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

TRAIN = {"epochs": 1, "batch_size": 8, "learning_rate": 3e-3, "weight_decay": 0.0, "warmup_ratio": 0.0,
         "max_grad_norm": 1.0, "checkpoint_every": 2, "max_steps": 4, "device": "cuda"}
LONG = {"max_positions": 4096, "attention_window": 64, "max_tokens": 4096, "device": "cuda", "autocast_bf16": False}


@pytest.fixture(scope="module")
def trained_cuda(bbc_slice, tmp_path_factory):
    src = make_tiny_model(tmp_path_factory.mktemp("g") / "m", num_labels=5, layers=4, hidden=32, heads=4)
    mc = {"source": str(src), "max_length": 64, "trust_remote_code": False, "revision": None}
    return train.fine_tune(mc, {**TRAIN, "max_steps": 10}, bbc_slice, 0, str(tmp_path_factory.mktemp("t")))["model_dir"]


def test_training_on_cuda_saves_the_cuda_generator(bbc_slice, tmp_path):
    import pandas as pd

    src = make_tiny_model(tmp_path / "m", num_labels=5)
    model, tok = models.load_hf_model(src), models.load_tokenizer(src)
    df = pd.read_parquet(bbc_slice["paths"]["train"])
    labels = sorted(set(df["label"]))
    train.train_loop(model, tok, df["text"].tolist(), [labels.index(x) for x in df["label"]], TRAIN, 0, 64, tmp_path / "w")
    assert next(model.parameters()).device.type == "cuda"
    state = torch.load(tmp_path / "w" / "checkpoint" / train.STATE_FILE, weights_only=True, map_location="cpu")
    assert len(state["cuda_rng"]) == torch.cuda.device_count()


def test_distillation_on_cuda_moves_the_teacher(trained_cuda, bbc_slice, tmp_path):
    out = compress.run_step(trained_cuda, {"technique": "distill", "keep": 2, "temperature": 2.0, "alpha": 0.5,
                                           "hidden_mse": 1.0, "finetune": {"max_steps": 3}},
                            {"data": bbc_slice, "train": TRAIN, "seed": 0}, str(tmp_path / "d"))
    assert models.load_hf_model(out).config.num_hidden_layers == 2


def test_evaluation_on_cuda_matches_cpu(trained_cuda, bbc_slice):
    import pandas as pd

    texts = pd.read_parquet(bbc_slice["paths"]["test"])["text"].tolist()
    on_cpu = evaluate.predict(trained_cuda, texts, device="cpu")
    on_gpu = evaluate.predict(trained_cuda, texts, device="cuda")
    assert (on_cpu == on_gpu).mean() >= 0.95


@pytest.mark.parametrize("mech", ["truncate-512", "chunked-512", "sliding-window", "full-long", "hf-longformer"])
def test_long_mechanisms_on_cuda_match_cpu(trained_cuda, mech):
    text = "word " * 3000
    gpu_run, _ = mechanisms.classifier_for(mech, trained_cuda, LONG)
    cpu_run, _ = mechanisms.classifier_for(mech, trained_cuda, {**LONG, "device": "cpu"})
    with torch.inference_mode():
        g, c = gpu_run(text), cpu_run(text)
    assert g.device.type == "cuda" and torch.allclose(g.cpu(), c, atol=2e-3), (g, c)
    if mech == "sliding-window":
        assert gpu_run.backends == {"flex": 1}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", ["flex", "dense", "blocked"])
def test_sliding_attention_on_cuda_matches_reference(backend, dtype):
    torch.manual_seed(0)
    n, w = 3000, 128
    q, k, v = (torch.randn(2, 4, n, 32, device="cuda") for _ in range(3))
    keep = torch.ones(2, n, dtype=torch.bool, device="cuda")
    keep[1, -200:] = False
    glob = torch.zeros(2, n, dtype=torch.bool, device="cuda")
    glob[:, 0] = True
    glob[0, 1500] = True
    ref = attention.reference_attention(q.cpu(), k.cpu(), v.cpu(), w, keep.cpu(), glob.cpu())
    with torch.inference_mode():
        ours = attention.sliding_window_attention(*(x.to(dtype) for x in (q, k, v)), w, keep, glob, backend=backend)
    real = keep.cpu()[:, None, :, None].expand_as(ref)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    assert (ours.float().cpu()[real] - ref[real]).abs().max() < tol


def test_fourteen_lengths_one_compile_on_cuda():
    from torch._dynamo.utils import counters

    before = counters["stats"]["unique_graphs"]
    with torch.inference_mode():
        for i in range(14):
            n = 1100 + 613 * i
            q, k, v = (torch.randn(1, 12, n, 32, device="cuda", dtype=torch.bfloat16) for _ in range(3))
            attention.sliding_window_attention(q, k, v, 128, backend="flex")
    assert counters["stats"]["unique_graphs"] - before <= 2  # one dynamic-shape compile (and at most one re-trace)


def test_training_the_long_model_on_cuda_after_evaluation(trained_cuda):
    long = longify.longify(trained_cuda, 4096, 64).cuda()
    ids = torch.randint(1000, 2000, (2, 2100), device="cuda")
    with torch.inference_mode():
        long(ids)
    long.train()
    loss = torch.nn.functional.cross_entropy(long(ids), torch.tensor([0, 1], device="cuda"))
    loss.backward()
    assert long.last_backend == "flex"


def test_summarization_features_on_cuda_match_cpu(trained_cuda):
    sentences = [f"Sentence number {i} talks about topic {i % 5} at some length." for i in range(60)]
    tok = models.load_tokenizer(trained_cuda)
    cpu_model = longify.longify(trained_cuda, 4096, 64)
    gpu_model = longify.longify(trained_cuda, 4096, 64).cuda()
    a = summarize.sentence_features(cpu_model, tok, sentences, 4096)
    b = summarize.sentence_features(gpu_model, tok, sentences, 4096)
    assert a.shape == b.shape and np.abs(a - b).max() < 5e-2  # bf16 autocast on the GPU
