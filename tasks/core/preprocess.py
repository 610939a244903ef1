"""Text normalization (applied at training *and* inference: it is recorded in the model folder) and EDA-style
augmentation (random insertion / swap / deletion; training only), for the preprocessing ablation.

    normalize(texts, {"lowercase": true, "strip_punctuation": true, "remove_stopwords": true})
    augment(texts, labels, {"copies": 1, "insert": 0.1, "swap": 0.1, "delete": 0.1}, seed)
"""

from __future__ import annotations

import random
import re
import string

from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from tasks.core.config import AugmentConfig, PreprocessConfig

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")
_SPACE = re.compile(r"\s+")


def normalize_one(text: str, cfg: PreprocessConfig | dict | None) -> str:
    if not cfg:
        return text
    cfg = PreprocessConfig.model_validate(cfg)  # a manifest's recorded dict, or the step's typed config
    if cfg.lowercase:
        text = text.lower()
    if cfg.strip_punctuation:
        text = _PUNCT.sub(" ", text)
    if cfg.remove_stopwords:
        text = " ".join(w for w in text.split() if w.lower() not in ENGLISH_STOP_WORDS)
    return _SPACE.sub(" ", text).strip()


def normalize(texts: list[str], cfg: PreprocessConfig | dict | None) -> list[str]:
    if not cfg:
        return list(texts)
    cfg = PreprocessConfig.model_validate(cfg)
    return [normalize_one(t, cfg) for t in texts]


def _augment_one(words: list[str], cfg: AugmentConfig, rng: random.Random) -> list[str]:
    words = list(words)
    n = len(words)
    if n < 2:
        return words
    for _ in range(int(cfg.swap * n)):
        i, j = rng.randrange(n), rng.randrange(n)
        words[i], words[j] = words[j], words[i]
    for _ in range(int(cfg.insert * n)):  # insert a copy of a word from the same text (no thesaurus offline)
        words.insert(rng.randrange(len(words) + 1), rng.choice(words))
    p = cfg.delete
    kept = [w for w in words if rng.random() >= p]
    return kept or [rng.choice(words)]


def augment(texts: list[str], labels: list, cfg: AugmentConfig | dict | None, seed: int = 0) -> tuple[list[str], list]:
    """Originals plus ``copies`` perturbed copies of every text."""
    cfg = AugmentConfig.model_validate(cfg) if cfg else None
    if cfg is None or not cfg.copies:
        return list(texts), list(labels)
    rng = random.Random(seed)
    out_t, out_l = list(texts), list(labels)
    for _ in range(cfg.copies):
        for t, l in zip(texts, labels):
            out_t.append(" ".join(_augment_one(t.split(), cfg, rng)))
            out_l.append(l)
    return out_t, out_l
