"""The sigma measure of Guan et al. (ICML 2019): engine (batched fit), statistics, and the analyses audits call.

    from worker.sigma import Settings, View, fit
    result = fit(adapter, adapter.encode([{"text": a}, {"text": b}]), [View("layer.3"), View("layer.6")], Settings())
"""
from worker.sigma.analysis import (
    corpus_information,
    sentence_entropy,
    word_attributes,
    word_embedding,
    word_sigma,
    word_values,
)
from worker.sigma.engine import (
    INITS,
    NORMALIZATIONS,
    OPTIMIZERS,
    Fit,
    Settings,
    View,
    fit,
    objective,
    scores,
    token_entropy,
)
from worker.sigma.stats import compute_stats, load_stats

__all__ = [
    "INITS", "NORMALIZATIONS", "OPTIMIZERS", "Fit", "Settings", "View", "compute_stats", "corpus_information", "fit",
    "load_stats", "objective", "scores", "sentence_entropy", "token_entropy", "word_attributes", "word_embedding", "word_sigma",
    "word_values",
]
