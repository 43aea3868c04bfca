"""The LSTM language model with attention (``lstm-lm-rt``): layout, causality, the attention recomputed by hand from
the captured states, padding invariance, gradient methods on the next-word head, the attention method's LM view, the
shipped bundle against a unigram baseline, the trainer, and the catalog."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from tests.unit import native_checks
from worker.models import InputError, load_model, model_card, validate_bundle
from worker.models.lstm_lm import BOS, EOS, LSTMLanguageModelAdapter
from worker.models.words import PAD, UNK, Vocabulary, tokenize

TEXT = "the film is a charming and funny"
LAYERS = ["embeddings", "lstm.1", "lstm.2", "output"]


@pytest.fixture(scope="module")
def lm():
    return load_model("lstm-lm-rt", device="cpu").load()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A small random-weight language model (sharp attention scores, so that a wrong mask would show)."""
    from worker.zoo.lstm_lm import write_lm_bundle

    words = sorted({w for text in native_checks.TEXTS + [TEXT] for w, _, _ in tokenize(text)})
    vocab = Vocabulary((PAD, UNK, BOS, EOS, *words))
    hyper = {"embedding_size": 8, "hidden_size": 12, "layers": 2, "dropout": 0.0}
    torch.manual_seed(0)
    module = LSTMLanguageModelAdapter.architecture(hyper, len(vocab), len(vocab))
    with torch.no_grad():
        module.attend.weight.mul_(20.0)
    out = tmp_path_factory.mktemp("tiny-lm")
    write_lm_bundle(out, {"lantern": 1, "name": "tiny-lm", "adapter": "lstm_lm", "labels": "vocab",
                          "model": hyper, "max_tokens": 40}, vocab, module.state_dict())
    return load_model(out).load()


def test_layout_and_describe(lm):
    enc = lm.encode({"text": "It's  a gem."})
    assert enc.tokens[0] == ["<s>", "it", "'s", "a", "gem", "."]
    assert enc.special[0] == [True] + [False] * 5 and enc.offsets[0][:3] == [(0, 0), (0, 2), (2, 4)]
    info = lm.describe()
    assert info["layers"] == LAYERS and info["attention"] == ["history"] and info["kind"] == "lstm_lm"
    assert info["labels"] == list(lm.vocab.tokens) and info["labels"][:4] == [PAD, UNK, BOS, EOS]
    assert {"gradient", "attention", "integrated_gradients", "occlusion"} <= set(info["methods"])
    for bad in ({"text": "  "}, {"premise": "a", "hypothesis": "b"}, {"text": "word " * 300}):
        with pytest.raises(InputError):
            lm.encode(bad)


def test_bundle_checks(tmp_path, tiny):
    import json
    import shutil

    shutil.copytree(tiny.spec.path, tmp_path / "b")
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    (tmp_path / "b" / "config.json").write_text(json.dumps({**config, "labels": ["a", "b"]}))
    with pytest.raises(InputError, match="vocabulary"):
        LSTMLanguageModelAdapter(validate_bundle(tmp_path / "b"), "x")
    (tmp_path / "b" / "config.json").write_text(json.dumps(config))
    vocab = (tmp_path / "b" / "vocab.txt").read_text().replace("</s>\n", "</z>\n")
    (tmp_path / "b" / "vocab.txt").write_text(vocab)
    with pytest.raises(InputError, match="</s>"):
        LSTMLanguageModelAdapter(validate_bundle(tmp_path / "b"), "x")


def test_history_is_causal_and_padding_free(tiny):
    enc = tiny.encode([{"text": t} for t in native_checks.TEXTS])
    trace = tiny.forward(tiny.embed(enc), enc, capture=["history", "output"])
    history = trace.attention["history"]
    b, t = enc.input_ids.shape
    assert history.shape == (b, 1, t, t) and trace.layers["output"].shape == (b, t, len(tiny.vocab))
    assert trace.logits.shape == (b, len(tiny.vocab))
    above = torch.ones(t, t, dtype=torch.bool).triu(1)
    assert not history[:, 0][:, above].any(), "weights beyond t must be exactly 0"
    for i, tokens in enumerate(enc.tokens):
        n = len(tokens)
        torch.testing.assert_close(history[i, 0, :n].sum(-1), torch.ones(n))
        assert not history[i, 0, n:].any() and not history[i, 0, :, n:].any()
        torch.testing.assert_close(trace.logits[i], trace.layers["output"][i, n - 1])


@pytest.mark.parametrize("fixture", ["tiny", "lm"])
def test_a_future_word_changes_nothing_before_it(fixture, request):
    """Independent of the mask code: two texts that differ from position k on agree on every layer, attention row
    and prediction before k, and differ at k."""
    adapter = request.getfixturevalue(fixture)
    first, second = (adapter.encode({"text": t}) for t in ("the plot is thin , but the acting",
                                                           "the plot is funny and the music ."))
    k = 4  # <s> the plot is | thin / funny
    traces = [adapter.forward(adapter.embed(e), e, capture=adapter.step_order) for e in (first, second)]
    for name in LAYERS:
        a, b = (tr.layers[name][0] for tr in traces)
        torch.testing.assert_close(a[:k], b[:k], atol=1e-6, rtol=1e-5, msg=name)
        assert not torch.allclose(a[k], b[k]), name
    a, b = (tr.attention["history"][0, 0] for tr in traces)
    torch.testing.assert_close(a[:k, :k], b[:k, :k], atol=1e-6, rtol=1e-5)
    # the prediction after "the plot is" alone is the output row of position k-1 in the longer texts
    short = adapter.encode({"text": "the plot is"})
    logits = adapter.forward(adapter.embed(short), short).logits[0]
    torch.testing.assert_close(logits, traces[0].layers["output"][0, k - 1], atol=1e-5, rtol=1e-4)


def test_attention_and_output_recomputed_by_hand(lm):
    """Plain unpacked nn.LSTM calls, then α_{t,s} = exp(w·f_s) / Σ_{s'≤t} exp(w·f_s') written as a loop."""
    m = lm.module
    enc = lm.encode({"text": TEXT})
    x = lm.embed(enc)
    trace = lm.forward(x, enc, capture=lm.step_order)
    h1, _ = m.lstm[0](x)
    h2, _ = m.lstm[1](h1)
    torch.testing.assert_close(trace.layers["lstm.1"], h1)
    torch.testing.assert_close(trace.layers["lstm.2"], h2)
    f = torch.cat([x, h1, h2], -1)[0].double()
    score = f @ m.attend.weight[0].double()
    n = f.shape[0]
    alpha = torch.zeros(n, n, dtype=torch.float64)
    for t in range(n):
        e = torch.exp(score[: t + 1] - score[: t + 1].max())
        alpha[t, : t + 1] = e / e.sum()
    torch.testing.assert_close(trace.attention["history"][0, 0].double(), alpha, atol=1e-6, rtol=1e-5)
    logits = (alpha @ f) @ m.output.weight.double().T + m.output.bias.double()
    torch.testing.assert_close(trace.layers["output"][0].double(), logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(trace.logits[0].double(), logits[-1], atol=1e-4, rtol=1e-4)


def test_padding_and_upto(lm):
    native_checks.padded_equals_alone(lm, [{"text": t} for t in native_checks.TEXTS])
    native_checks.upto_stops_there(lm, TEXT, "lstm.1", lm.module.lstm[1])
    native_checks.upto_stops_there(lm, TEXT, "lstm.2", lm.module.attend)


def test_gradient_explains_the_next_word(lm):
    from worker.methods import explain

    result = explain(lm, {"text": TEXT}, ["gradient"]).result
    enc = lm.encode({"text": TEXT})
    x = lm.embed(enc).requires_grad_(True)
    logits = lm.module.run(x, enc.attention_mask.bool())["output"][0, -1]
    predicted = int(logits.argmax())
    assert result["prediction"]["label"] == result["target"] == lm.vocab.tokens[predicted]
    assert len(result["prediction"]["probabilities"]) == 20  # the most probable words, not the vocabulary
    assert next(iter(result["prediction"]["probabilities"])) == lm.vocab.tokens[predicted]
    (grad,) = torch.autograd.grad(logits[predicted], x)
    scores = result["methods"]["gradient"]["scores"]
    torch.testing.assert_close(torch.tensor(scores), grad[0].abs().mean(-1), atol=1e-6, rtol=1e-4)
    assert "faithfulness" in result["methods"]["gradient"]
    # a chosen word as the target; an unknown one is refused with a short message
    other = explain(lm, {"text": TEXT}, ["gradient"], target="film").result
    assert other["target"] == "film" and other["methods"]["gradient"]["scores"] != scores
    with pytest.raises(InputError, match="in all") as err:
        explain(lm, {"text": TEXT}, ["gradient"], target="zzzqqq")
    assert len(str(err.value)) < 600


def test_attention_view_json_and_png(lm):
    from worker.methods import explain

    ex = explain(lm, {"text": "a nice reminder"}, ["attention"], params={"attention": {"generate": 5}})
    part = ex.result["methods"]["attention"]
    assert part["view"] == "lm" and part["text_tokens"] == 4 and 1 <= len(part["generated"]) <= 5
    generated, tokens = part["generated"], part["tokens"]
    assert tokens == ["<s>", "a", "nice", "reminder", *generated[:-1]]
    assert part["shape"] == [len(tokens)] * 2 and len(part["predicted"]) == len(tokens)
    history = torch.tensor(part["history"])
    assert not history.triu(1).any() and torch.allclose(history.sum(-1), torch.ones(len(tokens)))
    steps = part["generated_steps"]
    assert steps == [False] * 3 + [True] * len(generated)
    assert [p for p, g in zip(part["predicted"], steps, strict=True) if g] == generated  # greedy
    assert part["next"][-1] == generated[-1] and part["next"][:-1] == tokens[1:]
    assert torch.equal(ex.tensors["attention"]["attention"], history.float())
    assert ex.figures["attention.png"][:8] == b"\x89PNG\r\n\x1a\n"
    # generate = 0: the given text, one step per token; and the generation is deterministic
    plain = explain(lm, {"text": "a nice reminder"}, ["attention"]).result["methods"]["attention"]
    assert plain["generated"] == [] and plain["tokens"] == tokens[:4] and plain["next"][-1] is None
    torch.testing.assert_close(torch.tensor(plain["history"]), history[:4, :4], atol=1e-6, rtol=1e-5)
    again = explain(lm, {"text": "a nice reminder"}, ["attention"], params={"attention": {"generate": 5}},
                    figures=False).result["methods"]["attention"]
    assert again["generated"] == generated
    with pytest.raises(InputError):
        explain(lm, {"text": "a"}, ["attention"], params={"attention": {"generate": 51}})


def test_generation_stops_at_max_tokens(tiny):
    enc = tiny.encode({"text": TEXT})
    words = tiny.generate(enc, 100)
    assert len(enc.tokens[0]) + len(words) <= tiny.max_tokens
    assert all(w not in (PAD, UNK, BOS) for w in words)


def test_shipped_bundle_beats_a_unigram_baseline(lm):
    from worker.data.rt import rt_split

    spec = lm.spec
    size = sum(p.stat().st_size for p in Path(spec.path).iterdir())
    assert size < 5_000_000 and {"dev_perplexity", "test_perplexity", "test_accuracy"} <= set(spec.config["metrics"])
    # the unigram baseline always predicts the most frequent next token of the train split (<unk> counted)
    counts = Counter(lm.vocab.id(w) for text, _ in rt_split("train") for w, _, _ in tokenize(text))
    counts[lm.eos_id] = len(rt_split("train"))
    top = max(counts, key=counts.get)
    rows = rt_split("dev")[:40]
    enc = lm.encode([{"text": t} for t, _ in rows])
    with torch.no_grad():
        out = lm.forward(lm.embed(enc), enc, capture=["output"]).layers["output"]
    right = base = total = 0
    for i, tokens in enumerate(enc.tokens):
        targets = [lm.vocab.id(w) for w in tokens[1:]] + [lm.eos_id]
        predicted = out[i, : len(tokens)].argmax(-1).tolist()
        right += sum(p == t for p, t in zip(predicted, targets, strict=True))
        base += sum(t == top for t in targets)
        total += len(targets)
    assert right / total > base / total + 0.05, (right / total, base / total)


def test_trainer_on_a_small_slice(tmp_path, monkeypatch):
    import worker.data.rt as rt
    from worker.zoo import lstm_lm as trainer
    from worker.zoo.train import train, trainable

    assert "lstm-lm-rt" in trainable()
    full = {name: rt.rt_split(name) for name in rt.SPLITS}
    sizes = {"train": 96, "dev": 16, "test": 16}
    monkeypatch.setattr(rt, "rt_split", lambda name: full[name][: sizes[name]])
    monkeypatch.setattr(trainer, "MAX_EPOCHS", 1)
    monkeypatch.setattr(trainer, "VOCAB_WORDS", 200)
    metrics = train("lstm-lm-rt", tmp_path / "a", seed=1)
    assert metrics["n_train"] == 96 and metrics["dev_perplexity"] > 1 and 0 <= metrics["dev_accuracy"] <= 1
    adapter = load_model(tmp_path / "a")
    assert adapter.layer_names == LAYERS and len(adapter.vocab) <= 204
    train("lstm-lm-rt", tmp_path / "b", seed=1)
    from safetensors.torch import load_file

    first, second = (load_file(str(tmp_path / d / "model.safetensors")) for d in "ab")
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_model_card():
    card = model_card("lstm-lm-rt")
    assert card["zoo"] and card["layers"] == LAYERS and card["attention"] == ["history"]
    assert card["metrics"]["test_perplexity"] > 1


@pytest.mark.parametrize("backend", ["sqlite"])
def test_catalog_lists_the_model(api, backend):
    names = {m["name"] for m in api.get("/v1/models").get_json()["models"]}
    assert "lstm-lm-rt" in names
    card = api.get("/v1/models/lstm-lm-rt").get_json()
    assert card["layers"] == LAYERS and card["attention"] == ["history"] and "attention" in card["methods"]
    assert card["labels"][:4] == [PAD, UNK, BOS, EOS]
