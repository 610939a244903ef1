"""Summarization: data (BBC News Summary folder layout, BBC headlines offline, KEPs, JSONL), baselines (lead, TextRank,
centroid), greedy-ROUGE oracle labels and the extractive oracle (the ceiling), and an extractive summarizer: the long
encoder fine-tuned to score sentences (one global marker token per sentence), plus ROUGE-1/2/L.

    oracle_labels(sentences, reference, max_sentences) -> [0/1 per sentence]
    lead_k(sentences, k) / textrank(sentences, k) -> chosen sentence indices
    rouge(prediction, reference) -> {"rouge1": f, "rouge2": f, "rougeL": f}
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np
from prefect import task

from tasks.core.config import LongConfig, SummarizeConfig, SummarizeData
from tasks.core.data import DataError, iter_jsonl, packaged_bbc_dir, read_text_file
from tasks.core.orchestrate import CACHE

log = logging.getLogger(__name__)
# the warm head's standardisation: a dimension's sd counts as at least this share of the median sd
SCALE_FLOOR = 0.01

_SENT = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[A-Z0-9\"'(\[])")
_GLUED = re.compile(r"(?<=[a-z0-9%)\"'][.!?])(?=[A-Z\"'])")


def split_sentences(text: str) -> list[str]:
    out = []
    for para in re.split(r"\n\s*\n|\n", text):
        para = para.strip()
        if para:
            out.extend(s.strip() for s in _SENT.split(para) if s.strip())
    return out


def split_glued(summary: str) -> list[str]:
    """BBC News Summary references glue sentences without a space ("said.The"): split them back."""
    return [s.strip() for s in _GLUED.split(summary.strip()) if s.strip()]


# ------------------------------------------------------------------------------------------------- data


def load_bbc_summary(root: str | Path, limit: int | None = None) -> list[dict]:
    """``root/articles/<class>/NNN.txt`` + ``root/summaries/<class>/NNN.txt`` -> [{"id", "text", "summary"}]."""
    root = Path(root)
    arts, sums = root / "articles", root / "summaries"
    if not arts.is_dir() or not sums.is_dir():
        raise DataError(str(root), "summarize.data.path", "expected articles/ and summaries/ folders (BBC News Summary layout)")
    docs = []
    for f in sorted(arts.glob("*/*.txt")):
        ref = sums / f.parent.name / f.name
        if not ref.is_file():
            continue
        lines = read_text_file(f).strip().split("\n", 1)
        body = lines[1] if len(lines) > 1 else lines[0]
        docs.append({"id": f"{f.parent.name}/{f.stem}", "text": body.strip(),
                     "summary": " ".join(split_glued(read_text_file(ref)))})
    if not docs:
        raise DataError(str(root), "summarize.data.path", "no article/summary pairs found")
    return docs[:limit] if limit else docs


def load_bbc_headlines(limit: int | None = None) -> list[dict]:
    """Offline default: the packaged BBC corpus, headline (first line) as the reference 'summary'."""
    docs = []
    for f in sorted(packaged_bbc_dir().glob("*/*.txt")):
        lines = read_text_file(f).strip().split("\n", 1)
        if len(lines) == 2 and lines[1].strip():
            docs.append({"id": f"{f.parent.name}/{f.stem}", "text": lines[1].strip(), "summary": lines[0].strip()})
    return docs[:limit] if limit else docs


def load_jsonl(path: str | Path, text_field: str = "text", summary_field: str = "summary") -> list[dict]:
    docs = []
    for i, obj in iter_jsonl(path):
        for f in (text_field, summary_field):
            if f not in obj:
                raise DataError(str(path), f"line {i}", f"missing field '{f}'")
        docs.append({"id": str(i), "text": str(obj[text_field]), "summary": str(obj[summary_field])})
    return docs


# ------------------------------------------------------------------------------------------------ scoring


def rouge(prediction: str, reference: str) -> dict[str, float]:
    scorer = _scorer()
    s = scorer.score(reference, prediction)
    return {k: float(v.fmeasure) for k, v in s.items()}


_SCORER = None


def _scorer():
    global _SCORER
    if _SCORER is None:
        from rouge_score import rouge_scorer

        _SCORER = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    return _SCORER


_WORD = re.compile(r"\w+")  # Unicode words: the oracle works for any script, not only ASCII


def _grams(text: str) -> tuple[Counter, Counter]:
    toks = _WORD.findall(text.lower())
    return Counter(toks), Counter(zip(toks, toks[1:]))


def _f1(cand: Counter, ref: Counter) -> float:
    overlap = sum((cand & ref).values())
    if not overlap:
        return 0.0
    p, r = overlap / sum(cand.values()), overlap / sum(ref.values())
    return 2 * p * r / (p + r)


def oracle_labels(sentences: list[str], reference: str, max_sentences: int = 5) -> list[int]:
    """Greedy oracle: add the sentence that most improves ROUGE-1 + ROUGE-2 F1 (n-gram overlap on lower-cased word
    tokens, fast enough for thousands of documents) until no sentence improves it."""
    ref1, ref2 = _grams(reference)
    grams = [_grams(s) for s in sentences]
    chosen: list[int] = []
    cur1, cur2 = Counter(), Counter()
    best = 0.0
    for _ in range(min(max_sentences, len(sentences))):
        cands = [(_f1(cur1 + g1, ref1) + _f1(cur2 + g2, ref2), i) for i, (g1, g2) in enumerate(grams) if i not in chosen]
        if not cands:
            break
        score, idx = max(cands, key=lambda x: (x[0], -x[1]))
        if score <= best:
            break
        best = score
        chosen.append(idx)
        cur1, cur2 = cur1 + grams[idx][0], cur2 + grams[idx][1]
    return [1 if i in chosen else 0 for i in range(len(sentences))]


def lead_k(sentences: list[str], k: int) -> list[int]:
    return list(range(min(k, len(sentences))))


def textrank_scores(sentences: list[str], damping: float = 0.85) -> np.ndarray:
    """PageRank (networkx) over the TF-IDF cosine-similarity graph of the sentences."""
    import networkx as nx
    from sklearn.feature_extraction.text import TfidfVectorizer

    n = len(sentences)
    try:
        x = TfidfVectorizer(stop_words="english").fit_transform(sentences)
    except ValueError:  # only stop words
        return np.linspace(1.0, 0.0, n)
    sim = (x @ x.T).toarray()
    np.fill_diagonal(sim, 0.0)
    rank = nx.pagerank(nx.from_numpy_array(sim), alpha=damping, weight="weight", max_iter=200, tol=1e-8)
    return np.array([rank[i] for i in range(n)])


def textrank(sentences: list[str], k: int) -> list[int]:
    """TextRank: the top-k sentences by PageRank centrality, in document order."""
    if len(sentences) <= k:
        return list(range(len(sentences)))
    return sorted(np.argsort(-textrank_scores(sentences), kind="stable")[:k].tolist())


def summary_of(sentences: list[str], idx: list[int]) -> str:
    return " ".join(sentences[i] for i in sorted(idx))


# ------------------------------------------------------------------------------ extractive (long encoder)


def centroid_scores(sentences: list[str]) -> np.ndarray:
    """Centroid baseline: each sentence's TF-IDF cosine similarity to the whole document's."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    try:
        x = TfidfVectorizer(stop_words="english").fit_transform(sentences)
    except ValueError:  # only stop words
        return np.linspace(1.0, 0.0, len(sentences))
    centre = np.asarray(x.mean(axis=0)).ravel()
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel()) * (np.linalg.norm(centre) + 1e-9)
    return np.asarray(x @ centre).ravel() / np.maximum(norms, 1e-9)


def marked(tokenizer, sentences: list[str], max_tokens: int) -> tuple[list[int], list[int]]:
    """The document as one sequence with a [CLS] marker before every sentence that fits in ``max_tokens``
    -> (token ids, marker positions)."""
    ids, marks = [], []
    for sent in sentences:
        toks = tokenizer(sent, add_special_tokens=False)["input_ids"]
        if len(ids) + len(toks) + 2 > max_tokens:
            break
        marks.append(len(ids))
        ids += [tokenizer.cls_token_id] + toks
    ids.append(tokenizer.sep_token_id)
    return ids, marks


def pool_sentences(h, marks: list[int], end: int):
    """(n, hidden) token states -> (len(marks), hidden): the mean over each sentence's span, its marker included
    (``marks[i]`` to ``marks[i+1]``, the last one to ``end``). The mean, not the marker's own state: in a
    mean-pooling sentence encoder such as all-MiniLM the [CLS] state barely depends on the text (measured: cosine
    0.99999 between markers of different sentences)."""
    import torch

    pos = torch.arange(end, device=h.device)
    seg = torch.bucketize(pos, torch.tensor(marks, device=h.device), right=True) - 1
    sums = h.new_zeros(len(marks), h.shape[-1]).index_add(0, seg, h[:end])
    counts = torch.bincount(seg, minlength=len(marks)).clamp(min=1).to(h.dtype)
    return sums / counts[:, None]


def sentence_in_document(states):
    """(s, H) sentence states -> (s, 2H + 1): each sentence's state, its product with the document's mean state and
    their cosine — what the scorer's head reads, so it can learn how central a sentence is from the encoder's own
    states (the centroid baseline's idea, learned: no baseline's score is an input)."""
    import torch

    doc = states.mean(0, keepdim=True).expand_as(states)
    cos = torch.nn.functional.cosine_similarity(states.float(), doc.float(), dim=-1).to(states.dtype)
    return torch.cat([states, states * doc, cos[:, None]], dim=-1)


def sentence_features(long_model, tokenizer, sentences: list[str], max_tokens: int) -> np.ndarray:
    """Each sentence's mean final hidden state (``pool_sentences``; global attention on the markers), L2-normalised;
    zeros for sentences past ``max_tokens``."""
    import torch

    ids, marks = marked(tokenizer, sentences, max_tokens)
    device = next(long_model.parameters()).device
    x = torch.tensor([ids], device=device)
    glob = torch.zeros_like(x, dtype=torch.bool)
    glob[0, marks] = True
    amp = device.type == "cuda" and torch.cuda.is_bf16_supported()
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        h = long_model.hidden_states(x, global_mask=glob)
    feats = pool_sentences(h[0].float(), marks, len(ids) - 1).cpu().numpy()
    feats = feats / (np.linalg.norm(feats, axis=1, keepdims=True) + 1e-6)
    return np.vstack([feats, np.zeros((len(sentences) - len(marks), feats.shape[1]), dtype=feats.dtype)])


class SentenceScorer:
    """The long encoder fine-tuned as the extractive scorer: one [CLS] marker per sentence, each with global attention
    (``global_markers``; false: the document's first marker alone, the others local), a linear score on each
    sentence's mean final state in the context of the document's (:func:`sentence_in_document`), trained end to end on
    greedy-ROUGE oracle labels (``scorer.loss``, :func:`ranking_loss`: by default a pairwise ranking loss within each
    document; or weighted binary cross-entropy, few sentences being positive). Only the encoder reads
    the text — no TextRank, centroid or position feature: those are the baselines it is compared with.

    Training starts from a warm head (logistic regression on the frozen encoder's marker states: scikit-learn), then
    fine-tunes encoder and head together; after every epoch (and for the warm start, epoch 0) the validation
    documents are scored and the best state is kept, so fine-tuning is used only where validation says it helps."""

    def __init__(self, long_model, device, global_markers: bool = True):
        import torch

        self.long, self.device, self.global_markers = long_model.to(device), device, global_markers
        self.head = torch.nn.Linear(2 * long_model.config.hidden_size + 1, 1).to(device)
        self.amp = device.type == "cuda" and torch.cuda.is_bf16_supported()

    def _states(self, ids: list[int], marks: list[int]):
        import torch

        x = torch.tensor([ids], device=self.device)
        glob = torch.zeros_like(x, dtype=torch.bool)
        glob[0, marks if self.global_markers else [0]] = True
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
            return sentence_in_document(pool_sentences(self.long.hidden_states(x, global_mask=glob)[0], marks,
                                                       len(ids) - 1))

    def _logits(self, ids: list[int], marks: list[int]):
        import torch

        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
            return self.head(self._states(ids, marks)).squeeze(-1).float()

    def warm_start(self, examples) -> None:
        """The head from a logistic regression on the frozen marker states (standardisation folded into it)."""
        import torch
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        self.long.eval()
        with torch.inference_mode():
            x = np.vstack([self._states(ids, marks).float().cpu().numpy() for ids, marks, _ in examples])
        y = np.concatenate([y for _, _, y in examples])
        if len(set(y.tolist())) < 2:  # one class only: nothing to fit, the head starts at zero
            return
        scaler = StandardScaler().fit(x)
        # near-constant dimensions (mean-pooled MiniLM states have some with sd ~1e-33; scikit-learn floors only exact
        # zeros) would fold into weights of ~1e32: gradients overflow and every fine-tuning step is clipped to nothing
        scaler.scale_ = np.maximum(scaler.scale_, SCALE_FLOOR * np.median(scaler.scale_))
        lr = LogisticRegression(max_iter=3000, class_weight="balanced", C=0.1).fit(scaler.transform(x), y)
        w = lr.coef_[0] / scaler.scale_
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor(w[None, :], dtype=torch.float32))
            self.head.bias.fill_(float(lr.intercept_[0] - (w * scaler.mean_).sum()))

    def train(self, examples: list[tuple[list[int], list[int], list[int]]], cfg, seed: int, validate=None) -> dict:
        """``examples``: (ids, marks, labels per marker). One document per optimizer step. ``validate()`` -> a score
        (higher is better) after the warm start and after every epoch; the best state is restored."""
        import time

        import torch
        from tqdm.auto import tqdm
        from transformers import get_linear_schedule_with_warmup

        torch.manual_seed(seed)
        t0 = time.perf_counter()
        self.warm_start(examples)
        positives = sum(sum(y) for _, _, y in examples)
        total_sentences = sum(len(y) for _, _, y in examples)
        pos_weight = torch.tensor((total_sentences - positives) / max(1, positives), device=self.device)
        params = [*self.long.parameters(), *self.head.parameters()]
        opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.01)
        steps = max(1, int(round(cfg.epochs * len(examples))))
        sched = get_linear_schedule_with_warmup(opt, int(cfg.warmup_ratio * steps), steps)
        rng = np.random.default_rng(seed)
        order = np.concatenate([rng.permutation(len(examples)) for _ in range(int(np.ceil(cfg.epochs)) + 1)])
        scores, best = [], None

        def checkpoint(epoch: float) -> None:
            nonlocal best
            if validate is None:
                return
            self.long.eval()
            score = float(validate())
            scores.append((epoch, score))
            if best is None or score > best[0]:
                best = (score, epoch, {k: v.detach().clone() for k, v in self.long.state_dict().items()},
                        {k: v.detach().clone() for k, v in self.head.state_dict().items()})

        checkpoint(0.0)
        losses, nonfinite = [], 0
        self.long.train()
        for step in tqdm(range(steps), desc="train extractive scorer", unit="doc", mininterval=5.0):
            ids, marks, y = examples[order[step]]
            loss = ranking_loss(self._logits(ids, marks), torch.tensor(y, dtype=torch.float32, device=self.device),
                                cfg.loss, pos_weight)
            loss.backward()
            if torch.isfinite(torch.nn.utils.clip_grad_norm_(params, 1.0)):
                opt.step()
            else:  # clipping an infinite norm zeroes the update: skip the step, and say so
                nonfinite += 1
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            if (step + 1) % len(examples) == 0 or step + 1 == steps:
                checkpoint(round((step + 1) / len(examples), 3))
                self.long.train()
        self.long.eval()
        chosen = {}
        if best is not None:
            self.long.load_state_dict(best[2])
            self.head.load_state_dict(best[3])
            chosen = {"best_epoch": best[1], "best_val_score": best[0], "val_scores": scores}
        if nonfinite:
            log.warning("extractive scorer: %d of %d steps had a non-finite gradient and were skipped", nonfinite, steps)
        return {"steps": steps, "seconds": round(time.perf_counter() - t0, 2), "nonfinite_steps": nonfinite,
                "final_loss": float(np.mean(losses[-20:])) if losses else None,
                "oracle_positive_rate": positives / max(1, total_sentences), **chosen}

    def scores(self, tokenizer, sentences: list[str], max_tokens: int) -> np.ndarray:
        import torch

        ids, marks = marked(tokenizer, sentences, max_tokens)
        with torch.inference_mode():
            out = self._logits(ids, marks).cpu().numpy()
        return np.concatenate([out, np.full(len(sentences) - len(marks), -np.inf)])  # unread sentences rank last


def ranking_loss(logits, y, kind: str, pos_weight=None):
    """A document's sentence logits against its 0/1 oracle labels. ``bce``: weighted binary cross-entropy;
    ``pairwise``: RankNet, log(1 + exp(-(s_pos - s_neg))) over every (labelled, unlabelled) pair; ``listwise``: ListNet,
    the cross-entropy of softmax(logits) against the labels spread evenly. The two ranking losses see only the order
    within the document (a document with no unlabelled sentence teaches them nothing: its loss is 0)."""
    import torch
    import torch.nn.functional as F

    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight)
    pos, neg = logits[y > 0.5], logits[y <= 0.5]
    if not len(pos) or not len(neg):
        return logits.sum() * 0.0  # keeps the graph: backward() works, nothing moves
    if kind == "pairwise":
        return F.softplus(neg[None, :] - pos[:, None]).mean()
    if kind == "listwise":
        return -(y / y.sum() * torch.log_softmax(logits, dim=0)).sum()
    raise ValueError(f"summarize.scorer.loss: unknown loss '{kind}'; use bce, pairwise or listwise")


def within_budget(sentences: list[str], ranked: list[int], words: int) -> list[int]:
    """Sentences in rank order while they fit in ``words`` (a sentence that does not fit is skipped, a shorter later
    one may still fit); the top sentence always. -> indices in document order."""
    chosen, used = [], 0
    for i in ranked:
        n = len(sentences[i].split())
        if not chosen or used + n <= words:
            chosen.append(i)
            used += n
    return sorted(chosen)


# ----------------------------------------------------------------------------------------- the experiment


def load_docs(cfg: SummarizeConfig) -> tuple[list[dict], str]:
    d = cfg.data
    if d.source == "bbc-summary":
        return load_bbc_summary(d.path), f"bbc-summary:{d.path}"
    if d.source == "jsonl":
        return load_jsonl(d.path, d.text_field, d.summary_field), f"jsonl:{d.path}"
    if d.source.startswith("hf:"):
        return load_hf(d.source[3:], d), d.source
    if d.source == "keps":  # packaged; reference = the KEP's own Summary section (13 documents without one left out)
        from tasks.core.data import read_keps

        keps = read_keps()
        return ([{"id": r.id, "text": r.text, "summary": r.summary} for r in keps.itertuples() if str(r.summary).strip()],
                "keps (packaged; reference = the KEP's Summary section)")
    return load_bbc_headlines(), "bbc-headlines (packaged corpus; headline as reference)"


def load_hf(name: str, d: SummarizeData) -> list[dict]:
    """Hub summarization data (e.g. ccdv/arxiv-summarization: article/abstract, ccdv/govreport-summarization)."""
    import datasets

    try:
        ds = datasets.load_dataset(name, d.hf_config, split=d.hf_split)
    except Exception as exc:
        raise DataError("summarize.data.source", f"hf:{name}", f"cannot load dataset ({type(exc).__name__}: {str(exc)[:200]}); "
                        "the offline default is summarize.data.source=bbc-headlines") from None
    tf, sf = d.text_field, d.summary_field
    missing = [f for f in (tf, sf) if f not in ds.column_names]
    if missing:
        raise DataError(f"hf:{name}", "summarize.data.text_field" if tf in missing else "summarize.data.summary_field",
                        f"column '{missing[0]}' not found; columns are: {', '.join(ds.column_names)}")
    return [{"id": str(i), "text": str(r[tf]), "summary": str(r[sf])} for i, r in enumerate(ds)]


def _score(docs: list[dict], picks: list[list[int]], seconds: float) -> dict:
    rs = [rouge(summary_of(d["sentences"], p), d["summary"]) for d, p in zip(docs, picks)]
    return {"eval/rouge1": float(np.mean([r["rouge1"] for r in rs])), "eval/rouge2": float(np.mean([r["rouge2"] for r in rs])),
            "eval/rougeL": float(np.mean([r["rougeL"] for r in rs])),
            "eval/summary_words": float(np.mean([len(summary_of(d["sentences"], p).split()) for d, p in zip(docs, picks)])),
            "eval/seconds_per_doc": seconds / max(1, len(docs)), "eval/num_docs": len(docs)}


def _r2(docs: list[dict], pick) -> float:
    return float(np.mean([rouge(summary_of(d["sentences"], pick(d)), d["summary"])["rouge2"] for d in docs]))


def run(cfg: SummarizeConfig | dict, long_cfg: LongConfig | dict, model_dir: str, seed: int, work: str) -> dict:
    """Lead, TextRank, centroid, the fine-tuned long-encoder extractive summarizer and the greedy oracle (the
    extractive ceiling) on the same test documents, every method at the same length budget (``budget: words``) or
    at its own top-k (``budget: k``), chosen on validation; plus an abstractive model when configured."""
    cfg, long_cfg = SummarizeConfig.model_validate(cfg), LongConfig.model_validate(long_cfg)
    import time

    from tasks.core import models
    from tasks.longdoc import longify

    docs, where = load_docs(cfg)
    if cfg.data.max_docs and cfg.data.max_docs < len(docs):  # a seeded sample across all classes
        rng = np.random.default_rng(seed)
        docs = [docs[i] for i in sorted(rng.permutation(len(docs))[: cfg.data.max_docs])]
    if len(docs) < 8:
        raise DataError(where, "summarize.data", f"{len(docs)} documents; need at least 8 (train/validation/test)")
    for d in docs:
        d["sentences"] = split_sentences(d["text"]) or [d["text"]]
    order = np.random.default_rng(seed).permutation(len(docs))
    n = len(docs)
    train_docs = [docs[i] for i in order[: n // 2]]
    val = [docs[i] for i in order[n // 2 : 3 * n // 4]]
    test = [docs[i] for i in order[3 * n // 4 :]]

    # the scorer under test: the long encoder fine-tuned on the training documents' oracle labels
    tok = models.load_tokenizer(model_dir)
    tok.model_max_length = 10**9
    device = models.pick_device(long_cfg.device)
    long = longify.longify(model_dir, long_cfg.max_positions, long_cfg.attention_window, "sliding",
                           long_cfg.attention_backend)
    max_tokens = min(cfg.max_tokens, long_cfg.max_positions)
    scorer = SentenceScorer(long, device, cfg.scorer.global_markers)
    examples = []
    for d in train_docs[: cfg.scorer.max_train_docs]:
        ids, marks = marked(tok, d["sentences"], max_tokens)
        y = oracle_labels(d["sentences"], d["summary"], cfg.oracle_max_sentences)[: len(marks)]
        if marks and any(y):
            examples.append((ids, marks, y))
    if not examples:
        raise DataError(where, "summarize.data", "no training document has a sentence that overlaps its reference "
                        "summary (greedy-ROUGE oracle labels are all 0): check summarize.data.summary_field, or use "
                        "more documents (summarize.data.max_docs, summarize.scorer.max_train_docs)")
    k_val = max(1, int(round(np.mean([sum(y) for _, _, y in examples]))))

    def validate() -> float:  # validation ROUGE-2 of the top oracle-count sentences
        return _r2(val, lambda d: sorted(np.argsort(-scorer.scores(tok, d["sentences"], max_tokens),
                                                    kind="stable")[:k_val].tolist()))

    trained = scorer.train(examples, cfg.scorer, seed, validate)

    rankers = {  # each method: document -> sentence indices, best first
        "lead-k": lambda d: list(range(len(d["sentences"]))),
        "textrank": lambda d: np.argsort(-textrank_scores(d["sentences"]), kind="stable").tolist(),
        "centroid": lambda d: np.argsort(-centroid_scores(d["sentences"]), kind="stable").tolist(),
        "extractive-long": lambda d: np.argsort(-scorer.scores(tok, d["sentences"], max_tokens), kind="stable").tolist(),
        "oracle": lambda d: _oracle_order(d["sentences"], d["summary"]),
    }
    ranked: dict[tuple[str, int], list[int]] = {}

    def rank(method: str, d: dict) -> list[int]:
        key = (method, id(d))
        if key not in ranked:
            ranked[key] = rankers[method](d)
        return ranked[key]

    methods: dict[str, dict] = {}
    if cfg.budget == "words":
        # one budget for every method: k sentences of the training references' mean sentence length, k chosen on
        # validation by the mean ROUGE-2 of all methods but the oracle (no method picks its own length)
        per_sentence = float(np.mean([len(s.split()) for d in train_docs for s in split_sentences(d["summary"])
                                      or [d["summary"]]]))
        budgets = sorted({max(1, int(round(k * per_sentence))) for k in cfg.k_values})
        compared = [m for m in rankers if m != "oracle"]

        def val_r2(m: str, w: int) -> float:
            return _r2(val, lambda d: within_budget(d["sentences"], rank(m, d), w))

        by_budget = {w: {m: val_r2(m, w) for m in compared} for w in budgets}
        words = max(budgets, key=lambda w: np.mean(list(by_budget[w].values())))
        for method in rankers:
            t = time.perf_counter()
            picks = [within_budget(d["sentences"], rank(method, d), words) for d in test]
            val_score = by_budget[words][method] if method in compared else val_r2(method, words)  # oracle: once
            methods[method] = {"budget_words": words, "metrics": {**_score(test, picks, time.perf_counter() - t),
                                                                  "val/rouge2": val_score}}
    else:
        for method in rankers:
            by_k = {k: _r2(val, lambda d, k=k: sorted(rank(method, d)[:k])) for k in cfg.k_values}
            k = max(cfg.k_values, key=by_k.get)
            t = time.perf_counter()
            picks = [sorted(rank(method, d)[:k]) for d in test]
            methods[method] = {"k": k, "metrics": {**_score(test, picks, time.perf_counter() - t), "val/rouge2": by_k[k]}}
    methods["extractive-long"].update(train_docs=len(examples), **{f"train_{k}": v for k, v in trained.items()})

    if cfg.abstractive_model:
        methods["abstractive"] = abstractive(cfg.abstractive_model, test, cfg.generation)
    return {"data": where, "num_test": len(test), "methods": methods}


def _oracle_order(sentences: list[str], reference: str) -> list[int]:
    """The greedy oracle's picks in the order it made them, then the rest in document order (the ceiling ranker)."""
    picked: list[int] = []
    labels = oracle_labels(sentences, reference, len(sentences))
    ref1, ref2 = _grams(reference)
    grams = [_grams(s) for s in sentences]
    cur1, cur2 = Counter(), Counter()
    pool = [i for i, y in enumerate(labels) if y]
    while pool:  # replay the greedy choice order among the oracle's sentences
        best = max(pool, key=lambda i: (_f1(cur1 + grams[i][0], ref1) + _f1(cur2 + grams[i][1], ref2), -i))
        picked.append(best)
        pool.remove(best)
        cur1, cur2 = cur1 + grams[best][0], cur2 + grams[best][1]
    return picked + [i for i in range(len(sentences)) if i not in picked]


def abstractive(model_id: str, test: list[dict], generation: dict) -> dict:
    """Seq2seq generation (LED for long inputs, e.g. allenai/led-base-16384) with settings from the config."""
    import time

    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    path = __import__("tasks.core.models", fromlist=["resolve_source"]).resolve_source(model_id)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSeq2SeqLM.from_pretrained(path, use_safetensors=True).eval()
    max_in = getattr(model.config, "max_encoder_position_embeddings", None) or getattr(model.config, "max_position_embeddings", 1024)
    outs, t = [], time.perf_counter()
    with torch.inference_mode():
        for d in test:
            enc = tok(d["text"], truncation=True, max_length=max_in, return_tensors="pt")
            enc.pop("token_type_ids", None)  # seq2seq models take none (a BERT-style tokenizer adds them)
            extra = {}
            if model.config.model_type == "led":
                g = torch.zeros_like(enc["input_ids"])
                g[:, 0] = 1
                extra["global_attention_mask"] = g
            ids = model.generate(**enc, **extra, **generation)
            outs.append(tok.decode(ids[0], skip_special_tokens=True))
    seconds = time.perf_counter() - t
    rs = [rouge(o, d["summary"]) for o, d in zip(outs, test)]
    return {"model": model_id, "metrics": {
        "eval/rouge1": float(np.mean([r["rouge1"] for r in rs])), "eval/rouge2": float(np.mean([r["rouge2"] for r in rs])),
        "eval/rougeL": float(np.mean([r["rougeL"] for r in rs])), "eval/summary_words": float(np.mean([len(o.split()) for o in outs])),
        "eval/seconds_per_doc": seconds / max(1, len(test)), "eval/num_docs": len(test)}}


summarize_task = task(run, name="summarize", cache_policy=CACHE, persist_result=True)
