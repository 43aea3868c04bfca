"""Faithfulness of several items in shared passes (faithfulness_batch, worker/methods/masked_rows.py) equals the
per-item computation, written here as it ran before the passes were shared: one item at a time, the variants in one
pass, each greedy search step by step, each single-pass ranking in its own passes."""
from __future__ import annotations

import pytest
import torch

from worker.methods import faithfulness as faith_module
from worker.methods.aopc_bounds import BUDGET, BoundsCache
from worker.methods.faithfulness import faithfulness, faithfulness_batch
from worker.methods.masked_rows import packed
from worker.methods.perturb import candidates, masked_probabilities

TEXTS = [  # n from 1 to 25 non-special tokens: greedy and single-pass searches, two items of one length
    "Dull.",
    "A gripping, beautifully acted film.",
    "A dull, badly acted film.",
    "The plot is a tangled mess, yet the lead is wonderful.",
    "An unbelievably tangled mess of a plot, but the lead actress is wonderful and the score never bores you at all.",
]


def _greedy(adapter, one, index, cand, ks, keep, lowest):
    left, chosen, after = cand.tolist(), [], {}
    for step in range(max(ks)):
        drop = torch.zeros(len(left), len(one.tokens[0]), dtype=torch.bool)
        for r, t in enumerate(left):
            if keep:
                drop[r, cand] = True
                drop[r, [*chosen, t]] = False
            else:
                drop[r, [*chosen, t]] = True
        p = masked_probabilities(adapter, one, drop, index).double()
        best = int(p.argmin() if lowest else p.argmax())
        chosen.append(left.pop(best))
        after[step + 1] = float(p[best])
    return [after[k] for k in ks]


def _single(adapter, one, index, cand, ks, keep):
    alone = torch.zeros(len(cand), len(one.tokens[0]), dtype=torch.bool)
    for r, t in enumerate(cand.tolist()):
        alone[r, cand] = keep
        alone[r, t] = not keep
    effect = masked_probabilities(adapter, one, alone, index).double()
    ends = []
    for order in (cand[effect.argsort()], cand[effect.argsort(descending=True)]):
        drop = torch.zeros(len(ks), len(one.tokens[0]), dtype=torch.bool)
        for r, k in enumerate(ks):
            drop[r, order[k:] if keep else order[:k]] = True
        ends.append(masked_probabilities(adapter, one, drop, index).double().tolist())
    return ends


def reference_bounds(adapter, one, index, ks, full):
    """(comp low, comp high), (suff low, suff high): the search item by item, as before shared passes."""
    cand = candidates(one)
    n = len(cand)

    def aopc(p):
        return sum(full - v for v in p) / len(p)

    if 4 * sum(n - s for s in range(max(ks))) <= BUDGET:
        high, low, suff_low, suff_high = (_greedy(adapter, one, index, cand, ks, keep, lowest)
                                          for keep, lowest in ((False, True), (False, False), (True, False),
                                                               (True, True)))
        return (aopc(low), aopc(high)), (aopc(suff_low), aopc(suff_high))
    lowest_first, highest_first = _single(adapter, one, index, cand, ks, False)
    kept_low, kept_high = _single(adapter, one, index, cand, ks, True)
    return (aopc(highest_first), aopc(lowest_first)), (aopc(kept_high), aopc(kept_low))


def eraser_aopc(adapter, one, target, scores, ks) -> tuple[float, float]:
    """ERASER's comprehensiveness and sufficiency of a ranking, written out here: the mean drop of p(y) when the
    top k non-special tokens are masked, and when all the others are, over the bins' k."""
    cand = candidates(one).tolist()
    order = sorted(cand, key=lambda t: -scores[t])  # sorted() is stable: ties keep token order
    T = len(one.tokens[0])
    full = float(masked_probabilities(adapter, one, torch.zeros(1, T, dtype=torch.bool), target)[0])
    drops = []
    for keep_top in (False, True):
        rows = torch.zeros(len(ks), T, dtype=torch.bool)
        for r, k in enumerate(ks):
            masked = [t for t in cand if t not in order[:k]] if keep_top else order[:k]
            rows[r, masked] = True
        drops.append(float((full - masked_probabilities(adapter, one, rows, target)).mean()))
    return drops[0], drops[1]


@pytest.fixture()
def fresh_cache(monkeypatch):
    monkeypatch.setattr(faith_module, "CACHE", BoundsCache())


def _flat(doc, prefix=""):
    """Every number of a document by its path (lists by position)."""
    if isinstance(doc, dict):
        return {k: v for key, value in doc.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    if isinstance(doc, list):
        return {k: v for n, value in enumerate(doc) for k, v in _flat(value, f"{prefix}{n}.").items()}
    return {prefix: doc}


def test_batch_equals_each_item_computed_alone(minilm_rt, fresh_cache, monkeypatch):
    enc = minilm_rt.encode([{"text": t} for t in TEXTS])
    lengths = [len(t) for t in enc.tokens]
    assert len(set(lengths)) < len(lengths) and min(lengths) <= 4 and max(lengths) >= 25
    with torch.no_grad():
        index = minilm_rt.forward(minilm_rt.embed(enc), enc).logits.argmax(-1)
    scores = [torch.linspace(-1.0, 2.0, n).roll(3).tolist() for n in lengths]
    batch = faithfulness_batch(minilm_rt, enc, scores, index, seed=5)
    searches = {doc["normalized"]["search"] for doc in batch}
    assert searches == {"greedy", "single"}
    for i in range(len(TEXTS)):
        one, target = enc.item(i), index[i : i + 1]
        monkeypatch.setattr(faith_module, "CACHE", BoundsCache())  # each item searched again, alone
        alone = faithfulness(minilm_rt, one, scores[i], target, seed=5)
        got, want = _flat(batch[i]), _flat(alone)
        assert got.keys() == want.keys()
        for key, value in want.items():
            assert got[key] == (pytest.approx(value, abs=1e-6) if isinstance(value, float) else value), key
        assert (batch[i]["comprehensiveness"], batch[i]["sufficiency"]) == pytest.approx(
            eraser_aopc(minilm_rt, one, target, scores[i], alone["k"]), abs=1e-5)
        comp, suff = reference_bounds(minilm_rt, one, target, alone["k"], alone["probability"])
        # the reference bounds, widened by the two rankings as `normalized` widens them, are the document's
        widen = alone["normalized"]["bounds"]
        assert widen["comprehensiveness"][0] == pytest.approx(min(comp[0], alone["comprehensiveness"],
                                                                  alone["random"]["comprehensiveness"]), abs=1e-6)
        assert widen["comprehensiveness"][1] == pytest.approx(max(comp[1], alone["comprehensiveness"],
                                                                  alone["random"]["comprehensiveness"]), abs=1e-6)
        assert widen["sufficiency"][0] == pytest.approx(min(suff[0], alone["sufficiency"],
                                                            alone["random"]["sufficiency"]), abs=1e-6)
        assert widen["sufficiency"][1] == pytest.approx(max(suff[1], alone["sufficiency"],
                                                            alone["random"]["sufficiency"]), abs=1e-6)


def test_items_without_scores_or_tokens_are_skipped(minilm_rt, fresh_cache):
    enc = minilm_rt.encode([{"text": TEXTS[1]}, {"text": TEXTS[2]}])
    out = faithfulness_batch(minilm_rt, enc, [None, [0.0] * len(enc.tokens[1])], torch.tensor([0, 1]))
    assert out[0] is None and out[1] is not None
    assert faithfulness_batch(minilm_rt, enc, [[0.0] * 9, None], None) == [None, None]


def test_passes_are_packed_by_rows_and_tokens(monkeypatch):
    from worker.methods import masked_rows

    monkeypatch.setattr(masked_rows, "TOKENS_PER_PASS", 100)
    monkeypatch.setattr(masked_rows, "BATCH", 4)
    assert packed([10, 10, 10, 10, 10, 20, 20, 30, 200]) == [[0, 1, 2, 3], [4, 5, 6], [7], [8]]


def test_a_known_unmasked_probability_is_not_run_again(minilm_rt, fresh_cache, monkeypatch):
    """`explain` hands its prediction's p(x) over (`probability`): the unmasked row is not run a second time, every
    number stays what the rows alone give (to float rounding), and p(x) is the prediction's own."""
    from worker.methods import masked_rows

    enc = minilm_rt.encode([{"text": TEXTS[1]}, {"text": TEXTS[3]}])
    with torch.no_grad():
        logits = minilm_rt.forward(minilm_rt.embed(enc), enc).logits
    index = logits.argmax(-1)
    known = logits.softmax(-1).gather(1, index.view(-1, 1)).squeeze(1).double()
    scores = [torch.linspace(-1.0, 2.0, len(t)).tolist() for t in enc.tokens]
    rows: list[int] = []
    run = masked_rows._run
    monkeypatch.setattr(masked_rows, "_run", lambda a, e, i, items, drops: rows.append(len(drops)) or run(
        a, e, i, items, drops))
    want = faithfulness_batch(minilm_rt, enc, scores, index, seed=5)
    ran_alone, rows[:] = sum(rows), []
    monkeypatch.setattr(faith_module, "CACHE", BoundsCache())  # the bound searches run again too
    got = faithfulness_batch(minilm_rt, enc, scores, index, seed=5, probability=known)
    assert sum(rows) == ran_alone - 2  # one unmasked row per item
    for i in range(2):
        assert got[i]["probability"] == float(known[i])
        flat_got, flat_want = _flat(got[i]), _flat(want[i])
        assert flat_got.keys() == flat_want.keys()
        for key, value in flat_want.items():
            assert flat_got[key] == (pytest.approx(value, abs=1e-6) if isinstance(value, float) else value), key
