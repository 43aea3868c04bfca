"""The reverse-seq2seq adapter and its shipped bundle: layout, an independent recomputation with plain nn.LSTM
calls, padding invariance, upto, and that the model reverses sequences."""
from __future__ import annotations

import random

import pytest
import torch

from tests.unit import native_checks
from worker.models import InputError, load_model


@pytest.fixture(scope="module")
def seq2seq():
    return load_model("reverse-seq2seq", device="cpu").load()


def test_layout_and_describe(seq2seq):
    enc = seq2seq.encode({"text": "a  b c"})
    assert enc.tokens[0] == ["<sos>", "a", "b", "c", "<eos>", "<sos>", "c", "b", "a"]
    assert enc.segments[0] == [0] * 5 + [1] * 4
    assert enc.special[0] == [True, False, False, False, True, True, False, False, False]
    assert enc.offsets[0][1:4] == [(0, 1), (3, 4), (5, 6)] and enc.offsets[0][6:] == [(5, 6), (3, 4), (0, 1)]
    assert enc.word_strings(0) == ["<sos>", "a", "b", "c", "<eos>", "<sos>", "c", "b", "a"]
    info = seq2seq.describe()
    assert info["layers"] == ["embeddings", "encoder", "decoder", "output"]
    assert info["attention"] == ["attention"] and info["labels"] is None
    assert "gradient" not in info["methods"]  # no head: methods that need S(y) do not apply
    for bad in ({"text": "a b e"}, {"text": "   "}, {"text": "<sos> a"}, {"premise": "a", "hypothesis": "b"}):
        with pytest.raises(InputError):
            seq2seq.encode(bad)


def test_reverses_held_out_sequences(seq2seq):
    rng = random.Random(12345)
    texts = [" ".join(rng.choice("abcd") for _ in range(rng.randint(3, 10))) for _ in range(200)]
    answers = seq2seq.answer(seq2seq.encode([{"text": t} for t in texts]))
    right = sum(answer == [*reversed(t.split()), "<eos>"] for t, answer in zip(texts, answers, strict=True))
    assert right / len(texts) >= 0.97  # measured at training: test sequence accuracy 0.996


def test_attention_follows_the_reverse_diagonal(seq2seq):
    """Predicting answer word t (= text word n-1-t, encoder position n-t after <sos>), the decoder attends most to
    that position at ≥ 90 % of the steps and never more than one position away."""
    rng = random.Random(7)
    texts = [" ".join(rng.choice("abcd") for _ in range(rng.randint(3, 10))) for _ in range(50)]
    enc = seq2seq.encode([{"text": t} for t in texts])
    attention = seq2seq.forward(seq2seq.embed(enc), enc, capture=["attention"]).attention["attention"][:, 0]
    offsets = []
    for i, text in enumerate(texts):
        n = len(text.split())
        offsets += [int(p) - (n - t) for t, p in enumerate(attention[i, :n].argmax(-1))]
    assert max(map(abs, offsets)) <= 1
    assert sum(o == 0 for o in offsets) / len(offsets) >= 0.9


def test_states_equal_plain_lstm_calls(seq2seq):
    """Encoder, attention, decoder and output recomputed from the weights with unpacked nn.LSTM calls."""
    m = seq2seq.module
    enc = seq2seq.encode({"text": "d a c c b"})
    x = seq2seq.embed(enc)
    trace = seq2seq.forward(x, enc, capture=seq2seq.step_order)
    n_enc = enc.segments[0].count(0)
    encoded, state = m.encoder(x[:, :n_enc])
    top, _ = m.decoder(x[:, n_enc:], state)
    weights = torch.softmax(top @ (encoded @ m.attend.weight.T).transpose(1, 2), -1)
    decoded = torch.tanh(torch.cat([top, weights @ encoded], -1) @ m.combine.weight.T + m.combine.bias)
    torch.testing.assert_close(trace.layers["encoder"], encoded)
    torch.testing.assert_close(trace.attention["attention"][:, 0], weights)
    torch.testing.assert_close(trace.layers["decoder"], decoded)
    torch.testing.assert_close(trace.layers["output"], decoded @ m.output.weight.T + m.output.bias)


def test_padding_and_upto(seq2seq):
    native_checks.padded_equals_alone(seq2seq, [{"text": "a b c d a b c"}, {"text": "b a d"},
                                                {"text": "c c d a b"}])
    native_checks.upto_stops_there(seq2seq, "a b c d", "encoder", seq2seq.module.decoder)
    native_checks.upto_stops_there(seq2seq, "a b c d", "decoder", seq2seq.module.output)
