"""Guan et al. 2019 reproduced with Lantern's sigma on the trained zoo models.

Fig. 2 (reverse-seq2seq, timestamp mode on ``decoder``). Decoder step t (0-based; row t+1 of the figure) reads
decoder input t and its state d_t predicts answer word t, i.e. text word n−1−t of an n-word text. Criterion: among the
n encoder text words (``<sos>``/``<eos>`` and the decoder's own inputs excluded), the word with the smallest σ at
step t is text word n−1−t (the mirrored position) at ≥ 80 % of the steps t < n, and at most one position away at
≥ 95 %, over the first N = 30 sequences of 3–7 words of the held-out test generator (worker.zoo.reverse:
random_texts(1000, 2); longer ones only cost time). Chance for the first rate is 1/n (≈ 0.2 here).
Measured: 0.872 / 1.000 over 148 steps (λ 0.1, bound 10 × embedding std, mean_square normalisation: the bundle has
no σ_S statistics).

Fig. 3 (bilstm-rt: 4 stacked BiLSTM layers on frozen GloVe 50-d, RT sentiment). A layer's information about a sentence
is Σ_i −log(σ_i/bound) over its tokens (its MI up to the factor K, Eq. 1–2); s = all positions of the layer.
Criterion, over the first N = 12 Rotten Tomatoes test sentences of 6–18 words: the information of ``lstm.4`` is below
that of ``lstm.1`` for ≥ 80 % of the sentences, and its mean over the sentences decreases from each layer to the
next. Measured (λ 0.1, bound 10 × embedding std, mean_square: no σ_S statistics): 11 / 12 = 0.92 of the sentences;
means 55.5, 52.7, 52.3, 48.4 for lstm.1–4; strictly decreasing at every layer for 5 / 12 (not asserted).
"""
from __future__ import annotations

import pytest
import torch

from worker.methods import explain
from worker.models import load_model
from worker.sigma import Settings, View, fit

FIG2_SEQUENCES = 30
FIG2_LONGEST = 7


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread, as the workers run (two threads on a loaded 2-core machine are several times slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def seq2seq():
    return load_model("reverse-seq2seq", device="cpu").load()


def mirrored_rates(adapter, texts: list[str], seed: int = 0) -> tuple[float, float, int]:
    """(share of steps whose most-kept encoder word is the mirrored one, share within one position, steps)."""
    bound = 10 * adapter.embedding_std()
    settings = Settings(lam=0.1, bound=bound, normalization="mean_square", eval_samples=16)
    groups: dict[int, list[str]] = {}
    for text in texts:  # one batch per length: every decoder step of a batch is then real in every sequence
        groups.setdefault(len(text.split()), []).append(text)
    exact = near = steps = 0
    for n, group in sorted(groups.items()):
        enc = adapter.encode([{"text": t} for t in group])
        result = fit(adapter, enc, [View("decoder", t) for t in range(n)], settings, seed=seed)
        for b in range(len(group)):
            words = [i for i, (seg, special) in enumerate(zip(enc.segments[b], enc.special[b], strict=True))
                     if seg == 0 and not special]
            assert len(words) == n
            for t in range(n):
                sigma = result.sigma[t][b, words]
                assert torch.isfinite(sigma).all()
                best = int(sigma.argmin())
                exact += best == n - 1 - t
                near += abs(best - (n - 1 - t)) <= 1
                steps += 1
    return exact / steps, near / steps, steps


@pytest.mark.slow
def test_fig2_reverse_diagonal(seq2seq):
    from worker.zoo.reverse import random_texts

    texts = [t for t in random_texts(1000, 2) if len(t.split()) <= FIG2_LONGEST][:FIG2_SEQUENCES]  # held-out test set
    exact, near, steps = mirrored_rates(seq2seq, texts)
    print(f"Fig. 2: mirrored {exact:.3f}, within one {near:.3f} over {steps} steps of {len(texts)} sequences")
    assert exact >= 0.8 and near >= 0.95, (exact, near, steps)


@pytest.mark.slow
def test_fig2_timestamp_figure_through_the_method(seq2seq):
    out = explain(seq2seq, {"text": "a b c d b a"}, ["sigma"], layers=["decoder"],
                  params={"sigma": {"timestamps": ["decoder"], "eval_samples": 16, "max_steps": 60}}, seed=0)
    part = out.result["methods"]["sigma"]
    steps = part["timestamps"]["decoder"]["steps"]
    assert len(steps) == 7  # 6 words + <eos>
    assert out.tensors["sigma"]["sigma.decoder@steps"].shape == (7, len(out.result["tokens"]))
    assert out.figures["sigma-timestamps.png"].startswith(b"\x89PNG")
    assert all(0 < s <= part["bound"] for step in steps for s in step["sigma"])


FIG3_SENTENCES = 12
BILSTM_LAYERS = ["lstm.1", "lstm.2", "lstm.3", "lstm.4"]


@pytest.mark.slow
def test_fig3_information_decreases_with_depth():
    from worker.data.rt import rt_split

    model = load_model("bilstm-rt", device="cpu").load()
    texts = [t for t, _ in rt_split("test") if 6 <= len(t.split()) <= 18][:FIG3_SENTENCES]
    bound = 10 * model.embedding_std()
    result = fit(model, model.encode([{"text": t} for t in texts]), [View(n) for n in BILSTM_LAYERS],
                 Settings(lam=0.1, bound=bound, normalization="mean_square", eval_samples=32), seed=0)
    assert result.normalization == "mean_square"
    info = torch.stack([torch.nansum(-torch.log(s / bound), -1) for s in result.sigma])  # layers × sentences
    assert info.shape == (4, len(texts)) and torch.isfinite(info).all()
    share = float((info[-1] < info[0]).float().mean())
    means = info.mean(1)
    monotone = float((info[1:] <= info[:-1]).all(0).float().mean())
    print(f"Fig. 3: lstm.4 < lstm.1 for {share:.2f} of {len(texts)} sentences; means {means.tolist()}; "
          f"monotone {monotone:.2f}")
    assert share >= 0.8, info
    assert (means[1:] < means[:-1]).all(), means
