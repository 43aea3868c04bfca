"""faithfulness (ERASER AOPC) against a hand computation with transformers + the head's tensors, and its contract."""
from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from worker.methods import explain
from worker.methods.faithfulness import BINS, faithfulness, top_k

TEXT = "a gorgeous , moving and wonderfully acted film that never bores ."


def hand_probabilities(raw_encoder, spec, input_ids, attention_mask):
    """Class probabilities from token ids: the raw HF encoder + the head written out here (not Lantern code)."""
    w = load_file(str(spec.path / spec.head["file"]))
    hidden = raw_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    mask = attention_mask.unsqueeze(-1).float()
    z = ((hidden * mask).sum(1) / mask.sum(1) - w["mean"]) / w["std"]
    if spec.head.get("hidden_size"):
        logits = torch.nn.functional.gelu(z @ w["fc1.weight"].T + w["fc1.bias"]) @ w["fc2.weight"].T + w["fc2.bias"]
    else:
        logits = z @ w["fc.weight"].T + w["fc.bias"]
    return logits.softmax(-1)


def test_top_k():
    assert [top_k(b, 12) for b in BINS] == [1, 1, 2, 3, 6]
    assert [top_k(b, 100) for b in BINS] == [1, 5, 10, 20, 50]
    assert [top_k(b, 30) for b in BINS] == [1, 2, 3, 6, 15]


def test_faithfulness_equals_hand_computation(minilm_rt, raw_encoder, raw_tokenizer):
    enc = minilm_rt.encode({"text": TEXT})
    T = len(enc.tokens[0])
    scores = torch.linspace(-1.0, 2.0, T).roll(5).tolist()  # an arbitrary ranking, specials scored too
    with torch.no_grad():
        label = minilm_rt.forward(minilm_rt.embed(enc), enc).logits.argmax(-1)
    got = faithfulness(minilm_rt, enc, scores, label, seed=11)

    ids = enc.input_ids[0].tolist()
    inner = [t for t in range(T) if t not in (0, T - 1)]  # [CLS] ... [SEP]
    ranked = sorted(inner, key=lambda t: -scores[t])
    gen = torch.Generator().manual_seed(11)
    shuffled = [inner[i] for i in torch.randperm(len(inner), generator=gen).tolist()]
    mask_id = raw_tokenizer.mask_token_id

    def p(removed):
        masked = [mask_id if t in removed else i for t, i in enumerate(ids)]
        return float(hand_probabilities(raw_encoder, minilm_rt.spec, torch.tensor([masked]),
                                        torch.ones(1, T, dtype=torch.long))[0, int(label)])

    full = p(set())
    ks = [max(1, math.ceil(b * len(inner) - 1e-9)) for b in BINS]
    comp = [full - p(set(ranked[:k])) for k in ks]
    suff = [full - p(set(ranked[k:])) for k in ks]
    rcomp = [full - p(set(shuffled[:k])) for k in ks]
    rsuff = [full - p(set(shuffled[k:])) for k in ks]
    assert got["bins"] == [0.01, 0.05, 0.1, 0.2, 0.5] and got["k"] == ks
    assert got["probability"] == pytest.approx(full, abs=1e-5)
    assert got["per_bin"]["comprehensiveness"] == pytest.approx(comp, abs=1e-5)
    assert got["per_bin"]["sufficiency"] == pytest.approx(suff, abs=1e-5)
    assert got["comprehensiveness"] == pytest.approx(sum(comp) / 5, abs=1e-5)
    assert got["sufficiency"] == pytest.approx(sum(suff) / 5, abs=1e-5)
    assert got["random"] == pytest.approx({"comprehensiveness": sum(rcomp) / 5, "sufficiency": sum(rsuff) / 5},
                                          abs=1e-5)
    assert got["lift"] == pytest.approx(got["comprehensiveness"] - got["random"]["comprehensiveness"], abs=1e-12)


def test_a_good_ranking_beats_its_reverse(minilm_rt):
    """Ranking by the leave-one-out drop (the known answer for k = 1) beats the reversed ranking."""
    enc = minilm_rt.encode({"text": TEXT})
    with torch.no_grad():
        label = minilm_rt.forward(minilm_rt.embed(enc), enc).logits.argmax(-1)
    from worker.methods.perturb import candidates, masked_probabilities

    cand = candidates(enc)
    drop = torch.zeros(len(cand) + 1, len(enc.tokens[0]), dtype=torch.bool)
    for row, t in enumerate(cand.tolist(), start=1):
        drop[row, t] = True
    p = masked_probabilities(minilm_rt, enc, drop, label)
    loo = torch.zeros(len(enc.tokens[0]))
    loo[cand] = (p[0] - p[1:]).float()
    good = faithfulness(minilm_rt, enc, loo.tolist(), label)
    bad = faithfulness(minilm_rt, enc, (-loo).tolist(), label)
    assert good["per_bin"]["comprehensiveness"][0] == pytest.approx(float(loo.max()), abs=1e-5)
    assert good["comprehensiveness"] > bad["comprehensiveness"]
    assert good["sufficiency"] < bad["sufficiency"]
    assert good["lift"] > 0 > bad["lift"]


def test_random_ranking_is_seeded(minilm_rt):
    enc = minilm_rt.encode({"text": TEXT})
    label = torch.tensor([1])
    scores = list(range(len(enc.tokens[0])))
    a, b, c = (faithfulness(minilm_rt, enc, scores, label, seed=s) for s in (3, 3, 4))
    assert a == b and a["random"] != c["random"] and a["comprehensiveness"] == c["comprehensiveness"]


def test_explain_attaches_faithfulness_to_token_scoring_methods(minilm_rt, minilm):
    ex = explain(minilm_rt, {"text": TEXT}, ["gradient"], seed=2)
    faith = ex.result["methods"]["gradient"]["faithfulness"]
    assert {"bins", "comprehensiveness", "sufficiency", "random", "lift"} <= set(faith)
    assert set(faith["random"]) == {"comprehensiveness", "sufficiency"}
    label = torch.tensor([minilm_rt.labels.index(ex.result["target"])])
    alone = faithfulness(minilm_rt, minilm_rt.encode({"text": TEXT}), ex.result["methods"]["gradient"]["scores"],
                         label, seed=2)
    # equal up to float rounding: explain's p(x) is its prediction's (one row alone, not the variants' pass)
    from tests.unit.test_faithfulness_batch import _flat

    got, want = _flat(faith), _flat(alone)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == (pytest.approx(value, abs=1e-6) if isinstance(value, float) else value), key
    assert faith["probability"] == ex.result["prediction"]["probabilities"][ex.result["target"]]
    # headless: omitted
    assert faithfulness(minilm, minilm.encode({"text": TEXT}), [0.0] * 14, torch.tensor([0])) is None
