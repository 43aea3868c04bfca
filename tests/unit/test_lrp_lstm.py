"""`lrp` on the BiLSTM (Arras et al. 2017 LSTM rules): an explicit-loop float64 computation of the rules written
here without torch's autograd, conservation on a bias-free model, the rule-modified forward giving the model's own
logits, padding invariance, and the shipped bilstm-rt bundle through ``explain``."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from worker.methods import explain
from worker.methods.base import Target
from worker.models import load_model
from worker.models.bilstm import BiLSTMClassifier
from worker.models.relevance import Rules, input_relevance


def tiny_bilstm(seed: int = 0, bias: bool = True, layers: int = 1) -> BiLSTMClassifier:
    torch.manual_seed(seed)
    module = BiLSTMClassifier(vocab_size=20, classes=3, embedding_size=4, hidden_size=3, layers=layers)
    module = module.double().eval()
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.normal_(0.0, 0.8)
            if not bias and "bias" in name:
                p.zero_()
    return module


def stab(z: float, eps: float) -> float:
    return z + eps * (1.0 if z >= 0 else -1.0)


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def direction_forward(W_ih, W_hh, b, xs):
    """One LSTM direction over xs (T×K, already in processing order): every step's pre-activations and states."""
    H = W_hh.shape[1]
    h, c, steps = np.zeros(H), np.zeros(H), []
    for x in xs:
        z = W_ih @ x + W_hh @ h + b
        i, f, g, o = sigmoid(z[:H]), sigmoid(z[H:2 * H]), np.tanh(z[2 * H:3 * H]), sigmoid(z[3 * H:])
        c_prev, h_prev = c, h
        c = f * c_prev + i * g
        h = o * np.tanh(c)
        steps.append({"x": x, "h_prev": h_prev, "c_prev": c_prev, "z_g": z[2 * H:3 * H], "i": i, "f": f, "g": g,
                      "c": c, "h": h})
    return steps


def direction_relevance(W_ih, W_hh, steps, R_h_out, eps):
    """Arras et al.'s rules backwards through one direction: R of each step's input x (T×K), loops over units."""
    T, H, K = len(steps), W_hh.shape[1], W_ih.shape[1]
    R_x = np.zeros((T, K))
    R_h_carry, R_c_carry = np.zeros(H), np.zeros(H)
    for t in reversed(range(T)):
        s = steps[t]
        R_c = R_h_out[t] + R_h_carry + R_c_carry  # h = o ⊙ tanh(c): all of R_h to c (identity through tanh)
        R_c_carry, R_g = np.zeros(H), np.zeros(H)
        for j in range(H):
            denominator = stab(s["c"][j], eps)
            R_c_carry[j] = s["f"][j] * s["c_prev"][j] / denominator * R_c[j]
            R_g[j] = s["i"][j] * s["g"][j] / denominator * R_c[j]
        R_h_carry = np.zeros(H)
        for j in range(H):  # z_g = W_gx x + W_gh h_prev + b (ε-rule), g = tanh(z_g) (identity)
            share = R_g[j] / stab(s["z_g"][j], eps)
            for k in range(K):
                R_x[t, k] += s["x"][k] * W_ih[2 * H + j, k] * share
            for m in range(H):
                R_h_carry[m] += s["h_prev"][m] * W_hh[2 * H + j, m] * share
    return R_x


def by_hand(module: BiLSTMClassifier, x: np.ndarray, label: int, eps: float) -> np.ndarray:
    """LRP of one unpadded item through a one-layer BiLSTM classifier, every rule written out."""
    lstm = module.lstm[0]
    params = {n: p.detach().numpy() for n, p in lstm.named_parameters()}
    fwd = direction_forward(params["weight_ih_l0"], params["weight_hh_l0"],
                            params["bias_ih_l0"] + params["bias_hh_l0"], x)
    bwd = direction_forward(params["weight_ih_l0_reverse"], params["weight_hh_l0_reverse"],
                            params["bias_ih_l0_reverse"] + params["bias_hh_l0_reverse"], x[::-1])
    T, H = x.shape[0], lstm.hidden_size
    states = np.concatenate([np.stack([s["h"] for s in fwd]), np.stack([s["h"] for s in bwd])[::-1]], 1)  # T×2H
    win = states.argmax(0)
    pooled = states[win, np.arange(2 * H)]
    Wo, bo = module.output.weight.detach().numpy(), module.output.bias.detach().numpy()
    logits = Wo @ pooled + bo
    start = logits[label]
    R_states = np.zeros((T, 2 * H))
    for j in range(2 * H):  # output: ε-rule; max-pool: the winner takes all
        R_states[win[j], j] = pooled[j] * Wo[label, j] * start / stab(logits[label], eps)
    R_fwd = direction_relevance(params["weight_ih_l0"], params["weight_hh_l0"], fwd, R_states[:, :H], eps)
    R_bwd = direction_relevance(params["weight_ih_l0_reverse"], params["weight_hh_l0_reverse"], bwd,
                                R_states[::-1, H:], eps)
    return R_fwd + R_bwd[::-1]


def ours(module: BiLSTMClassifier, x: torch.Tensor, mask: torch.Tensor, label: list[int], eps: float):
    target = Target(torch.tensor(label), "logit")
    return input_relevance(x, lambda e: module.lrp_logits(e, mask, eps), target, eps)


@pytest.mark.parametrize("eps", [1e-9, 0.05])
def test_equals_the_rules_written_out(eps):
    module = tiny_bilstm()
    x = torch.randn(1, 6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(1, 6, dtype=torch.bool)
    R, start, _ = ours(module, x, mask, [2], eps)
    expected = by_hand(module, x[0].numpy(), 2, eps)
    np.testing.assert_allclose(R[0].numpy(), expected, rtol=1e-9, atol=1e-12)
    assert float(start[0]) != 0.0


def test_the_rule_forward_gives_the_model_logits():
    module = tiny_bilstm(layers=2)
    x = torch.randn(3, 7, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3, [True] * 2 + [False] * 5])
    expected = dict(module.steps(x, mask))["output"]
    with torch.no_grad():
        np.testing.assert_allclose(module.lrp_logits(x, mask, 1e-9).numpy(), expected.detach().numpy(), rtol=1e-10)


def test_conservation_without_biases():
    module = tiny_bilstm(bias=False, layers=2)
    x = torch.randn(2, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    R, start, _ = ours(module, x, mask, [0, 1], 1e-12)
    np.testing.assert_allclose(R.sum((1, 2)).numpy(), start.numpy(), rtol=1e-6)
    assert R[1, 3:].abs().max() == 0.0  # padding gets nothing


def test_padding_does_not_change_the_real_tokens():
    module = tiny_bilstm(layers=2)
    x = torch.randn(1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    alone, _, _ = ours(module, x, torch.ones(1, 4, dtype=torch.bool), [1], 1e-9)
    padded = torch.cat([x, torch.randn(1, 3, 4, dtype=torch.float64)], 1)
    mask = torch.tensor([[True] * 4 + [False] * 3])
    batched, _, _ = ours(module, padded, mask, [1], 1e-9)
    np.testing.assert_allclose(batched[0, :4].numpy(), alone[0].numpy(), rtol=1e-9, atol=1e-14)


def test_bilstm_rt_through_explain():
    adapter = load_model("bilstm-rt", device="cpu").load()
    result = explain(adapter, {"text": "an utterly charming , unpretentious little film ."}, ["lrp"]).result
    lrp = result["methods"]["lrp"]
    assert len(lrp["scores"]) == len(result["tokens"])
    assert lrp["output"] == pytest.approx(lrp["start"])
    assert lrp["absorbed"] == pytest.approx(lrp["output"] - sum(lrp["scores"]), abs=1e-5)
    # biases take a share, but most of S(y) reaches the words
    assert abs(lrp["absorbed"]) < 0.5 * abs(lrp["output"])


def test_lstm_lm_rule_forward_and_explain():
    """lstm-lm-rt: the rule forward gives the model's own next-word logits (padded batch), and lrp explains the
    predicted next word with its relevance accounted for (``absorbed``)."""
    adapter = load_model("lstm-lm-rt", device="cpu").load()
    encoding = adapter.encode([{"text": "the film is a"}, {"text": "one of the best films of the year and a"}])
    x, mask = adapter.embed(encoding), encoding.attention_mask.bool()
    with torch.no_grad():
        expected = dict(adapter.module.steps(x, mask))["output"]
        rules = dict(adapter.module.steps(x, mask, Rules(1e-9)))
    torch.testing.assert_close(rules["output"], expected, rtol=1e-5, atol=1e-5)
    result = explain(adapter, {"text": "one of the best films of the year and a"}, ["lrp"]).result
    lrp = result["methods"]["lrp"]
    assert len(lrp["scores"]) == len(result["tokens"])
    assert lrp["absorbed"] == pytest.approx(lrp["output"] - sum(lrp["scores"]), abs=1e-4)
