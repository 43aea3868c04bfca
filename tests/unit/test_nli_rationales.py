"""The token-scoring methods on the trained ESIM-300 and the generated NLI corpus, whose pairs carry their known
rationale (worker.data.nli): each method's top token, and its top k (k = the rationale's size), must be rationale
tokens (premise ∪ hypothesis) clearly more often than chance; the measure is worker.zoo.esim.method_hit_rates
(scores and faithfulness exactly as explain_batch returns them; target = the model's decision; light settings:
worker.zoo.esim.TOKEN_METHODS).

Full numbers (``python -m worker.zoo.esim token-hits esim-300 360``: 360 held-out pairs, 120/122/118 entailment/
neutral/contradiction, accuracy 0.989; chance = mean |rationale| / tokens = 0.209 for top-1 and top-k alike):

    method                top-1   top-k   lift    top-1 entailment / neutral / contradiction
    gradient              0.772   0.537   +0.111  0.75 / 0.76 / 0.81
    grad_x_input          0.539   0.333   +0.130  0.42 / 0.57 / 0.63
    integrated_gradients  0.592   0.444   +0.373  0.25 / 0.80 / 0.73
    smoothgrad            0.322   0.281   +0.104  0.31 / 0.28 / 0.38
    occlusion             0.311   0.252   +0.384  0.25 / 0.28 / 0.41
    perturbation          0.339   0.331   +0.269  0.49 / 0.16 / 0.37
    lime                  0.550   0.434   +0.489  0.31 / 0.80 / 0.54

Every method is above chance, but smoothgrad (8 samples), occlusion and perturbation (50 steps) only by about 0.1:
the erasure methods have the highest faithfulness lift yet their top token is mostly outside the rationale (masking
a word the two sentences share breaks the alignment too). ``esim-50`` (240 pairs, ``token-hits esim-50 240``;
accuracy only 0.771, contradiction 0.58; chance 0.212): top-1 / top-k / lift = gradient 0.350 / 0.333 / +0.098,
grad_x_input 0.562 / 0.424 / +0.322, integrated_gradients 0.562 / 0.459 / +0.395, smoothgrad 0.475 / 0.404 /
+0.149, occlusion 0.525 / 0.442 / +0.388, perturbation 0.279 / 0.233 / +0.198, lime 0.500 / 0.439 / +0.402.
(These were measured when ``heldout_pairs(n)`` took every k-th pair, which for 360 happened to be balanced; for
150 or 300 that stride locked onto the label cycle (300 pairs: 218 neutral, 15 contradictions), so it now takes the
labels in turn.)
"""
from __future__ import annotations

import pytest

SAMPLE = 36  # held-out pairs, 12 per label (heldout_pairs takes the labels in turn)
# measured on this sample (chance 0.233, accuracy 0.972):
#   top-1  gradient 0.694, grad_x_input 0.694, integrated_gradients 0.556, smoothgrad 0.417, occlusion 0.472,
#          perturbation 0.472, lime 0.472
#   top-k  0.545, 0.374, 0.424, 0.321, 0.271, 0.415, 0.432
#   lift   0.123, 0.105, 0.413, 0.150, 0.418, 0.229, 0.488
# thresholds: a little below the lowest of this sample, an earlier 36-pair sample and the 360 pairs above; the
# sample flatters smoothgrad and occlusion (0.32 and 0.31 top-1 on 360 pairs), so theirs only ask for a margin.
MIN_TOP1 = {"gradient": 0.6, "grad_x_input": 0.45, "integrated_gradients": 0.48, "smoothgrad": 0.3,
            "occlusion": 0.3, "perturbation": 0.3, "lime": 0.42}
MIN_TOPK = {"gradient": 0.45, "grad_x_input": 0.3, "integrated_gradients": 0.38, "smoothgrad": 0.25,
            "occlusion": 0.24, "perturbation": 0.3, "lime": 0.38}
MIN_LIFT = {"gradient": 0.08, "grad_x_input": 0.07, "integrated_gradients": 0.3, "smoothgrad": 0.08,
            "occlusion": 0.3, "perturbation": 0.1, "lime": 0.4}


@pytest.mark.slow
def test_token_methods_find_the_nli_rationales_on_esim_300():
    from worker.models import load_model
    from worker.zoo.esim import TOKEN_METHODS, heldout_pairs, method_hit_rates

    rates = method_hit_rates(load_model("esim-300").load(), heldout_pairs(SAMPLE))["all"]
    print(rates)
    assert rates["n"] == SAMPLE and rates["accuracy"] > 0.95
    chance = rates["chance"]
    assert 0.15 < chance < 0.4, chance
    for name in TOKEN_METHODS:
        assert rates["top1"][name] >= MIN_TOP1[name] > chance, (name, rates["top1"][name], chance)
        assert rates["topk"][name] >= MIN_TOPK[name] > chance, (name, rates["topk"][name], chance)
        assert rates["lift"][name] >= MIN_LIFT[name], (name, rates["lift"][name])


def test_rationale_positions_map_to_the_adapters_tokens_with_and_without_sentence_specials(tmp_path):
    """Corpus positions (worker.models.words.tokenize, per sentence) -> the adapter's joint token indices: premise
    words, then hypothesis words, skipping <s>/</s> where the bundle adds them."""
    import torch

    from worker.data.nli import Pair
    from worker.models import load_model
    from worker.models.esim import ESIM, write_bundle
    from worker.zoo.esim import rationale_token_indices

    pair = Pair("Mary ordered a book from amazon", "A man ordered a book", "contradiction", "contradiction:gender",
                "purchase", {"premise": [0], "hypothesis": [0, 1]})
    words = ["<pad>", "<unk>", "<s>", "</s>", *"mary ordered a book from amazon man".split()]
    expected = {}
    for specials in ({}, {"bos": "<s>", "eos": "</s>"}):
        path = tmp_path / str(len(specials))
        torch.manual_seed(0)
        write_bundle(path, ESIM(len(words), 4, 3).state_dict(), words,
                     {"name": "tiny", "model": {"embedding_dim": 4, "hidden_size": 3, **specials}})
        adapter = load_model(path).load()
        enc = adapter.encode({"premise": pair.premise, "hypothesis": pair.hypothesis})
        found = rationale_token_indices(adapter, enc, pair)
        expected[len(specials)] = [enc.tokens[0][t] for t in found]
        assert not any(enc.special[0][t] for t in found)
    assert expected[0] == expected[2] == ["mary", "a", "man"]
    with pytest.raises(ValueError):
        rationale_token_indices(adapter, enc, Pair("Mary bought a book", pair.hypothesis, "", "", "", pair.rationale))
