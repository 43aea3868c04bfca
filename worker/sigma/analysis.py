"""What the audits compute from fitted σ: word-level values, corpus-level information (Eq. 1–2), and word
attributes (Eq. 8–9). All functions take plain tensors, so any adapter's results can be fed in.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from worker.models.base import Adapter
from worker.sigma.engine import LOG_2PI_E


def word_values(token_values: Sequence[float], words: Sequence[Sequence[int]]) -> list[float]:
    """A word's value = the sum over its tokens (entropies and −log(σ/bound) are additive under Guan's
    independence assumption, supplement §1)."""
    return [float(sum(token_values[t] for t in group)) for group in words]


def word_sigma(sigma: Sequence[float], words: Sequence[Sequence[int]]) -> list[float]:
    """A word's σ = the geometric mean of its tokens' σ (the σ whose entropy, times the token count, is the word's)."""
    out = []
    for group in words:
        logs = torch.log(torch.tensor([sigma[t] for t in group], dtype=torch.float64))
        out.append(float(logs.mean().exp()))
    return out


def sentence_entropy(sigma: torch.Tensor, k: int) -> torch.Tensor:
    """H(X|s) = Σ_i H_i = Σ_i (K/2·log(2πe) + K·log σ_i) over the real tokens (NaN = padding). sigma: …×T."""
    real = torch.isfinite(sigma)
    h = 0.5 * k * LOG_2PI_E + k * torch.log(torch.where(real, sigma, torch.ones_like(sigma)))
    return (h * real).sum(-1)


def corpus_information(sigmas: Sequence[torch.Tensor], k: int, bound: float) -> dict[str, float]:
    """Corpus level (Eq. 1–2) for one layer, from the fitted σ of a sample of sentences (each a T-vector).

    H(X|S) = ∫ p(s) H(X|s) ds is estimated by the sample mean of the sentence entropies. H(X) is a constant of the
    corpus; Lantern takes it as the entropy with every word at the bound (σ_i = bound: all information discarded),
    so MI(X; S) = H(X) − H(X|S) = mean over sentences of K · Σ_i −log(σ_i / bound) ≥ 0 (in nats). Also per token.
    """
    conditional = [float(sentence_entropy(s, k)) for s in sigmas]
    maximum = [float(sentence_entropy(torch.full_like(s, bound).masked_fill(~torch.isfinite(s), float("nan")), k))
               for s in sigmas]
    tokens = [int(torch.isfinite(s).sum()) for s in sigmas]
    n = len(sigmas)
    mi = [hm - hc for hm, hc in zip(maximum, conditional, strict=True)]
    return {"sentences": n, "conditional_entropy": sum(conditional) / n, "entropy": sum(maximum) / n,
            "mutual_information": sum(mi) / n, "mutual_information_per_token": sum(mi) / max(sum(tokens), 1)}


def word_embedding(adapter: Adapter, word: str) -> torch.Tensor:
    """The input embedding of a word (K): the mean of its non-special tokens' embeddings."""
    enc = adapter.encode({"text": word}).to(adapter.device)
    x = adapter.embed(enc)[0]
    keep = [t for t, special in enumerate(enc.special[0]) if not special]
    return x[keep].mean(0)


def word_attributes(x_i: torch.Tensor, sigma_i: torch.Tensor, concepts: Mapping[str, torch.Tensor],
                    random_words: torch.Tensor) -> dict[str, torch.Tensor]:
    """Eq. 8–9 with p(x'|s) = N(x'; x_i, σ_i² I_K), the distribution fitted for word i in each layer.

    x_i: K (the word's embedding); sigma_i: L (its σ per layer); concepts: name -> N_c×K embeddings of the concept's
    words; random_words: N×K embeddings of random words (the baseline E_{x'∈X_i}). log p(x') = const − ‖x'−x_i‖²/(2σ²),
    so with d(X) = mean over X of ‖x'−x_i‖²:
    A_i = d(random)/(2σ²),  A_c = (d(random) − d(c))/(2σ²),  r_{i,c} = A_i − A_c = d(c)/(2σ²).
    Returns {"A_i": L, "A_c": {c: L}, "r": {c: L}}.
    """
    def log_p(words: torch.Tensor) -> torch.Tensor:  # L: mean log-likelihood up to the constant shared by all
        d = ((words - x_i[None]) ** 2).sum(-1).mean()
        return -d / (2 * sigma_i ** 2)

    baseline = log_p(random_words)
    a_i = 0.0 - baseline  # log p(x_i|s) = const + 0
    a_c = {name: log_p(emb) - baseline for name, emb in concepts.items()}
    return {"A_i": a_i, "A_c": a_c, "r": {name: a_i - a for name, a in a_c.items()}}
