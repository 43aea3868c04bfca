"""sigma engine: known answers on hand-built models (linear Φ, a mirror "decoder"), the entropy formulas against
torch.distributions, the Jacobian-norm estimator against the exact Jacobian, the analyses, and the method's result."""
from __future__ import annotations

import math

import pytest
import torch

from worker.models.base import Adapter, Encoding, Trace
from worker.sigma import (
    Settings,
    View,
    corpus_information,
    fit,
    scores,
    sentence_entropy,
    token_entropy,
    word_attributes,
    word_sigma,
    word_values,
)
from worker.sigma.engine import element_weights, jacobian_norms, states


class TensorAdapter(Adapter):
    """A hand-built model on fixed embeddings x (1×T×K): layers computed by `layers_fn(x) -> {name: tensor}`."""

    def __init__(self, x: torch.Tensor, layers_fn, names: list[str]):
        self.name, self.revision, self.labels = "tensor", "0" * 64, None
        self.layer_names = ["embeddings", *names]
        self._x, self._fn = x, layers_fn

    def encode(self, inputs) -> Encoding:
        t = self._x.shape[1]
        return Encoding(input_ids=torch.arange(t)[None], attention_mask=torch.ones(1, t, dtype=torch.long),
                        tokens=[[f"w{i}" for i in range(t)]], special=[[False] * t], words=[[[i] for i in range(t)]],
                        offsets=[[(0, 0)] * t], segments=[[0] * t], inputs=[{"text": "x"}])

    def embed(self, encoding: Encoding) -> torch.Tensor:
        return self._x.expand(encoding.input_ids.shape[0], -1, -1).clone()

    def forward(self, x, encoding, capture=(), upto=None) -> Trace:
        layers = {"embeddings": x, **self._fn(x)}
        return Trace(logits=None, layers={name: layers[name] for name in capture})

    def embedding_std(self) -> float:
        return 0.05


def linear_model(t: int = 6, k: int = 4, h: int = 5, ignored=(1, 4), seed: int = 0):
    """s_j = W_j x_j per token, W_j = 0 for the ignored tokens."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(t, h, k, generator=g)
    for i in ignored:
        w[i] = 0.0
    x = torch.randn(1, t, k, generator=g) * 0.05
    return TensorAdapter(x, lambda x: {"linear": torch.einsum("thk,btk->bth", w, x)}, ["linear"]), w


def test_linear_phi_known_answer():
    """Ignored words go to the bound; weighted words follow the closed form of the linear objective.

    For Φ linear, E‖Φ(x+ε)−s‖²_W = Σ_i σ_i² c_i exactly, c_i = Σ_e w_e ‖W_e,i‖² (w_e = 1/(σ_S² N)), so the minimiser
    of Σ_i σ_i² c_i − λ·mean_i log σ_i is σ_i = sqrt(λ / (2 T c_i)) (below the bound), and σ_i → bound when c_i = 0."""
    adapter, w = linear_model()
    enc = adapter.encode({"text": "x"})
    std = torch.full((5,), 0.3)
    settings = Settings(lam=0.1, bound=1.0, normalization="std", init="random", samples=8, lr=0.1, max_steps=800,
                        eval_samples=64)
    result = fit(adapter, enc, [View("linear")], settings, stats={"linear": std}, seed=1)
    sigma = result.sigma[0][0]
    assert result.normalization == "std"
    n_elements = 6 * 5
    c = (w ** 2).sum((1, 2)) / (0.3 ** 2 * n_elements)
    expected = torch.sqrt(0.1 / (2 * 6 * c))
    def exact_objective(s: torch.Tensor) -> float:  # the objective in closed form (no sampling)
        return float((s ** 2 * c).sum() - 0.1 * torch.log(s / 1.0).mean())

    optimum = torch.where(c > 0, expected, torch.ones_like(expected))
    assert (sigma[[1, 4]] > 0.9).all(), sigma  # ignored words: at the bound
    kept = [0, 2, 3, 5]
    assert (expected[kept] < 0.1).all() and (sigma[kept] < 0.1).all()  # weighted words: small
    assert torch.allclose(sigma[kept], expected[kept], rtol=0.3), (sigma, expected)
    assert exact_objective(sigma) <= exact_objective(optimum) * 1.01  # the 1 % criterion
    assert float(result.objective[0, 0]) == pytest.approx(exact_objective(sigma), rel=0.03)  # the sampled estimate
    # the linear warm start is exact for a linear Φ (up to the Hutchinson estimate); max_steps 0: the start itself
    warm = fit(adapter, enc, [View("linear")], Settings(**{**settings.__dict__, "init": "linear", "max_steps": 0,
                                                          "probes": 256}),
               stats={"linear": std}, seed=2)
    assert torch.allclose(warm.sigma[0][0][kept], expected[kept], rtol=0.15)


def test_entropy_formulas_hold_numerically():
    sigma = torch.tensor([0.01, 0.2, 1.5])
    k = 7
    h = token_entropy(sigma, k)
    for i, s in enumerate(sigma):
        reference = torch.distributions.MultivariateNormal(torch.zeros(k), covariance_matrix=s ** 2 * torch.eye(k))
        assert float(h[i]) == pytest.approx(float(reference.entropy()), rel=1e-5)
        assert float(h[i]) == pytest.approx(k / 2 * math.log(2 * math.pi * math.e) + k * math.log(float(s)), rel=1e-6)
    padded = torch.tensor([[0.01, 0.2, 1.5, float("nan")]])
    assert float(sentence_entropy(padded, k)[0]) == pytest.approx(float(h.sum()), rel=1e-6)
    assert scores(torch.tensor([0.5, 1.0]), 1.0).tolist() == pytest.approx([math.log(2), 0.0])
    groups = [[0], [1, 2]]
    assert word_values(h.tolist(), groups) == pytest.approx([float(h[0]), float(h[1] + h[2])], rel=1e-6)
    # a word's σ is the one whose entropy, times its token count, is the word's entropy
    ws = word_sigma(sigma.tolist(), groups)
    assert 2 * float(token_entropy(torch.tensor(ws[1]), k)) == pytest.approx(float(h[1] + h[2]), rel=1e-5)


def test_corpus_information_and_word_attributes_known_answers():
    k, bound = 3, 2.0
    sigmas = [torch.tensor([1.0, 2.0, float("nan")]), torch.tensor([0.5, 0.5, 0.5])]
    info = corpus_information(sigmas, k, bound)
    mi = [k * math.log(2.0), 3 * k * math.log(4.0)]
    assert info["mutual_information"] == pytest.approx(sum(mi) / 2)
    assert info["mutual_information_per_token"] == pytest.approx(sum(mi) / 5)
    assert info["entropy"] - info["conditional_entropy"] == pytest.approx(info["mutual_information"])

    x_i = torch.zeros(2)
    sigma_i = torch.tensor([1.0, 2.0])  # two layers
    concept = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # mean squared distance 1
    rand = torch.tensor([[3.0, 0.0], [0.0, 3.0]])  # mean squared distance 9
    out = word_attributes(x_i, sigma_i, {"c": concept}, rand)
    # log N(x'; x_i, σ² I) up to constants = -‖x'-x_i‖²/(2σ²)
    assert out["A_i"].tolist() == pytest.approx([9 / 2, 9 / 8])
    assert out["A_c"]["c"].tolist() == pytest.approx([(9 - 1) / 2, (9 - 1) / 8])
    assert out["r"]["c"].tolist() == pytest.approx([1 / 2, 1 / 8])


def test_jacobian_norms_match_the_exact_jacobian():
    g = torch.Generator().manual_seed(0)
    w1, w2 = torch.randn(4, 3, generator=g), torch.randn(4, 4, generator=g)
    adapter = TensorAdapter(torch.randn(1, 3, 3, generator=g),
                            lambda x: {"mix": torch.tanh(torch.tanh(x @ w1.T).cumsum(1) @ w2)}, ["mix"])
    enc = adapter.encode({"text": "x"})
    x = adapter.embed(enc)
    raw = states(adapter, x, enc, [View("mix")])
    weights, _ = element_weights(enc, [View("mix")], raw, "mean_square", None)
    c = jacobian_norms(adapter, x, enc, [View("mix")], weights, probes=4000, generator=torch.Generator().manual_seed(1))
    jac = torch.autograd.functional.jacobian(lambda z: adapter.forward(z, enc, ["mix"]).layers["mix"].reshape(-1), x)
    jac = jac.reshape(-1, 3, 3)  # E × T × K
    exact = ((jac ** 2) * weights[0][0][:, None, None]).sum((0, 2))
    assert torch.allclose(c[0, 0], exact, rtol=0.08)


def mirror_model(t: int = 5, k: int = 4, h: int = 6, seed: int = 0):
    """A "decoder" whose state at step τ reads only input token t−1−τ (the reverse task's ideal attention), plus a
    weak read of every token: the timestamp map must show the reverse diagonal."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(h, k, generator=g)
    x = torch.randn(1, t, k, generator=g) * 0.05

    def layers(x):
        mirrored = torch.tanh(x.flip(1) @ w.T * 5)  # B×T×H: step τ <- token t-1-τ
        return {"decoder": mirrored + 0.01 * torch.tanh(x @ w.T).mean(1, keepdim=True)}

    return TensorAdapter(x, layers, ["decoder"])


def test_timestamp_mode_finds_the_mirrored_token():
    adapter = mirror_model()
    enc = adapter.encode({"text": "x"})
    views = [View("decoder", step) for step in range(5)]
    result = fit(adapter, enc, views, Settings(bound=0.5, normalization="mean_square", max_steps=300,
                                               eval_samples=32), seed=0)
    for step, sigma in enumerate(result.sigma):
        assert int(sigma[0].argmin()) == 4 - step
        assert float(sigma[0].max()) > 0.8 * 0.5  # the other tokens are (nearly) discarded


@pytest.mark.slow
def test_batch_of_sentences_matches_one_at_a_time(minilm):
    """Masks: fitting two sentences of different lengths together equals fitting each alone (same noise law)."""
    texts = ["a gripping film", "the plot is thin but the acting is superb"]
    settings = Settings(bound=0.556, normalization="mean_square", max_steps=120, eval_samples=64)
    together = fit(minilm, minilm.encode([{"text": t} for t in texts]), [View("layer.2")], settings, seed=0)
    assert torch.isnan(together.sigma[0][0, 5:]).all() and not torch.isnan(together.sigma[0][1]).any()
    for i, text in enumerate(texts):
        alone = fit(minilm, minilm.encode({"text": text}), [View("layer.2")], settings, seed=0)
        n = len(minilm.encode({"text": text}).tokens[0])
        a, b = alone.sigma[0][0, :n], together.sigma[0][i, :n]
        assert torch.corrcoef(torch.stack([a.log(), b.log()]))[0, 1] > 0.9
        assert float(together.objective[0, i]) == pytest.approx(float(alone.objective[0, 0]), rel=0.03)
