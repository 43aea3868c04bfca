"""The encoder–decoder LM adapter (worker/models/seq2seq_lm.py) on tiny T5 and BART folders built here from a config
with seeded random weights, against independent computations written with plain transformers + torch.autograd (no
Lantern code): each step run on its own, the source through ``inputs_embeds`` and the decoder prefix through
``decoder_inputs_embeds``.

(tests/unit/test_seq2seq.py is about the zoo's LSTM reverse-seq2seq, a different model.)"""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from worker.models import bundle_dir, load_model

PROMPT = "the film is a charming and"
CONTINUATION = " good film ."
KINDS = ("t5", "bart")
PAD, BOS, EOS = 0, 1, 2  # gpt2-rt's tokenizer: <pad>, <s>, </s>


def tokenizer_files(out: Path, bos: bool) -> None:
    """gpt2-rt's byte-level BPE tokenizer with a seq2seq template: ``[<s>] text </s>`` (BART adds <s>, T5 not)."""
    spec = json.loads((bundle_dir("gpt2-rt") / "tokenizer.json").read_text())
    template = spec["post_processor"]["processors"][1]
    single = [{"SpecialToken": {"id": "<s>", "type_id": 0}}] if bos else []
    template["single"] = [*single, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "</s>",
                                                                                            "type_id": 0}}]
    template["pair"] = [*template["single"][:-1], {"Sequence": {"id": "B", "type_id": 0}},
                        template["single"][-1]]
    template["special_tokens"] = {t: {"id": t, "ids": [i], "tokens": [t]} for t, i in (("<s>", BOS), ("</s>", EOS))}
    (out / "tokenizer.json").write_text(json.dumps(spec))
    shutil.copy(bundle_dir("gpt2-rt") / "tokenizer_config.json", out / "tokenizer_config.json")


def build(kind: str, out: Path, seed: int = 2, decoder_layers: int = 2) -> Path:
    """A tiny T5 (2+2 layers, decoder start = <pad>, one tied table) or BART (3 encoder + 2 decoder layers, scaled
    embeddings, decoder start = </s>, untied: encoder, decoder and output tables of their own) folder, as
    save_pretrained writes it, with the tokenizer above."""
    from transformers import BartConfig, BartForConditionalGeneration, T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    if kind == "t5":
        model = T5ForConditionalGeneration(T5Config(
            vocab_size=4096, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=decoder_layers, num_heads=4,
            dropout_rate=0.0, pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=PAD))
    else:
        model = BartForConditionalGeneration(BartConfig(
            vocab_size=4096, d_model=32, encoder_layers=3, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
            dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, scale_embedding=True, pad_token_id=PAD,
            bos_token_id=BOS, eos_token_id=EOS, decoder_start_token_id=EOS, forced_eos_token_id=None,
            tie_word_embeddings=False))
    # freshly initialised, both models decode nothing but <pad>/</s>: N(0, 0.3) weights (and small special-token
    # rows in T5's one table; BART's stacks read tables of their own) make greedy decoding pick ordinary tokens;
    # BART still tends to repeat one, and with seed 2 both decode more than one token for PROMPT in 8 steps
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
        model.get_input_embeddings().weight[:3] *= 0.1
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer_files(out, bos=kind == "bart")
    return out


@pytest.fixture(scope="session")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("seq2seq-lm")
    return {kind: build(kind, root / f"{kind}-tiny") for kind in KINDS}


@pytest.fixture(scope="session")
def plain(folders):
    """{kind: (model, tokenizer)} loaded by plain transformers."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    out = {}
    for kind, path in folders.items():
        model = AutoModelForSeq2SeqLM.from_pretrained(path, local_files_only=True, use_safetensors=True,
                                                      attn_implementation="eager")
        out[kind] = (model.eval().requires_grad_(False), AutoTokenizer.from_pretrained(path, local_files_only=True))
    return out


@pytest.fixture(params=KINDS)
def lm(request, folders, plain):
    """(adapter, plain model, tokenizer) of one kind."""
    return (load_model(folders[request.param], device="cpu"), *plain[request.param])


@pytest.fixture(scope="session")
def exact(folders, plain):
    """{kind: (adapter, plain model, tokenizer)} in float64. These random models are ill-conditioned enough that
    float32 gradients summed in two orders (every step in one pass vs one step alone) differ by ~1e-5 and
    Σ_k x·∂S/∂x, a sum with cancellation, by ~1e-4: in float64 the comparison to 1e-5 tests the arithmetic and not
    the rounding."""
    from worker.models import open_model

    out = {}
    for kind, path in folders.items():
        adapter = open_model(path)  # outside the process's cache: the other tests keep float32
        adapter.model.double()
        model, tok = plain[kind]
        out[kind] = (adapter, copy.deepcopy(model).double(), tok)
    return out


@pytest.fixture(params=KINDS)
def lm64(request, exact):
    return exact[request.param]


def explain(adapter, methods, **kw):
    from worker.methods import ExplainRequest, explain_request

    inputs = {"prompt": PROMPT}
    if "continuation" in kw:
        inputs["continuation"] = kw.pop("continuation")
    return explain_request(adapter, ExplainRequest(inputs=inputs, methods=methods, **kw), figures=False)


def sides(model, tok, new: list[int]) -> tuple[list[int], list[int]]:
    """(source ids, decoder ids: the start token then the new tokens)."""
    return tok(PROMPT)["input_ids"], [model.config.decoder_start_token_id, *new]


def step_score(model, src_x, dec_x, y: int, contrast: int | None = None) -> torch.Tensor:
    """The logit of y after the decoder prefix (minus the contrast token's)."""
    logits = model(inputs_embeds=src_x, decoder_inputs_embeds=dec_x).logits[0, -1]
    return logits[y] - (logits[contrast] if contrast is not None else 0.0)


def reference_gradient(model, src_x, dec_x, s: int, y: int, contrast: int | None = None) -> torch.Tensor:
    """∂ score of step s / ∂ (source embeddings · decoder embeddings of the start and s earlier tokens): (P+s)×K."""
    a = src_x.detach().requires_grad_(True)
    b = dec_x[:, :s + 1].detach().requires_grad_(True)
    grads = torch.autograd.grad(step_score(model, a, b, y, contrast), (a, b))
    return torch.cat(grads, 1)[0]


def depth(model) -> tuple[int, int]:
    """(encoder, decoder) block counts, as the model's hidden states report them."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([[5, 6]]), decoder_input_ids=torch.tensor([[7]]), output_hidden_states=True)
    return len(out.encoder_hidden_states) - 1, len(out.decoder_hidden_states) - 1


def embeddings(model, ids: list[int], side: str) -> torch.Tensor:
    """1×n×K: the ids through the encoder's or the decoder's own embedding (the tiny BART has a table for each)."""
    stack = model.get_encoder() if side == "encoder" else model.get_decoder()
    return stack.get_input_embeddings()(torch.tensor([ids]))


def close(a, b, rtol=1e-5):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) <= rtol


def test_the_reference_runs_the_model_as_its_own_ids_do(lm):
    """The embeddings the references feed are what the model computes from ids (BART scales them inside, and this
    one has an input table per stack)."""
    _, model, tok = lm
    src, dec = sides(model, tok, tok(CONTINUATION, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        by_ids = model(input_ids=torch.tensor([src]), decoder_input_ids=torch.tensor([dec])).logits
        by_x = model(inputs_embeds=embeddings(model, src, "encoder"),
                     decoder_inputs_embeds=embeddings(model, dec, "decoder")).logits
    assert close(by_x, by_ids, 1e-6)


def test_prompt_tokens_layers_and_greedy_generation(lm):
    adapter, model, tok = lm
    enc = adapter.encode({"prompt": PROMPT})
    src = tok(PROMPT)["input_ids"]
    assert enc.input_ids[0].tolist() == [*src, model.config.decoder_start_token_id]
    assert enc.segments[0] == [0] * len(src) + [1] and enc.special[0][-1] and enc.special[0][len(src) - 1]
    assert "".join(enc.tokens[0][:len(src) - 1]).removeprefix("<s>") == PROMPT
    E, D = depth(model)
    assert adapter.layer_names == ["embeddings", *(f"encoder.layer.{k}" for k in range(1, E + 1)),
                                   *(f"decoder.layer.{k}" for k in range(1, D + 1)), "output"]
    assert adapter.attention_names == [*(f"encoder.attention.{k}" for k in range(1, E + 1)),
                                       *(n for k in range(1, D + 1) for n in (f"decoder.attention.{k}",
                                                                              f"cross_attention.{k}"))]
    with torch.no_grad():
        expected = model.generate(torch.tensor([src]), max_new_tokens=8, do_sample=False)[0, 1:].tolist()
    ours = adapter.generate(enc.input_ids[0].tolist(), 8)
    assert ours == expected and len(set(ours)) > 1


def test_a_decoder_deeper_than_its_encoder_generates_greedily(tmp_path):
    """T5 with 2 encoder and 3 decoder blocks: transformers' own generate() sizes its cache from the encoder and
    fails on it; the adapter's generation equals greedy decoding written out with full forward passes (no cache)."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    path = build("t5", tmp_path / "t5-deep-decoder", decoder_layers=3)
    model = AutoModelForSeq2SeqLM.from_pretrained(path, local_files_only=True).eval()
    src = AutoTokenizer.from_pretrained(path, local_files_only=True)(PROMPT)["input_ids"]
    decoded = [model.config.decoder_start_token_id]
    with torch.no_grad():
        for _ in range(6):
            logits = model(input_ids=torch.tensor([src]), decoder_input_ids=torch.tensor([decoded])).logits
            decoded.append(int(logits[0, -1].argmax()))
            if decoded[-1] == EOS:
                break
    adapter = load_model(path, device="cpu")
    assert [n for n in adapter.layer_names if n.startswith("decoder.layer.")] == [f"decoder.layer.{k}" for k in (1, 2, 3)]
    assert adapter.generate(adapter.encode({"prompt": PROMPT}).input_ids[0].tolist(), 6) == decoded[1:]


def test_forward_layers_and_attention_in_the_sequence_frame(lm):
    adapter, model, tok = lm
    new = tok(CONTINUATION, add_special_tokens=False)["input_ids"]
    seq = adapter.extend(adapter.encode({"prompt": PROMPT}), new)
    src, dec = sides(model, tok, new)
    n, T = len(src), len(src) + len(dec)
    trace = adapter.forward(adapter.embed(seq), seq, capture=adapter.layer_names + adapter.attention_names)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([src]), decoder_input_ids=torch.tensor([dec]), output_hidden_states=True,
                    output_attentions=True)
    assert close(trace.logits[0], out.logits[0, -1], 1e-6)
    assert close(trace.layers["output"][0, n:], out.logits[0], 1e-6) and not trace.layers["output"][0, :n].any()
    E, D = depth(model)
    for k in range(1, E + 1):
        layer = trace.layers[f"encoder.layer.{k}"]
        assert layer.shape == (1, T, 32) and close(layer[0, :n], out.encoder_hidden_states[k][0], 1e-6)
        assert not layer[0, n:].any()
        attention = trace.attention[f"encoder.attention.{k}"]
        assert attention.shape == (1, 4, T, T) and close(attention[0, :, :n, :n], out.encoder_attentions[k - 1][0])
    for k in range(1, D + 1):
        layer = trace.layers[f"decoder.layer.{k}"]
        assert close(layer[0, n:], out.decoder_hidden_states[k][0], 1e-6) and not layer[0, :n].any()
        own, cross = trace.attention[f"decoder.attention.{k}"], trace.attention[f"cross_attention.{k}"]
        assert close(own[0, :, n:, n:], out.decoder_attentions[k - 1][0])
        assert close(cross[0, :, n:, :n], out.cross_attentions[k - 1][0])
        assert float(own.sum() + cross.sum()) == pytest.approx(2 * 4 * len(dec), rel=1e-5)  # each query row sums to 1
    masks = {name: adapter.layer_mask(name, seq)[0].tolist() for name in ("encoder.layer.1", "decoder.layer.1",
                                                                          "output", "embeddings")}
    assert masks["encoder.layer.1"] == [True] * n + [False] * len(dec)
    assert masks["decoder.layer.1"] == masks["output"] == [False] * n + [True] * len(dec)
    assert masks["embeddings"] == [True] * T


def test_a_batch_of_prompts_of_different_lengths(lm):
    """Each item's source and decoder sides are cut from its own row: the logits equal single runs."""
    adapter, _, _ = lm
    prompts = [{"prompt": PROMPT}, {"prompt": "a dull film"}]
    batch = adapter.encode(prompts)
    together = adapter.forward(adapter.embed(batch), batch).logits
    for i, one in enumerate(prompts):
        enc = adapter.encode(one)
        assert close(together[i], adapter.forward(adapter.embed(enc), enc).logits[0], 1e-5)


@pytest.mark.parametrize("contrast", [None, " movie"])
def test_gradients_equal_per_step_autograd(lm64, contrast):
    adapter, model, tok = lm64
    ex = explain(adapter, ["gradient", "grad_x_input"], generate={"max_new_tokens": 5}, contrast=contrast)
    result, P = ex.result, ex.result["prompt_length"]
    new = result["generation"]["token_ids"]
    src, dec = sides(model, tok, new)
    assert P == len(src) + 1 and len(result["tokens"]) == P + len(new)
    b = None if contrast is None else tok(contrast, add_special_tokens=False)["input_ids"][0]
    src_x, dec_x = embeddings(model, src, "encoder"), embeddings(model, dec, "decoder")
    x = torch.cat([src_x, dec_x], 1)[0]
    grads = ex.tensors["gradient"]["gradient"]
    for s, y in enumerate(new):
        ref = reference_gradient(model, src_x, dec_x, s, y, b)
        assert close(grads[s, :P + s], ref)
        assert int(torch.count_nonzero(grads[s, P + s:])) == 0  # later decoder tokens: exact zeros
        assert close(result["methods"]["gradient"]["scores"][s][:P + s], ref.abs().mean(-1))
        assert result["methods"]["gradient"]["scores"][s][P + s:] == [None] * (len(new) - s)
        assert close(result["methods"]["grad_x_input"]["scores"][s][:P + s], (ref * x[:P + s]).sum(-1))
        with torch.no_grad():
            p = model(inputs_embeds=src_x, decoder_inputs_embeds=dec_x[:, :s + 1]).logits[0, -1].softmax(-1)[y]
        assert result["generation"]["probabilities"][s] == pytest.approx(float(p), rel=1e-5)
        assert result["methods"]["gradient"]["faithfulness"][s]["probability"] == pytest.approx(float(p), rel=1e-4)


@pytest.mark.parametrize("baseline", ["zero", "mask"])
def test_integrated_gradients_equal_an_independent_quadrature(lm64, baseline):
    adapter, model, tok = lm64
    steps = 8
    ex = explain(adapter, ["integrated_gradients"], continuation=CONTINUATION,
                 params={"integrated_gradients": {"steps": steps, "internal_batch_size": 5, "baseline": baseline}})
    result, P = ex.result, ex.result["prompt_length"]
    new = tok(CONTINUATION, add_special_tokens=False)["input_ids"]
    assert result["generation"]["token_ids"] == new
    src, dec = sides(model, tok, new)
    specials = set(tok.all_special_ids)
    # the "mask" baseline: every ordinary token replaced by the tokenizer's <pad> (it has no <unk>), specials kept
    reference = [i if baseline == "mask" and i in specials else PAD for i in src + dec]
    n = len(src)
    x = torch.cat([embeddings(model, src, "encoder"), embeddings(model, dec, "decoder")], 1)
    x0 = torch.cat([embeddings(model, reference[:n], "encoder"), embeddings(model, reference[n:], "decoder")], 1)
    if baseline == "zero":
        x0 = torch.zeros_like(x)
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    for s, y in enumerate(new):
        total = 0.0
        for a, w in zip((nodes + 1) / 2, weights / 2, strict=True):
            point = x0 + float(a) * (x - x0)
            total = total + w * reference_gradient(model, point[:, :n], point[:, n:], s, y)
        ref = ((x - x0)[0, :P + s] * total).sum(-1)
        assert close(result["methods"]["integrated_gradients"]["scores"][s][:P + s], ref)


def test_occlusion_equals_leaving_each_token_out(lm):
    adapter, model, tok = lm
    ex = explain(adapter, ["occlusion"], continuation=CONTINUATION)
    result, P = ex.result, ex.result["prompt_length"]
    src, dec = sides(model, tok, result["generation"]["token_ids"])
    ids, specials = src + dec, set(tok.all_special_ids)

    def logit(seq: list[int], s: int, y: int) -> float:
        return float(model(input_ids=torch.tensor([seq[:len(src)]]),
                           decoder_input_ids=torch.tensor([seq[len(src):P + s]])).logits[0, -1, y])

    with torch.no_grad():
        for s, y in enumerate(result["generation"]["token_ids"]):
            full = logit(ids, s, y)
            for t in range(P + s):
                if ids[t] in specials:  # never occluded
                    assert result["methods"]["occlusion"]["scores"][s][t] == 0.0
                    continue
                left_out = [PAD if u == t else i for u, i in enumerate(ids)]
                assert result["methods"]["occlusion"]["scores"][s][t] == pytest.approx(full - logit(left_out, s, y),
                                                                                        rel=1e-4, abs=1e-5)


def test_attention_rollout_follows_the_encoder_then_each_decoder_block(lm):
    """Rollout composes the maps as information flows: the encoder's blocks, then each decoder block's
    self-attention and cross-attention (which reads the encoder's last states), recomputed here from the model's
    own attention outputs."""
    adapter, model, tok = lm
    ex = explain(adapter, ["attention_rollout"], continuation=CONTINUATION)
    doc, P = ex.result["methods"]["attention_rollout"], ex.result["prompt_length"]
    src, dec = sides(model, tok, tok(CONTINUATION, add_special_tokens=False)["input_ids"])
    n, T, r = len(src), len(src) + len(dec), doc["residual"]
    with torch.no_grad():
        out = model(input_ids=torch.tensor([src]), decoder_input_ids=torch.tensor([dec]), output_attentions=True)

    def mixing(attention: torch.Tensor, rows: slice, columns: slice) -> torch.Tensor:
        """One map's T×T step: the residual, plus the head-averaged attention where the map has rows."""
        a = torch.zeros(T, T, dtype=torch.float64)
        a[rows, columns] = attention[0].double().mean(0)
        a = r * torch.eye(T, dtype=torch.float64) + (1 - r) * a
        return a / a.sum(-1, keepdim=True)

    source, target = slice(0, n), slice(n, T)
    flow = torch.eye(T, dtype=torch.float64)
    for attention in out.encoder_attentions:
        flow = mixing(attention, source, source) @ flow
    for own, cross in zip(out.decoder_attentions, out.cross_attentions, strict=True):
        flow = mixing(cross, target, source) @ mixing(own, target, target) @ flow
    for s in range(len(dec) - 1):
        assert close(doc["scores"][s][:P + s], flow[P - 1 + s, :P + s])


def test_the_per_layer_and_perturbation_methods_run_in_the_sequence_frame(folders):
    adapter = load_model(folders["bart"])
    ex = explain(adapter, ["lime", "attention", "sigma", "activations"], continuation=CONTINUATION,
                 params={"lime": {"samples": 64}}, layers=["encoder.layer.3", "decoder.layer.1"])
    result, P = ex.result, ex.result["prompt_length"]
    S, methods = len(result["generation"]["token_ids"]), result["methods"]
    for name in ("lime", "attention"):
        assert [sum(v is not None for v in row) for row in methods[name]["scores"]] == [P + s for s in range(S)]
    attention = methods["attention"]
    assert list(attention["layer_rows"]) == adapter.attention_names and attention["figure_layer"] == "cross_attention.2"
    for row in attention["scores"]:  # the last cross-attention: each step's query reads the source alone
        assert sum(row[:P - 1]) == pytest.approx(1.0, rel=1e-5) and not any(row[P - 1:P])
    per_token = [n for n in adapter.layer_names if n != "output"]
    assert sorted(methods["sigma"]["layers"]) == ["decoder.layer.1", "encoder.layer.3"]  # (sigma is slow: two)
    assert sorted(methods["activations"]["norms"]) == sorted(per_token)
    norms = methods["activations"]["norms"]
    assert all(v > 0 for v in norms["encoder.layer.1"][:P - 1]) and not any(norms["encoder.layer.1"][P - 1:])


def test_bundles_are_detected_registered_and_refused(folders, tmp_path):
    from worker.models import model_card, validate_bundle
    from worker.models.base import InputError
    from worker.models.bundle import is_causal_lm, is_seq2seq_lm
    from worker.models.seq2seq_lm import Seq2SeqLMAdapter

    for path in folders.values():
        spec = validate_bundle(path)
        assert spec.kind == "hf" and is_seq2seq_lm(spec.config) and not is_causal_lm(spec.config)
        assert isinstance(load_model(path), Seq2SeqLMAdapter)
        card = model_card(path)
        assert {"gradient", "grad_x_input", "integrated_gradients", "occlusion"} <= set(card["methods"])
        assert card["generative"]["encoder_decoder"] and card["layers"][1] == "encoder.layer.1"
    # an encoder–decoder that AutoModelForSeq2SeqLM does not load (speech) is refused with a reason
    speech = tmp_path / "speech"
    shutil.copytree(folders["bart"], speech)
    config = json.loads((speech / "config.json").read_text())
    (speech / "config.json").write_text(json.dumps({**config, "model_type": "whisper",
                                                    "architectures": ["WhisperForConditionalGeneration"]}))
    assert is_seq2seq_lm(config)
    with pytest.raises(InputError, match="AutoModelForSeq2SeqLM"):
        load_model(speech)


def test_sequence_logits_only_at_the_asked_decoder_positions(folders):
    """The source length comes with the call (P − 1 rows): logits at the asked positions equal the output layer
    there; a source position is refused."""
    import threading

    adapter = load_model(folders["t5"])
    seq = adapter.extend(adapter.encode({"prompt": PROMPT}), [5, 6])
    x = adapter.embed(seq)
    P = seq.segments[0].count(0) + 1
    with torch.no_grad():  # float32 logits of two graph shapes: with 2 torch threads sums reorder by ~1e-6, so 1e-5
        every = adapter.forward(x, seq, capture=["output"])
        at = torch.tensor([P - 1, P, P + 1])
        assert torch.allclose(adapter.sequence_logits(x, at, P), every.layers["output"][:, at], atol=1e-5)
        own = adapter.sequence_logits(x.repeat(2, 1, 1), torch.tensor([[P + 1], [P]]), P)
        assert own.shape[:2] == (2, 1) and torch.allclose(own[:, 0], every.layers["output"][0, [P + 1, P]], atol=1e-5)
        assert torch.allclose(adapter.forward(x, seq).logits, every.logits, atol=1e-5)
        with pytest.raises(ValueError, match="decoder positions"):
            adapter.sequence_logits(x, torch.tensor([P - 2]), P)
    elsewhere = []  # nothing held per thread: another thread (a worker's next job) gets the same
    thread = threading.Thread(target=lambda: elsewhere.append(adapter.sequence_logits(x, at, P).detach()))
    thread.start()
    thread.join()
    assert torch.allclose(elsewhere[0], every.layers["output"][:, at], atol=1e-5)
