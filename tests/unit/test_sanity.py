"""Model-parameter randomisation: the rank correlation, the randomised copy, and the registry's sanity entries."""
from __future__ import annotations

import pytest
import torch

from worker.methods import registry
from worker.methods.sanity import check, load, randomised, spearman


def test_spearman_against_scipy():
    from scipy.stats import spearmanr

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(30, generator=g), torch.randn(30, generator=g)
    assert spearman(a, b) == pytest.approx(spearmanr(a.numpy(), b.numpy()).statistic, abs=1e-12)
    assert spearman(a, 3 * a + 1) == pytest.approx(1.0) and spearman(a, -a) == pytest.approx(-1.0)


def test_randomised_copy_differs_and_leaves_the_model_alone(minilm_rt):
    before = minilm_rt.head.fc1.weight.clone() if minilm_rt.head.hidden_size else minilm_rt.head.fc.weight.clone()
    copy = randomised(minilm_rt)
    enc = minilm_rt.encode({"text": "a fine film ."})
    with torch.no_grad():
        a = minilm_rt.forward(minilm_rt.embed(enc), enc).logits
        b = copy.forward(copy.embed(enc), enc).logits
    assert not torch.allclose(a, b)
    after = minilm_rt.head.fc1.weight if minilm_rt.head.hidden_size else minilm_rt.head.fc.weight
    assert torch.equal(before, after)


def test_occlusion_depends_on_the_weights(minilm_rt):
    """Occlusion's ranking changes with the weights (|ρ| well below 1). Vanilla gradient's does not much: its stored
    ρ ≈ 0.89 flags it weak, as Adebayo et al. found for plain gradients."""
    result = check("minilm-rt", sentences=2, methods=["occlusion"], log=lambda line: None)
    assert abs(result["occlusion"]["spearman"]) < 0.7 and result["occlusion"]["sentences"] == 2


def test_registry_carries_the_stored_check():
    stored = load()
    assert stored, "worker/methods/sanity.json is missing: run python -m worker.methods.sanity"
    for name, entry in stored.items():
        assert registry()[name].sanity["spearman"] == entry["spearman"]
        assert registry()[name].sanity["weak"] == (abs(entry["spearman"]) >= 0.5)
