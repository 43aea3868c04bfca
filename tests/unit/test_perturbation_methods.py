"""occlusion against Captum (FeatureAblation / Occlusion), LIME against scikit-learn's ridge on the same samples,
and the perturbation mask's optimisation."""
from __future__ import annotations

import marshmallow as ma
import pytest
import torch

from worker.methods import registry
from worker.methods.base import Target
from worker.methods.perturb import baseline_embedding, candidates

SENTENCE = "an utterly charming , unpretentious little film that never overstays its welcome ."


def run(adapter, method, params=None, text=SENTENCE, seed=0):
    entry = registry()[method]
    enc = adapter.encode({"text": text})
    with torch.no_grad():
        label = adapter.forward(adapter.embed(enc), enc).logits.argmax(-1)
    return entry.run(adapter, enc, Target(label), entry.params().load(params or {}), seed=seed), enc, int(label)


def inner_forward(adapter, enc, x):
    """f(interior embeddings) -> logits, the specials' embeddings held fixed: Captum then occludes only the
    non-special tokens, as Lantern does."""
    cand = candidates(enc)

    def f(inner):
        full = x.expand(inner.shape[0], -1, -1).clone()
        full[:, cand] = inner
        return adapter.forward(full, enc.repeat(inner.shape[0])).logits
    return f, cand


@pytest.mark.parametrize("baseline", ["mask", "zero"])
def test_leave_one_out_equals_captum_feature_ablation(minilm_rt, baseline):
    from captum.attr import FeatureAblation

    out, enc, label = run(minilm_rt, "occlusion", {"baseline": baseline, "batch_size": 5})
    x = minilm_rt.embed(enc)
    f, cand = inner_forward(minilm_rt, enc, x)
    base = baseline_embedding(minilm_rt, enc, baseline)[:, cand]
    feature_mask = torch.arange(len(cand)).view(1, -1, 1).expand(1, -1, x.shape[-1])
    theirs = FeatureAblation(f).attribute(x[:, cand], baselines=base, target=label, feature_mask=feature_mask)
    scores = out.tensors["scores"]
    torch.testing.assert_close(scores[cand], theirs[0, :, 0], rtol=1e-5, atol=1e-5 * float(theirs.abs().max()))
    assert scores[0] == 0 and scores[-1] == 0 and out.json["windows"] == len(cand)


@pytest.mark.parametrize("window", [2, 3])
def test_windows_equal_captum_occlusion(minilm_rt, window):
    from captum.attr import Occlusion

    out, enc, label = run(minilm_rt, "occlusion", {"window": window})
    x = minilm_rt.embed(enc)
    f, cand = inner_forward(minilm_rt, enc, x)
    base = baseline_embedding(minilm_rt, enc, "mask")[:, cand]
    K = x.shape[-1]
    theirs = Occlusion(f).attribute(x[:, cand], sliding_window_shapes=(window, K), strides=(1, K), baselines=base,
                                    target=label)
    torch.testing.assert_close(out.tensors["scores"][cand], theirs[0, :, 0], rtol=1e-5,
                               atol=1e-5 * float(theirs.abs().max()))
    assert out.json["windows"] == len(cand) - window + 1


def test_lime_is_a_weighted_ridge_of_the_probabilities(minilm_rt):
    from sklearn.linear_model import Ridge

    out, enc, label = run(minilm_rt, "lime", {"samples": 120}, seed=4)
    design, targets, weights = (out.tensors[k].double().numpy() for k in ("design", "targets", "weights"))
    assert design.shape == (120, len(enc.words[0]) - 2) and design[0].all() and not design[1:].all(1).any()
    ridge = Ridge(alpha=1.0, fit_intercept=True).fit(design, targets, sample_weight=weights)
    assert out.tensors["coefficients"].double().numpy() == pytest.approx(ridge.coef_, rel=1e-4, abs=1e-6)
    assert out.json["intercept"] == pytest.approx(float(ridge.intercept_), abs=1e-5)
    # the targets are the model's probabilities on the masked inputs
    from worker.methods.perturb import masked_probabilities

    drop = torch.zeros(2, len(enc.tokens[0]), dtype=torch.bool)
    for word, kept in zip(enc.words[0][1:-1], design[1], strict=True):
        drop[1, word] = not kept
    assert targets[:2] == pytest.approx(masked_probabilities(minilm_rt, enc, drop, torch.tensor([label])).tolist(),
                                        abs=1e-5)
    # word scores are the coefficients: a word's coefficient is split over its tokens
    words = [w for w in enc.words[0] if len(w) > 1]
    assert words
    for w in words:
        f = enc.words[0].index(w) - 1
        assert float(out.tensors["scores"][w].sum()) == pytest.approx(float(out.tensors["coefficients"][f]), abs=1e-6)


def test_lime_is_seeded(minilm_rt):
    a, _, _ = run(minilm_rt, "lime", {"samples": 40, "unit": "token"}, seed=1)
    b, _, _ = run(minilm_rt, "lime", {"samples": 40, "unit": "token"}, seed=1)
    c, _, _ = run(minilm_rt, "lime", {"samples": 40, "unit": "token"}, seed=2)
    assert torch.equal(a.tensors["design"], b.tensors["design"]) and torch.equal(a.tensors["scores"], b.tensors["scores"])
    assert not torch.equal(a.tensors["design"], c.tensors["design"])
    with pytest.raises(ma.ValidationError):
        registry()["lime"].params().load({"samples": 10**6})


def test_perturbation_mask_deletes_what_matters(minilm_rt):
    out, enc, label = run(minilm_rt, "perturbation", {"steps": 20, "lr": 0.2})
    mask = out.tensors["mask"]
    assert mask[0] == 1 and mask[-1] == 1 and bool(((mask >= 0) & (mask <= 1)).all())
    torch.testing.assert_close(out.tensors["scores"], 1 - mask)
    with torch.no_grad():
        s0 = float(minilm_rt.forward(minilm_rt.embed(enc), enc).logits[0, label])
    assert out.json["score"] < s0  # the learnt deletion lowers the target's logit
    assert out.json["objective"] < 1.0  # and the objective fell below its value at m = 1 (S(x)/|S(x)| = 1)
    assert float(mask.min()) < 0.9
