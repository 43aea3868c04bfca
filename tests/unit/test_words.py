"""Word tokenizer and vocabulary, the encodings of the word-level adapters, their bundle checks, and that the
shipped embedding rows are GloVe's."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from worker.models import InputError, bundle_dir, load_model
from worker.models.words import Vocabulary, tokenize


def test_tokenize_known_answers():
    text = "It’s a DON'T-miss: 21st century's best (really)..."
    tokens = tokenize(text)
    assert [t for t, _, _ in tokens] == ["it", "'s", "a", "do", "n't", "-", "miss", ":", "21st", "century", "'s",
                                         "best", "(", "really", ")", ".", ".", "."]
    for token, start, end in tokens:
        assert text[start:end].lower().replace("’", "'") == token
    assert [t for t, _, _ in tokenize("can't won't 'dog' we'll")] == ["ca", "n't", "wo", "n't", "'", "dog", "'",
                                                                     "we", "'ll"]
    assert tokenize("İstanbul x")[1] == ("x", 9, 10)  # offsets index the original text even where lower() grows


def test_vocabulary_roundtrip(tmp_path):
    vocab = Vocabulary(("<pad>", "<unk>", "the", "film"))
    vocab.write(tmp_path / "vocab.txt")
    again = Vocabulary.read(tmp_path / "vocab.txt")
    assert again == vocab and again.id("film") == 3 and again.id("unseen") == 1
    with pytest.raises(ValueError):
        Vocabulary(("the", "<pad>", "<unk>"))
    with pytest.raises(ValueError):
        Vocabulary(("<pad>", "<unk>", "the", "the"))


@pytest.mark.parametrize("name", ["bilstm-rt", "cnn-rt", "transformer-rt"])
def test_encode(name):
    adapter = load_model(name)
    text = "A zzyzxqq film, isn't it?"
    enc = adapter.encode([{"text": text}, {"text": "Fine."}])
    first = 1 if name == "transformer-rt" else 0
    assert enc.tokens[0][first:] == ["a", "zzyzxqq", "film", ",", "is", "n't", "it", "?"]
    assert enc.words[0] == [[t] for t in range(len(enc.tokens[0]))]
    assert enc.word_strings(0)[first:] == ["A", "zzyzxqq", "film", ",", "is", "n't", "it", "?"]
    assert enc.input_ids[0, first + 1] == adapter.vocab.id("<unk>")
    assert enc.attention_mask[1].tolist() == [1] * (first + 2) + [0] * (len(enc.tokens[0]) - first - 2)
    assert enc.input_ids[1, first + 2:].eq(0).all()  # <pad>
    for bad in ({"text": ""}, {"text": "  "}, {"premise": "a", "hypothesis": "b"}, {"text": "x " * 600}):
        with pytest.raises(InputError):
            adapter.encode(bad)
    with pytest.raises(InputError, match="unknown layer"):
        adapter.forward(adapter.embed(enc), enc, capture=["layer.9"])


@pytest.fixture
def cnn_copy(tmp_path):
    target = tmp_path / "cnn"
    shutil.copytree(bundle_dir("cnn-rt"), target)
    return target


def test_encode_and_describe_without_weights(cnn_copy):
    config = json.loads((cnn_copy / "config.json").read_text())
    (cnn_copy / "config.json").write_text(json.dumps({**config, "name": "cnn-copy"}))  # a revision not yet cached
    adapter = load_model(cnn_copy)
    adapter.encode({"text": "a fine film"})
    assert adapter.describe()["layers"][1] == "conv.k1"
    assert not adapter.loaded


def test_bundle_shapes_are_checked(cnn_copy):
    config = json.loads((cnn_copy / "config.json").read_text())
    config["model"]["channels"] = 7
    (cnn_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"conv.k1.weight: expected \(7, 50, 1\), found \(100, 50, 1\)"):
        load_model(cnn_copy)
    config["model"]["channels"], config["labels"] = 100, ["a", "b", "c"]
    (cnn_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="output.weight"):
        load_model(cnn_copy)
    config["labels"], config["adapter"] = ["negative", "positive"], "rnn"
    (cnn_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="unknown adapter"):
        load_model(cnn_copy)


@pytest.mark.parametrize("change, message", [
    ({"model": {"embedding_size": 50}}, "bad model settings"),
    ({"model": None}, "'model' must be an object"),
    ({"labels": ["same", "same"]}, "distinct"),
    ({"max_tokens": "many"}, "max_tokens"),
    ({"vocab": "../../etc/passwd"}, "vocab file"),
])
def test_bad_configs_are_refused(cnn_copy, change, message):
    config = json.loads((cnn_copy / "config.json").read_text())
    (cnn_copy / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(InputError, match=message):
        load_model(cnn_copy)


def test_bad_vocabulary_is_refused(cnn_copy):
    lines = (cnn_copy / "vocab.txt").read_text().split("\n")
    (cnn_copy / "vocab.txt").write_text("\n".join(lines[1:]))  # <pad> missing: every id shifts
    with pytest.raises(InputError, match="vocabulary"):
        load_model(cnn_copy)


@pytest.mark.parametrize("name", ["bilstm-rt", "cnn-rt", "transformer-rt"])
def test_embedding_rows_are_glove(name):
    """Every word row is its GloVe 6B 50-d vector (rounded to float16): frozen in training, shipped as is."""
    from worker.zoo.glove import glove_matrix, glove_words

    adapter = load_model(name).load()
    rank = {w: i for i, w in enumerate(glove_words()[:50_000])}
    words = [w for w in ("the", "film", "charm", "memorable", "dull", ",") if w in adapter.vocab]
    assert len(words) == 6
    expected = torch.tensor(glove_matrix()[[rank[w] for w in words]]).half().float()
    rows = adapter.module.embeddings.weight[[adapter.vocab.id(w) for w in words]]
    assert torch.equal(rows, expected)
    assert not adapter.module.embeddings.weight[0].any()  # <pad>
