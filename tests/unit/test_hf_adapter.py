"""The Hugging Face adapter against transformers itself: embeddings path, early stop, encoding details."""
from __future__ import annotations

import pytest
import torch

from worker.models import InputError, bundle_revision, load_model, validate_bundle
from worker.models.hf import HFAdapter

SENTENCE = "The unbelievably charismatic actor didn't shine."


def test_inputs_embeds_reproduces_input_ids(minilm, raw_encoder, raw_tokenizer):
    batch = raw_tokenizer([SENTENCE, "short"], padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = raw_encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          token_type_ids=batch["token_type_ids"], output_hidden_states=True,
                          output_attentions=True)
    enc = minilm.encode([{"text": SENTENCE}, {"text": "short"}])
    assert torch.equal(enc.input_ids, batch["input_ids"])
    capture = minilm.layer_names + minilm.attention_names
    with torch.no_grad():
        trace = minilm.forward(minilm.embed(enc), enc, capture=capture)
    assert trace.logits is None  # headless
    assert len(ref.hidden_states) == len(minilm.layer_names) == 7
    for k, name in enumerate(minilm.layer_names):
        torch.testing.assert_close(trace.layers[name], ref.hidden_states[k], rtol=0, atol=1e-6)
    for k, name in enumerate(minilm.attention_names):
        assert trace.attention[name].shape == (2, 12, enc.input_ids.shape[1], enc.input_ids.shape[1])
        torch.testing.assert_close(trace.attention[name], ref.attentions[k], rtol=0, atol=1e-6)
        torch.testing.assert_close(trace.attention[name].sum(-1), torch.ones(2, 12, enc.input_ids.shape[1]))


@pytest.mark.parametrize("adapter_name", ["minilm", "minilm_rt"])
def test_upto_equals_full_run(adapter_name, request):
    adapter = request.getfixturevalue(adapter_name)
    enc = adapter.encode({"text": SENTENCE})
    x = adapter.embed(enc)
    everything = adapter.layer_names + adapter.attention_names
    with torch.no_grad():
        full = adapter.forward(x, enc, capture=everything)
        for name in adapter.layer_names:
            wanted = [n for n in everything if adapter._depth(n) <= adapter._depth(name)]
            part = adapter.forward(x, enc, capture=wanted, upto=name)
            for n in wanted:
                got = part.layers.get(n, part.attention.get(n))
                assert torch.equal(got, full.layers.get(n, full.attention.get(n))), (name, n)
            if name not in ("pool", "output"):
                assert part.logits is None
    assert len(adapter.encoder.encoder.layer) == 6  # the layer list is restored after a truncated run


def test_upto_runs_only_the_needed_layers(minilm):
    calls = []
    hooks = [layer.register_forward_hook(lambda m, a, o, k=k: calls.append(k))
             for k, layer in enumerate(minilm.encoder.encoder.layer)]
    try:
        enc = minilm.encode({"text": SENTENCE})
        with torch.no_grad():
            minilm.forward(minilm.embed(enc), enc, capture=["layer.2"], upto="layer.2")
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == [0, 1]


def test_forward_refuses_unknown_and_too_deep_names(minilm_rt):
    enc = minilm_rt.encode({"text": SENTENCE})
    x = minilm_rt.embed(enc)
    with pytest.raises(InputError, match="unknown"):
        minilm_rt.forward(x, enc, capture=["layer.7"])
    with pytest.raises(InputError, match="unknown"):
        minilm_rt.forward(x, enc, upto="nowhere")
    with pytest.raises(InputError, match="beyond"):
        minilm_rt.forward(x, enc, capture=["layer.3"], upto="layer.2")


def test_layer_names_follow_design(minilm, minilm_rt):
    layers = ["embeddings", *(f"layer.{k}" for k in range(1, 7))]
    assert minilm.layer_names == layers
    assert minilm_rt.layer_names == [*layers, "pool", "output"]
    assert minilm_rt.attention_names == [f"attention.{k}" for k in range(1, 7)]
    with torch.no_grad():
        enc = minilm_rt.encode({"text": SENTENCE})
        trace = minilm_rt.forward(minilm_rt.embed(enc), enc, capture=["pool", "output", "layer.6"])
    assert trace.layers["pool"].shape == (1, 384)
    torch.testing.assert_close(trace.layers["pool"], trace.layers["layer.6"].mean(1))  # one item: no padding
    assert torch.equal(trace.layers["output"], trace.logits)
    assert trace.logits.shape == (1, 2)


def test_words_and_offsets_with_a_multi_subword_word(minilm):
    enc = minilm.encode({"text": SENTENCE})
    tokens = enc.tokens[0]
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert enc.special[0] == [True] + [False] * (len(tokens) - 2) + [True]
    # "unbelievably" is several word pieces, grouped into one word
    start = tokens.index("un")
    group = next(g for g in enc.words[0] if start in g)
    assert len(group) > 1 and group == list(range(group[0], group[-1] + 1))
    assert all(tokens[t].startswith("##") for t in group[1:])
    assert "".join(tokens[t].removeprefix("##") for t in group) == "unbelievably"
    assert enc.word_strings(0)[enc.words[0].index(group)] == "unbelievably"
    # every token in exactly one word, in order
    assert [t for g in enc.words[0] for t in g] == list(range(len(tokens)))
    # offsets point into the original text (case kept), specials (0, 0)
    for token, (a, b), special in zip(tokens, enc.offsets[0], enc.special[0], strict=True):
        if special:
            assert (a, b) == (0, 0)
        else:
            assert SENTENCE[a:b].lower() == token.removeprefix("##")
    assert enc.word_strings(0)[1:5] == ["The", "unbelievably", "charismatic", "actor"]
    assert enc.segments[0] == [0] * len(tokens)


def test_pairs_have_segments_and_token_types(minilm, raw_tokenizer):
    item = {"premise": "A man sleeps soundly.", "hypothesis": "Nobody is awake"}
    enc = minilm.encode(item)
    ref = raw_tokenizer(item["premise"], item["hypothesis"])
    assert enc.input_ids[0].tolist() == ref["input_ids"]
    assert enc.token_type_ids[0].tolist() == ref["token_type_ids"] == enc.segments[0]
    assert enc.tokens[0].count("[SEP]") == 2
    words = enc.word_strings(0)
    assert words[words.index("[SEP]") + 1] == "Nobody"  # hypothesis offsets index the hypothesis
    assert "soundly" in words


def test_batch_is_padded_and_items_match_single_runs(minilm_rt):
    texts = ["fine", SENTENCE, "a perfectly pleasant , forgettable comedy ."]
    enc = minilm_rt.encode([{"text": t} for t in texts])
    lengths = [len(t) for t in enc.tokens]
    assert enc.input_ids.shape == (3, max(lengths))
    assert enc.attention_mask.sum(1).tolist() == lengths
    with torch.no_grad():
        batch_logits = minilm_rt.forward(minilm_rt.embed(enc), enc).logits
        for i, text in enumerate(texts):
            one = minilm_rt.encode({"text": text})
            assert torch.equal(enc.item(i).input_ids, one.input_ids)
            torch.testing.assert_close(batch_logits[i], minilm_rt.forward(minilm_rt.embed(one), one).logits[0],
                                       rtol=0, atol=1e-4)


@pytest.mark.parametrize("bad", [{"text": ""}, {"text": "   \n"}, {"premise": "a", "hypothesis": ""}, {},
                                 {"premise": "only"}, {"text": "x", "premise": "y", "hypothesis": "z"},
                                 {"text": 3}])
def test_bad_inputs_are_input_errors(minilm, bad):
    with pytest.raises(InputError):
        minilm.encode(bad)


def test_too_long_input(minilm):
    text = "word " * 600
    assert minilm.count_tokens({"text": text}) == 602
    with pytest.raises(InputError, match="at most 512"):
        minilm.encode({"text": text})


@pytest.mark.parametrize("inputs", [
    {"text": SENTENCE}, {"text": "short"}, {"premise": "A man sleeps.", "hypothesis": "Someone rests."},
    {"text": "\u200b\u200b"}, {"text": "word " * 600}, {"text": "word " * 510}, {"text": "word " * 511},
    {"text": "  "}, {"premise": "A man sleeps."}, {"text": "x", "premise": "y", "hypothesis": "z"},
])
def test_input_length_is_encode_s_count_and_refusals(minilm_rt, inputs):
    """The API checks a submit with input_length (no encoding built); encode, which the run uses, is the
    reference: the same count, or the same refusal."""
    try:
        expected: int | str = len(minilm_rt.encode(inputs).tokens[0])
    except InputError as e:
        expected = str(e)
    try:
        got: int | str = minilm_rt.input_length(inputs)
    except InputError as e:
        got = str(e)
    assert got == expected


def test_encode_and_describe_do_not_read_weights():
    path = load_model("minilm-rt").spec.path
    adapter = HFAdapter(validate_bundle(path), bundle_revision(path))  # a fresh object, not the cached one
    enc = adapter.encode({"text": SENTENCE})
    card = adapter.describe()
    assert adapter.count_tokens({"text": SENTENCE}) == len(enc.tokens[0])
    assert card["labels"] == ["negative", "positive"] and "gradient" in card["methods"]
    assert not adapter.loaded
    adapter.embed(enc)
    assert adapter.loaded


def test_hf_sequence_classifier_directory(tiny_classifier_dir):
    from transformers import AutoModelForSequenceClassification

    adapter = load_model(tiny_classifier_dir)
    assert adapter.labels == ["contradiction", "entailment", "neutral"]
    assert adapter.layer_names == ["embeddings", "layer.1", "layer.2", "pool", "output"]
    assert adapter.max_tokens == 128
    ref_model = AutoModelForSequenceClassification.from_pretrained(
        str(tiny_classifier_dir), attn_implementation="eager", use_safetensors=True, local_files_only=True).eval()
    enc = adapter.encode({"premise": "A dog runs.", "hypothesis": "An animal moves."})
    with torch.no_grad():
        ref = ref_model(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                        token_type_ids=enc.token_type_ids, output_hidden_states=True)
        trace = adapter.forward(adapter.embed(enc), enc, capture=adapter.layer_names)
        early = adapter.forward(adapter.embed(enc), enc, capture=["layer.1"], upto="layer.1")
    torch.testing.assert_close(trace.logits, ref.logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(trace.layers["pool"], ref_model.bert.pooler(ref.hidden_states[-1]), rtol=0, atol=1e-6)
    for k in range(3):
        torch.testing.assert_close(trace.layers[adapter.layer_names[k]], ref.hidden_states[k], rtol=0, atol=1e-6)
    assert torch.equal(early.layers["layer.1"], trace.layers["layer.1"])


def test_plain_headless_hf_directory(minilm_path, minilm):
    adapter = load_model(minilm_path)  # the package's own HF directory, not the zoo bundle
    assert adapter is not minilm and adapter.revision != minilm.revision
    assert adapter.labels is None and adapter.layer_names == minilm.layer_names
    enc = adapter.encode({"text": SENTENCE})
    assert enc.tokens == minilm.encode({"text": SENTENCE}).tokens
    assert "gradient" not in adapter.describe()["methods"]
