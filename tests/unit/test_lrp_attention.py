"""`lrp` on Transformers (AttnLRP, Achtibat et al. 2024): the rules written out in float64 numpy (no autograd) for a
tiny transformer-rt, conservation on a bias-free Transformer, the rule-modified forward giving the model's logits,
padding invariance, and the shipped transformer-rt and minilm-rt through ``explain``."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from worker.methods import explain
from worker.methods.base import Target
from worker.models import load_model, transformer
from worker.models.relevance import input_relevance
from worker.models.transformer import TransformerClassifier

SENTENCE = "an utterly charming , unpretentious little film that never overstays its welcome ."


def tiny_transformer(seed: int = 0, bias: bool = True, layers: int = 2) -> TransformerClassifier:
    torch.manual_seed(seed)
    module = TransformerClassifier(vocab_size=20, classes=3, embedding_size=5, d_model=8, heads=2, layers=layers,
                                   ff_size=12).double().eval()
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p) if name.endswith("weight") else 0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.6)
            if not bias and name.endswith("bias"):
                p.zero_()
    return module


def stab(z: np.ndarray, eps: float) -> np.ndarray:
    return z + eps * np.where(z >= 0, 1.0, -1.0)


def gelu(z: np.ndarray) -> np.ndarray:
    return 0.5 * z * (1.0 + np.vectorize(math.erf)(z / math.sqrt(2.0)))


def np_params(module: torch.nn.Module, prefix: str) -> dict[str, np.ndarray]:
    return {n[len(prefix):]: p.detach().numpy() for n, p in module.named_parameters() if n.startswith(prefix)}


def ln_forward(h, w, b, eps=1e-5):
    centred = h - h.mean(-1, keepdims=True)
    std = np.sqrt((centred ** 2).mean(-1, keepdims=True) + eps)
    return centred / std * w + b, std


def ln_relevance(h, y, std, w, R_y):
    """LayerNorm with the divisor constant: y = w/σ ⊙ (I − 11ᵀ/d) h + b, LRP-0 on that linear map."""
    d = h.shape[-1]
    C = np.eye(d) - np.ones((d, d)) / d
    share = R_y / y * (w / std)
    return h * (share @ C)  # C is symmetric


def linear_relevance(a, W, z, R_z, eps):
    """ε-rule of z = a Wᵀ + b (rows = positions): R_a = a ⊙ ((R_z / stab(z)) W)."""
    return a * ((R_z / stab(z, eps)) @ W)


def by_hand(module: TransformerClassifier, x: np.ndarray, label: int, eps: float,
            softmax_share: list[float] | None = None) -> np.ndarray:
    """AttnLRP of one unpadded item through transformer-rt, every rule written as numpy (module docstring).
    `softmax_share` collects what each layer's softmax rule takes out of the relevance (its implicit bias)."""
    T = x.shape[0]
    P = np_params(module, "")
    d, heads = module.project.out_features, module.layer[0].heads
    dh = d // heads
    proj = x @ P["project.weight"].T + P["project.bias"]
    h = proj + transformer.sinusoid_positions(T, d).double().numpy()
    saved = []
    for k in range(len(module.layer)):
        p = {n: v for n, v in np_params(module, f"layer.{k}.").items()}
        n1, s1 = ln_forward(h, p["norm1.weight"], p["norm1.bias"])
        qkv = n1 @ p["qkv.weight"].T + p["qkv.bias"]
        q, kk, v = (qkv[:, i * d:(i + 1) * d].reshape(T, heads, dh).transpose(1, 0, 2) for i in range(3))
        scores = q @ kk.transpose(0, 2, 1) / math.sqrt(dh)  # heads×T×T
        A = np.exp(scores - scores.max(-1, keepdims=True))
        A /= A.sum(-1, keepdims=True)
        ctx = A @ v  # heads×T×dh
        ctx_flat = ctx.transpose(1, 0, 2).reshape(T, d)
        att = ctx_flat @ p["proj.weight"].T + p["proj.bias"]
        h1 = h + att
        n2, s2 = ln_forward(h1, p["norm2.weight"], p["norm2.bias"])
        f1 = n2 @ p["ff1.weight"].T + p["ff1.bias"]
        g = gelu(f1)
        f2 = g @ p["ff2.weight"].T + p["ff2.bias"]
        h2 = h1 + f2
        saved.append(dict(h=h, n1=n1, s1=s1, qkv=qkv, q=q, k=kk, v=v, scores=scores, A=A, ctx=ctx, ctx_flat=ctx_flat,
                          att=att, h1=h1, n2=n2, s2=s2, f1=f1, f2=f2, g=g, h2=h2, p=p))
        h = h2
    pooled, sp = ln_forward(h[0], P["norm.weight"], P["norm.bias"])
    logits = P["output.weight"] @ pooled + P["output.bias"]
    start = logits[label]
    R_pooled = pooled * P["output.weight"][label] * start / stab(logits[label:label + 1], eps)
    R_h = np.zeros_like(h)
    R_h[0] = ln_relevance(h[0], pooled, sp, P["norm.weight"], R_pooled)
    for s in reversed(saved):
        p = s["p"]
        # h2 = h1 + f2 (LRP-0 on the sum)
        R_h1 = s["h1"] * R_h / s["h2"]
        R_f2 = s["f2"] * R_h / s["h2"]
        R_g = linear_relevance(s["g"], p["ff2.weight"], s["f2"], R_f2, eps)
        R_f1 = R_g  # GELU: identity rule
        R_n2 = linear_relevance(s["n2"], p["ff1.weight"], s["f1"], R_f1, eps)
        R_h1 = R_h1 + ln_relevance(s["h1"], s["n2"], s["s2"], p["norm2.weight"], R_n2)
        # h1 = h + att
        R_hin = s["h"] * R_h1 / s["h1"]
        R_att = s["att"] * R_h1 / s["h1"]
        R_ctx = linear_relevance(s["ctx_flat"], p["proj.weight"], s["att"], R_att, eps)
        R_ctx = R_ctx.reshape(T, heads, dh).transpose(1, 0, 2)  # heads×T×dh
        A, v, ctx = s["A"], s["v"], s["ctx"]
        # ctx_ic = Σ_j A_ij v_jc: each factor gets half (uniform rule)
        share = R_ctx / ctx  # heads×T×dh
        R_A = 0.5 * A * (share @ v.transpose(0, 2, 1))
        R_v = 0.5 * v * (A.transpose(0, 2, 1) @ share)
        # softmax: R_x = x ⊙ (R_s − s Σ R_s)
        R_scores = s["scores"] * (R_A - A * R_A.sum(-1, keepdims=True))
        if softmax_share is not None:
            softmax_share.append(float(R_A.sum() - R_scores.sum()))
        # scores_ij = q_i · k_j / √d: uniform rule
        share = R_scores / s["scores"] / math.sqrt(dh)
        R_q = 0.5 * s["q"] * (share @ s["k"])
        R_k = 0.5 * s["k"] * (share.transpose(0, 2, 1) @ s["q"])
        R_qkv = np.concatenate([r.transpose(1, 0, 2).reshape(T, d) for r in (R_q, R_k, R_v)], -1)
        R_n1 = linear_relevance(s["n1"], p["qkv.weight"], s["qkv"], R_qkv, eps)
        R_h = R_hin + ln_relevance(s["h"], s["n1"], s["s1"], p["norm1.weight"], R_n1)
    h0 = saved[0]["h"]
    R_proj = proj * R_h / h0  # the positions keep their share
    return linear_relevance(x, P["project.weight"], proj, R_proj, eps)


def ours(module, x, mask, labels, eps):
    return input_relevance(x, lambda e: module.lrp_logits(e, mask, eps), Target(torch.tensor(labels), "logit"), eps)


@pytest.mark.parametrize("eps", [1e-9, 0.05])
def test_equals_the_rules_written_out(eps):
    module = tiny_transformer()
    x = torch.randn(1, 6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    R, _, _ = ours(module, x, torch.ones(1, 6, dtype=torch.bool), [1], eps)
    np.testing.assert_allclose(R[0].numpy(), by_hand(module, x[0].numpy(), 1, eps), rtol=1e-7, atol=1e-10)


def test_the_rule_forward_gives_the_model_logits():
    module = tiny_transformer()
    x = torch.randn(2, 7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([[True] * 7, [True] * 3 + [False] * 4])
    expected = dict(module.steps(x, mask))["output"]
    with torch.no_grad():
        np.testing.assert_allclose(module.lrp_logits(x, mask, 1e-9).numpy(), expected.numpy(), rtol=1e-10)


def test_conservation_on_a_bias_free_transformer(monkeypatch):
    """No biases and no positional signal: every rule but the softmax's conserves relevance, so S(y) = Σ R_x plus
    what the softmax rules took (their implicit bias, computed by the written-out rules) — to float64 precision.
    The softmax's share itself is not small on a random model (tens of per cent here), which is why ``absorbed``
    is reported on every result."""
    monkeypatch.setattr(transformer, "sinusoid_positions", lambda length, size, device=None:
                        torch.zeros(length, size, device=device))
    module = tiny_transformer(bias=False)
    x = torch.randn(3, 6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2, [True] * 6])
    R, start, _ = ours(module, x, mask, [0, 1, 2], 1e-12)
    for i, length in enumerate((6, 4, 6)):
        taken: list[float] = []
        by_hand(module, x[i, :length].numpy(), i, 1e-12, taken)
        assert float(R[i].sum()) + sum(taken) == pytest.approx(float(start[i]), rel=1e-6)
    assert R[1, 4:].abs().max() == 0.0


def test_padding_does_not_change_the_real_tokens():
    module = tiny_transformer()
    x = torch.randn(1, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    alone, _, _ = ours(module, x, torch.ones(1, 5, dtype=torch.bool), [2], 1e-9)
    padded = torch.cat([x, torch.randn(1, 2, 5, dtype=torch.float64)], 1)
    batched, _, _ = ours(module, padded, torch.tensor([[True] * 5 + [False] * 2]), [2], 1e-9)
    np.testing.assert_allclose(batched[0, :5].numpy(), alone[0].numpy(), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("name", ["transformer-rt", "minilm-rt"])
def test_zoo_transformers_through_explain(name):
    adapter = load_model(name, device="cpu").load()
    result = explain(adapter, {"text": SENTENCE}, ["lrp", "gradient"]).result
    lrp = result["methods"]["lrp"]
    assert len(lrp["scores"]) == len(result["tokens"])
    assert lrp["output"] == pytest.approx(result["methods"]["gradient"].get("score", lrp["output"]), rel=1e-5)
    assert lrp["absorbed"] == pytest.approx(lrp["output"] - sum(lrp["scores"]), abs=1e-4)
    assert all(math.isfinite(v) for v in lrp["scores"])


def rule_logits(adapter, encoding, ops):
    from worker.models import bert_rules

    x, mask = adapter.embed(encoding), encoding.attention_mask.bool()
    states = bert_rules.encoder_states(adapter.encoder, x, mask, encoding.token_type_ids, ops)
    if adapter.head_kind == "lantern":
        return bert_rules.mean_pool_logits(adapter.head, states, mask, ops)
    return bert_rules.classifier_logits(adapter.model, states, ops)


@pytest.mark.parametrize("which", ["minilm-rt", "tiny-classifier"])
def test_the_bert_rule_forward_gives_the_model_logits(which, tiny_classifier_dir):
    """The BERT forward written with the rule operations is the Hugging Face model's own forward: Lantern's
    mean-pool head (minilm-rt) and BertForSequenceClassification's pooler on a premise/hypothesis pair (token
    types), padded batch included."""
    from worker.models.relevance import PLAIN, Rules

    adapter = load_model(which if which == "minilm-rt" else tiny_classifier_dir, device="cpu").load()
    if which == "minilm-rt":
        items = [{"text": SENTENCE}, {"text": "bad ."}]
    else:
        items = [{"premise": "a man plays a guitar .", "hypothesis": "someone makes music ."},
                 {"premise": "a dog .", "hypothesis": "a cat sleeps on the warm mat ."}]
    encoding = adapter.encode(items)
    with torch.no_grad():
        expected = adapter.forward(adapter.embed(encoding), encoding).logits
        for ops in (PLAIN, Rules(1e-9)):
            torch.testing.assert_close(rule_logits(adapter, encoding, ops), expected, rtol=1e-4, atol=2e-5)
    assert "lrp" in adapter.describe()["methods"]
    lrp = explain(adapter, items[0], ["lrp"]).result["methods"]["lrp"]
    assert lrp["absorbed"] == pytest.approx(lrp["output"] - sum(lrp["scores"]), abs=1e-4)


def test_lrp_is_offered_only_where_rules_exist():
    """A headless encoder has no S(y) to explain; the seq2seq has no rules here."""
    for name in ("all-minilm-l6-v2", "reverse-seq2seq"):
        assert "lrp" not in load_model(name, device="cpu").describe()["methods"], name
    for name in ("cnn-rt", "bilstm-rt", "transformer-rt", "minilm-rt", "lstm-lm-rt", "esim-50"):
        assert "lrp" in load_model(name, device="cpu").describe()["methods"], name
