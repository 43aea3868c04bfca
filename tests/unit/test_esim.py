"""ESIM: the hand-written LSTM cell against nn.LSTM and against the gate equations computed by hand, the adapter's
padding invariance, attention saliency against finite differences and a separate autograd pass written here, gate
saliency against finite differences, the methods' JSON/figures, import-esim, and the NLI corpus's rationales."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from worker.models.esim import ESIM, GATE_NAMES, lstm_scan, write_bundle

PAIR = {"premise": "A kid is playing in the garden", "hypothesis": "A kid is having fun in the garden with her family"}
WORDS = ["<pad>", "<unk>", *"a kid is playing in the garden taking nap having fun with her family".split()]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random ESIM bundle (8-d embeddings, hidden 6), loaded."""
    from worker.models import load_model

    torch.manual_seed(0)
    module = ESIM(len(WORDS), 8, 6)
    for p in module.parameters():  # larger weights than the default init: livelier gates and gradients
        p.data.mul_(2.0)
    path = tmp_path_factory.mktemp("tiny-esim")
    write_bundle(path, module.state_dict(), WORDS, {"name": "tiny-esim", "model": {"embedding_dim": 8,
                                                                                  "hidden_size": 6}})
    return load_model(path).load()


def padded_batch(lengths, size=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), max(lengths), size, generator=g)
    mask = torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None]
    return x * mask.unsqueeze(-1), torch.tensor(lengths)


def test_lstm_scan_reproduces_nn_lstm_both_directions_with_padding():
    torch.manual_seed(1)
    lstm = nn.LSTM(5, 4, batch_first=True, bidirectional=True)
    x, lengths = padded_batch([7, 4, 1])
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    reference = nn.utils.rnn.pad_packed_sequence(lstm(packed)[0], batch_first=True)[0]
    ours, gates = lstm_scan(lstm, x, lengths)
    assert torch.allclose(ours, reference, atol=1e-5)
    assert set(gates) == {(d, g) for d in ("fwd", "bwd") for g in ("input", "forget", "output", "cell")}


def test_gates_equal_the_lstm_equations_computed_by_hand():
    """i, f, o and c at each step from the weight slices and nn.LSTM's own h_{t-1}: independent of lstm_scan."""
    torch.manual_seed(2)
    lstm = nn.LSTM(5, 4, batch_first=True, bidirectional=True)
    x, lengths = padded_batch([6, 3], seed=3)
    _, gates = lstm_scan(lstm, x, lengths)
    hidden = 4
    for b, n in enumerate(lengths.tolist()):
        seq = x[b, :n]
        out = lstm(seq.unsqueeze(0))[0][0]  # 1 sequence, no padding: n × 8
        for direction, suffix, order in (("fwd", "", range(n)), ("bwd", "_reverse", range(n - 1, -1, -1))):
            w_ih, w_hh = getattr(lstm, f"weight_ih_l0{suffix}"), getattr(lstm, f"weight_hh_l0{suffix}")
            b_ih, b_hh = getattr(lstm, f"bias_ih_l0{suffix}"), getattr(lstm, f"bias_hh_l0{suffix}")
            h_all = out[:, :hidden] if direction == "fwd" else out[:, hidden:]
            h_prev, c_prev = torch.zeros(hidden), torch.zeros(hidden)
            for t in order:
                z = [w_ih[k * hidden:(k + 1) * hidden] @ seq[t] + b_ih[k * hidden:(k + 1) * hidden]
                     + w_hh[k * hidden:(k + 1) * hidden] @ h_prev + b_hh[k * hidden:(k + 1) * hidden]
                     for k in range(4)]  # nn.LSTM's gate order: i, f, g, o
                i, f, g, o = torch.sigmoid(z[0]), torch.sigmoid(z[1]), torch.tanh(z[2]), torch.sigmoid(z[3])
                c = f * c_prev + i * g
                for name, value in (("input", i), ("forget", f), ("output", o), ("cell", c)):
                    assert torch.allclose(gates[(direction, name)][b, t], value, atol=1e-5), (direction, name, t)
                assert torch.allclose(o * torch.tanh(c), h_all[t], atol=1e-5)
                h_prev, c_prev = h_all[t], c
        for g in gates.values():
            assert torch.all(g[b, n:] == 0)  # padding stays zero


def test_adapter_batch_equals_items_and_gate_path_equals_fast_path(tiny):
    pairs = [PAIR, {"premise": "A kid is playing", "hypothesis": "A kid is taking a nap in the garden"}]
    enc = tiny.encode(pairs)
    assert enc.segments[1] == [0] * 4 + [1] * 9
    x = tiny.embed(enc)
    fast = tiny.forward(x, enc, capture=["align", "inference_lstm"])
    slow = tiny.forward(x, enc, capture=["align", "inference_lstm", *GATE_NAMES])
    assert torch.allclose(fast.logits, slow.logits, atol=1e-5)
    assert set(slow.gates) == set(GATE_NAMES) and slow.gates[GATE_NAMES[0]].shape == (2, 18, 6)
    for i in range(2):
        one = enc.item(i)
        alone = tiny.forward(tiny.embed(one), one, capture=["align", "inference_lstm"])
        assert torch.allclose(alone.logits[0], fast.logits[i], atol=1e-5)
        n, m = (torch.tensor(one.segments[0]) == 0).sum(), (torch.tensor(one.segments[0]) == 1).sum()
        assert torch.allclose(alone.attention["align"][0], fast.attention["align"][i, :, :n, :m], atol=1e-6)
        assert torch.allclose(alone.layers["inference_lstm"][0], fast.layers["inference_lstm"][i, : n + m],
                              atol=1e-5)
    align = fast.attention["align"][0]
    assert torch.allclose(align[0].sum(1), torch.ones(7)) and torch.allclose(align[1].sum(0), torch.ones(11))


def after_alignment(module: ESIM, u: torch.Tensor, v: torch.Tensor, energy: torch.Tensor) -> torch.Tensor:
    """ESIM's logits as a function of e for one pair, written from the appendix's equations (no padding)."""
    u_tilde = energy.softmax(1) @ v
    v_tilde = energy.softmax(0).T @ u
    outs = []
    for a, b in ((u, u_tilde), (v, v_tilde)):
        p = torch.relu(module.projection(torch.cat([a, b, a - b, a * b], -1)))
        h = module.inference_lstm(p.unsqueeze(0))[0][0]
        outs += [h.mean(0), h.max(0).values]
    return module.output(torch.tanh(module.hidden(torch.cat(outs))))


def test_attention_saliency_equals_autograd_and_finite_differences(tiny):
    from worker.methods import explain

    ex = explain(tiny, PAIR, ["attention_saliency"], target="neutral")
    part, tensors = ex.result["methods"]["attention_saliency"], ex.tensors["attention_saliency"]
    assert part["shape"] == [7, 11] and part["label"] == "neutral"
    enc = tiny.encode(PAIR)
    module = copy.deepcopy(tiny.module).double()
    x = tiny.embed(enc).double()
    encoded = module.input_lstm(x[:, :7])[0][0], module.input_lstm(x[:, 7:])[0][0]
    energy = (encoded[0] @ encoded[1].T).detach().requires_grad_(True)
    assert torch.allclose(energy.float(), tensors["energy"], atol=1e-5)
    score = lambda e: after_alignment(module, *encoded, e)[1]  # noqa: E731 - S(neutral), the logit
    (reference,) = torch.autograd.grad(score(energy), energy)
    assert torch.allclose(tensors["gradient"].double(), reference, atol=1e-6, rtol=1e-4)
    assert torch.equal(tensors["saliency"], tensors["gradient"].abs())
    h = 1e-6
    for i, j in [(0, 0), (3, 3), (6, 10), (1, 9)]:
        bump = torch.zeros_like(energy)
        bump[i, j] = h
        with torch.no_grad():
            numeric = (score(energy + bump) - score(energy - bump)) / (2 * h)
        assert abs(float(numeric) - float(reference[i, j])) < 1e-6
    top = part["top"][0]
    assert top["saliency"] == pytest.approx(float(tensors["saliency"].max()))


def test_gate_saliency_equals_finite_differences_on_the_gates(tiny):
    from worker.methods import explain

    ex = explain(tiny, PAIR, ["gating"])
    part, tensors = ex.result["methods"]["gating"], ex.tensors["gating"]
    label = tiny.labels.index(ex.result["target"])
    enc = tiny.encode(PAIR)
    module = copy.deepcopy(tiny.module).double()
    x = tiny.embed(enc).double()
    inputs = tiny.inputs(enc)
    zero = {n: torch.zeros(1, 18, 6, dtype=torch.float64) for n in GATE_NAMES}

    def score(offsets):
        with torch.no_grad():
            return float(dict(module.steps(x, **inputs, gates=True, offsets=offsets))["output"][0, label])

    h = 1e-6
    for name, t, unit in [("input_lstm.fwd.input", 2, 0), ("input_lstm.bwd.forget", 9, 3),
                          ("inference_lstm.fwd.output", 5, 1), ("inference_lstm.bwd.cell", 15, 4),
                          ("inference_lstm.bwd.input", 0, 5)]:
        plus, minus = dict(zero), dict(zero)
        plus[name] = zero[name].clone()
        plus[name][0, t, unit] = h
        minus[name] = zero[name].clone()
        minus[name][0, t, unit] = -h
        numeric = (score(plus) - score(minus)) / (2 * h)
        assert abs(numeric - float(tensors[f"{name}.saliency"][t, unit])) < 1e-5, name
    # the JSON curves are the norms of those tensors; normalised curves peak at 1 in each sentence
    gate = part["gates"]["inference_lstm.fwd.output"]
    assert gate["signal"] == pytest.approx(tensors["inference_lstm.fwd.output.signal"].norm(dim=-1).tolist())
    assert gate["saliency"] == pytest.approx(tensors["inference_lstm.fwd.output.saliency"].norm(dim=-1).tolist())
    for places in (part["premise_tokens"], part["hypothesis_tokens"]):
        assert max(gate["saliency_normalised"][t] for t in places) == pytest.approx(1.0)
    assert set(ex.figures) == {"gating-input_lstm.png", "gating-inference_lstm.png"}


def test_attention_view_and_figures(tiny):
    from worker.methods import compare_figures, explain

    ex = explain(tiny, PAIR, ["attention", "attention_saliency"])
    part = ex.result["methods"]["attention"]
    assert part["view"] == "esim" and part["premise"][1] == "kid" and part["hypothesis"][-1] == "family"
    rows = torch.tensor(part["premise_to_hypothesis"])
    assert torch.allclose(rows.sum(1), torch.ones(7), atol=1e-5)
    assert torch.allclose(torch.tensor(part["energy"]).softmax(1), rows, atol=1e-5)
    for png in ex.figures.values():
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    figs = compare_figures(["attention", "attention_saliency"], {"a": ex.result, "b": ex.result})
    assert list(figs) == ["attention_saliency-compare.png"]


def test_nli_methods_refuse_other_models(minilm_rt):
    from worker.methods import applicable_methods, explain
    from worker.models import InputError

    assert "attention_saliency" not in applicable_methods(minilm_rt)
    with pytest.raises(InputError, match="does not apply"):
        explain(minilm_rt, {"text": "a fine film"}, ["gating"])


def test_esim_refuses_a_single_text(tiny):
    from worker.models import InputError

    with pytest.raises(InputError, match="premise and a hypothesis"):
        tiny.encode({"text": "a kid is playing"})


def test_import_esim_from_the_public_layout(tmp_path, tiny):
    from worker.models import load_model
    from worker.models.esim import import_checkpoint

    module = tiny.module
    public = {  # the common public ESIM's names, written out here
        "_word_embedding.weight": module.embeddings.weight,
        **{f"_encoding._encoder.{k}": v for k, v in module.input_lstm.state_dict().items()},
        "_projection.0.weight": module.projection.weight, "_projection.0.bias": module.projection.bias,
        **{f"_composition._encoder.{k}": v for k, v in module.inference_lstm.state_dict().items()},
        "_classification.1.weight": module.hidden.weight, "_classification.1.bias": module.hidden.bias,
        "_classification.4.weight": module.output.weight, "_classification.4.bias": module.output.bias,
    }
    torch.save({"epoch": 3, "model": public}, tmp_path / "best.pth.tar")
    (tmp_path / "words.txt").write_text("\n".join(["_PAD_", "_OOV_", *WORDS[2:]]) + "\n")
    from click.testing import CliRunner

    from service.cli import main

    run = CliRunner().invoke(main, ["models", "import-esim", str(tmp_path / "best.pth.tar"), "--vocab",
                                    str(tmp_path / "words.txt"), "--out", str(tmp_path / "bundle")])
    assert run.exit_code == 0, run.output
    assert '"hidden_size": 6' in run.output and '"embedding_dim": 8' in run.output
    imported = load_model(tmp_path / "bundle")
    enc = imported.encode(PAIR)
    with torch.no_grad():
        assert torch.allclose(imported.forward(imported.embed(enc), enc).logits,
                              tiny.forward(tiny.embed(enc), enc).logits, atol=1e-6)
    torch.save({"model": {**public, "extra.weight": torch.zeros(1)}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="unexpected key"):
        import_checkpoint(tmp_path / "bad.pt", tmp_path / "words.txt", tmp_path / "b2", "bad")


def test_corpus_rationales_point_at_the_changed_words():
    from worker.data.nli import HELD_OUT_FRAMES, SEED_PAIRS, corpus
    from worker.models.words import tokenize

    data = corpus()
    assert not {p.template for p in data["train"]} & set(HELD_OUT_FRAMES)
    assert {p.template for p in data["test"]} >= set(HELD_OUT_FRAMES)
    train_keys = {(p.premise.lower(), p.hypothesis.lower()) for p in data["train"]}
    assert not train_keys & {(p.lower(), h.lower()) for p, h, _ in SEED_PAIRS}
    for pair in data["train"][:3000]:
        p = [t for t, _, _ in tokenize(pair.premise)]
        h = [t for t, _, _ in tokenize(pair.hypothesis)]
        rp, rh = pair.rationale["premise"], pair.rationale["hypothesis"]
        assert rp or rh
        assert all(0 <= i < len(p) for i in rp) and all(0 <= j < len(h) for j in rh)
        if pair.rule == "contradiction:negation":
            assert "not" in [h[j] for j in rh] or "not" in [p[i] for i in rp]
        if pair.rule == "neutral:add":  # the added words are the hypothesis's rationale, absent from the premise
            assert [h[j] for j in rh] == h[len(h) - len(rh):]
        if pair.rule in ("contradiction:activity", "contradiction:gender", "entailment:hypernym"):
            assert [p[i] for i in rp] != [h[j] for j in rh]


def test_trained_esim_300_saliency_finds_the_rationales_attention_does_not():
    """On held-out generated pairs, the most salient alignment cell touches a rationale word far more often than
    chance and than the highest attention cell (full numbers: python -m worker.zoo.esim hits esim-300 1500)."""
    from worker.models import load_model
    from worker.zoo.esim import heldout_pairs, rationale_hit_rates

    rates = rationale_hit_rates(load_model("esim-300").load(), heldout_pairs(150))
    overall = rates["all"]
    assert overall["accuracy"] > 0.95
    assert overall["saliency"] > overall["chance"] + 0.3 and overall["saliency"] > overall["attention"] + 0.3
    for label in ("entailment", "neutral", "contradiction"):
        assert rates[label]["saliency"] > rates[label]["chance"] + 0.2, label


def test_spacy_vectors_are_found_by_their_murmurhash_keys():
    """MurmurHash64A (seed 1) is spaCy's string hash: common words' keys are in en_core_web_md's table, and a
    lower-cased name takes its capitalised spelling's (more frequent) row."""
    from worker.models.words import Vocabulary
    from worker.zoo.esim import _spacy_table, murmurhash64a, spacy_rows

    matrix, key2row = _spacy_table()
    for word in ("the", "kid", "garden", "nap", "amazon", "John", "Mary", "man"):
        assert murmurhash64a(word.encode()) in key2row, word
    assert murmurhash64a(b"no such word here") not in key2row
    rows = spacy_rows(Vocabulary(("<pad>", "<unk>", "john", "garden")))
    assert torch.equal(rows[2], torch.from_numpy(matrix[key2row[murmurhash64a(b"John")]].copy()).half().float())
    assert rows[0].abs().sum() == 0 and rows[3].abs().sum() > 0
