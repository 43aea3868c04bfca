"""`lrp` (ε-rule) on the Kim CNN: an explicit-loop hand computation, Captum's ``LRP`` on an equivalent module chain
(1e-5 relative), conservation on a bias-free CNN, the score conventions, padding, the shipped cnn-rt bundle through
``explain``, and which adapters have rules (the LSTM and Transformer rules: test_lrp_lstm.py, test_lrp_attention.py,
test_lrp_esim.py)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from worker.methods import check_methods, explain, explain_batch, registry
from worker.methods.base import Target
from worker.methods.lrp import applies
from worker.models import load_model
from worker.models.base import InputError
from worker.models.cnn import KimCNN, relevance

RTOL = 1e-5
SENTENCE = "an utterly charming , unpretentious little film that never overstays its welcome ."


@pytest.fixture(scope="module")
def cnn():
    return load_model("cnn-rt", device="cpu").load()


def tiny_cnn(seed: int = 0, bias: bool = True, dtype=torch.float64) -> KimCNN:
    torch.manual_seed(seed)
    module = KimCNN(vocab_size=20, classes=3, embedding_size=4, channels=3, widths=(1, 3, 5)).to(dtype).eval()
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.7)
        if not bias:
            for conv in module.conv.values():
                conv.bias.zero_()
            module.output.bias.zero_()
    return module


def close(ours: torch.Tensor, theirs: torch.Tensor, rtol: float = RTOL) -> float:
    """Relative agreement, scaled by the largest magnitude; returns the measured error."""
    error = float((ours.detach() - theirs.detach()).abs().max() / theirs.detach().abs().max())
    assert error <= rtol, error
    return error


def stab(z: float, eps: float) -> float:
    return z + eps * (1.0 if z >= 0 else -1.0)


def by_hand(module: KimCNN, x: np.ndarray, label: int, eps: float) -> np.ndarray:
    """ε-LRP of one unpadded item (x T×K) written out with explicit loops over units and weights."""
    T, K = x.shape
    pooled, where, pre = [], [], []
    for conv in module.conv.values():
        W, b, w = conv.weight.detach().double().numpy(), conv.bias.detach().double().numpy(), conv.kernel_size[0]
        C = W.shape[0]
        z = np.zeros((C, T))
        for c in range(C):
            for t in range(T):
                z[c, t] = b[c]
                for j in range(w):
                    s = t + j - w // 2
                    if 0 <= s < T:
                        for k in range(K):
                            z[c, t] += W[c, k, j] * x[s, k]
        a = np.maximum(z, 0.0)
        for c in range(C):
            win = int(np.argmax(a[c]))
            pooled.append(a[c, win])
            where.append((conv, c, win, z[c, win]))
        pre.append(z)
    Wo, bo = module.output.weight.detach().double().numpy(), module.output.bias.detach().double().numpy()
    logits = Wo @ np.array(pooled) + bo
    start = logits[label]
    R = np.zeros((T, K))
    for i, (conv, c, win, z_win) in enumerate(where):
        r_p = pooled[i] * Wo[label, i] * start / stab(logits[label], eps)  # linear
        r_win = pooled[i] * r_p / stab(pooled[i], eps)  # max-pool: winner takes all
        W, w = conv.weight.detach().double().numpy(), conv.kernel_size[0]  # ReLU passes, then the conv
        for j in range(w):
            s = win + j - w // 2
            if 0 <= s < T:
                for k in range(K):
                    R[s, k] += x[s, k] * W[c, k, j] * r_win / stab(z_win, eps)
    return R


@pytest.mark.parametrize("eps", [1e-9, 0.5])
def test_equals_hand_computation(eps):
    module = tiny_cnn()
    torch.manual_seed(1)
    x = torch.randn(2, 6, 4, dtype=torch.float64)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2], dtype=torch.bool)
    x[1, 4:] = 0.0
    labels = torch.tensor([0, 2])
    rel, start, logits = relevance(module, x, mask, Target(labels), eps)
    for i, length in enumerate((6, 4)):
        expected = by_hand(module, x[i, :length].numpy(), int(labels[i]), eps)
        close(rel[i, :length], torch.from_numpy(expected), 1e-10)
        assert torch.all(rel[i, length:] == 0)
        assert float(start[i]) == pytest.approx(float(logits[i, labels[i]]))


def captum_chain(module: KimCNN, length: int, eps: float) -> nn.Module:
    """The same CNN as a chain of nn.Modules that Captum's LRP can hook: Conv1d (EpsilonRule set by hand) → nn.ReLU →
    MaxPool1d over the whole (unpadded) sentence → Linear; every module used once."""
    from captum.attr._utils.lrp_rules import EpsilonRule

    class Chain(nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = nn.ModuleList(copy.deepcopy(c) for c in module.conv.values())
            self.relus = nn.ModuleList(nn.ReLU() for _ in self.convs)
            self.pools = nn.ModuleList(nn.MaxPool1d(length) for _ in self.convs)
            self.output = copy.deepcopy(module.output)
            for layer in [*self.convs, *self.pools, self.output]:
                layer.rule = EpsilonRule(epsilon=eps)

        def forward(self, x):
            cols = x.transpose(1, 2)
            return self.output(torch.cat([pool(relu(conv(cols))).squeeze(-1)
                                          for conv, relu, pool in zip(self.convs, self.relus, self.pools,
                                                                      strict=True)], -1))

    return Chain().eval()


@pytest.mark.parametrize("eps", [1e-9, 1e-2])
def test_equals_captum_on_cnn_rt(cnn, eps):
    from captum.attr import LRP

    enc = cnn.encode({"text": SENTENCE})
    x = cnn.embed(enc)
    with torch.no_grad():
        logits = captum_chain(cnn.module, x.shape[1], eps)(x)
    torch.testing.assert_close(logits, cnn.forward(x, enc).logits)
    for label in (0, 1):  # Captum removes the rules after each call: a fresh chain each time
        theirs = LRP(captum_chain(cnn.module, x.shape[1], eps)).attribute(x.clone().requires_grad_(True), target=label)
        ours, start, _ = relevance(cnn.module, x, enc.attention_mask.bool(), Target(torch.tensor([label])), eps)
        close(ours, theirs)
        close(ours.sum(-1), theirs.sum(-1))
        assert float(start[0]) == pytest.approx(float(logits[0, label]))


def test_equals_captum_on_a_random_batch():
    from captum.attr import LRP

    module = tiny_cnn(seed=3, dtype=torch.float32)
    torch.manual_seed(4)
    x = torch.randn(3, 7, 4)
    labels = torch.tensor([2, 0, 1])
    theirs = LRP(captum_chain(module, 7, 1e-9)).attribute(x.clone().requires_grad_(True), target=labels)
    ours, _, _ = relevance(module, x, torch.ones(3, 7, dtype=torch.bool), Target(labels))
    for i in range(3):
        close(ours[i], theirs[i])


def test_conservation_without_biases():
    module = tiny_cnn(seed=5, bias=False)
    torch.manual_seed(6)
    x = torch.randn(4, 9, 4, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 1])
    rel, start, logits = relevance(module, x, torch.ones(4, 9, dtype=torch.bool), Target(labels), 1e-9)
    torch.testing.assert_close(rel.sum((1, 2)), start, rtol=1e-7, atol=0)
    torch.testing.assert_close(start, logits.gather(1, labels.view(-1, 1)).squeeze(1))
    with_bias = tiny_cnn(seed=5, bias=True)  # biases keep their share: no longer conserved
    rel, start, _ = relevance(with_bias, x, torch.ones(4, 9, dtype=torch.bool), Target(labels), 1e-9)
    assert float((rel.sum((1, 2)) - start).abs().max()) > 1e-3


@pytest.mark.parametrize("score", ["probability", "log_probability"])
def test_other_scores_scale_the_logit_relevance(score):
    module = tiny_cnn(seed=7, bias=False)
    torch.manual_seed(8)
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    mask, labels = torch.ones(2, 5, dtype=torch.bool), torch.tensor([1, 2])
    logit_rel, z, _ = relevance(module, x, mask, Target(labels, "logit"))
    rel, s, logits = relevance(module, x, mask, Target(labels, score))
    torch.testing.assert_close(s, Target(labels, score)(logits))
    torch.testing.assert_close(rel, logit_rel * (s / z).view(-1, 1, 1))
    torch.testing.assert_close(rel.sum((1, 2)), s, rtol=1e-7, atol=0)


def test_explain_on_cnn_rt(cnn):
    ex = explain(cnn, {"text": SENTENCE}, ["lrp"])
    part = ex.result["methods"]["lrp"]
    T = len(ex.result["tokens"])
    assert len(part["scores"]) == T and len(part["word_scores"]) == len(ex.result["words"])
    assert part["params"] == {"rule": "epsilon", "epsilon": 1e-9}
    assert set(part["faithfulness"]) >= {"comprehensiveness", "sufficiency", "random", "lift"}
    assert part["total"] == pytest.approx(sum(part["scores"]), rel=1e-5)
    assert part["absorbed"] == pytest.approx(part["start"] - part["total"])
    enc = cnn.encode({"text": SENTENCE})
    logits = cnn.forward(cnn.embed(enc), enc).logits[0]
    assert part["start"] == pytest.approx(float(logits.max()), rel=1e-6)  # S(y): the predicted class's logit
    tensors = ex.tensors["lrp"]
    assert tensors["relevance"].shape == (T, cnn.module.embeddings.embedding_dim)
    torch.testing.assert_close(tensors["scores"], tensors["relevance"].sum(-1))
    assert ex.figures["lrp.png"][:4] == b"\x89PNG"
    again = explain(cnn, {"text": SENTENCE}, ["lrp"], figures=False)
    assert again.result["methods"]["lrp"]["scores"] == part["scores"]  # deterministic


def test_batch_equals_alone(cnn):
    texts = [SENTENCE, "dull .", "a film that works , mostly"]
    batch = explain_batch(cnn, [{"text": t} for t in texts], ["lrp"], figures=False)
    for text, ex in zip(texts, batch, strict=True):
        alone = explain(cnn, {"text": text}, ["lrp"], figures=False)
        close(ex.tensors["lrp"]["relevance"], alone.tensors["lrp"]["relevance"])


def test_applies_where_rules_exist(cnn, minilm_rt):
    """The CNN, BiLSTM and Transformers have rules (tests/unit/test_lrp_lstm.py, test_lrp_attention.py); a model
    without a head or without rules is refused."""
    table = registry()
    assert applies(cnn) and "lrp" in table
    assert check_methods(cnn, table, ["lrp"], "logit", {"lrp": {"epsilon": 0.01}})["lrp"]["epsilon"] == 0.01
    assert all(applies(m) for m in (minilm_rt, load_model("bilstm-rt", device="cpu"),
                                    load_model("transformer-rt", device="cpu")))
    for other in (load_model("all-minilm-l6-v2", device="cpu"), load_model("reverse-seq2seq", device="cpu")):
        assert not applies(other)
        with pytest.raises(InputError, match="does not apply"):
            check_methods(other, table, ["lrp"], "logit", {})
    for bad in ({"epsilon": 0.0}, {"epsilon": -1.0}, {"rule": "z_plus"}, {"alpha": 1}):
        with pytest.raises(InputError, match="params.lrp"):
            check_methods(cnn, table, ["lrp"], "logit", {"lrp": bad})
