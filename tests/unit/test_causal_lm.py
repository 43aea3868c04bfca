"""The causal LM adapter and the per-step attributions on the shipped gpt2-rt / llama-rt folders, against independent
computations written here with plain transformers + torch.autograd (no Lantern code): one step at a time, on the
prefix that step reads."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from worker.models import bundle_dir, load_model

PROMPT = "the film is a charming and"
MODELS = ("gpt2-rt", "llama-rt")


@pytest.fixture(scope="module", params=MODELS)
def lm(request):
    return request.param, load_model(request.param, device="cpu")


@pytest.fixture(scope="module")
def plain():
    """{name: (model, tokenizer)} loaded by plain transformers from the zoo folders."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = {}
    for name in MODELS:
        model = AutoModelForCausalLM.from_pretrained(bundle_dir(name), local_files_only=True, use_safetensors=True,
                                                     attn_implementation="eager")
        out[name] = (model.eval().requires_grad_(False), AutoTokenizer.from_pretrained(bundle_dir(name),
                                                                                         local_files_only=True))
    return out


def explain(adapter, methods, **kw):
    from worker.methods import ExplainRequest, explain_request

    inputs = {"prompt": kw.pop("prompt", PROMPT)}
    if "continuation" in kw:
        inputs["continuation"] = kw.pop("continuation")
    request = ExplainRequest(inputs=inputs, methods=methods, **kw)
    return explain_request(adapter, request, figures=False)


def reference_gradient(model, ids: list[int], P: int, s: int, target: int, point=None, contrast=None):
    """∂ logit_target(position P+s−1) / ∂ embeddings of the P+s tokens step s reads (or at `point`)."""
    x = model.get_input_embeddings()(torch.tensor([ids[:P + s]])) if point is None else point[:, :P + s]
    x = x.detach().requires_grad_(True)
    logits = model(inputs_embeds=x).logits[0, -1]
    score = logits[target] - (logits[contrast] if contrast is not None else 0.0)
    (grad,) = torch.autograd.grad(score, x)
    return grad[0]


def close(a, b, rtol=1e-5):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) <= rtol


def test_plain_folders_load_and_tokens_match(lm, plain):
    name, adapter = lm
    model, tok = plain[name]
    enc = adapter.encode({"prompt": PROMPT})
    assert enc.input_ids[0].tolist() == tok(PROMPT)["input_ids"]
    assert enc.input_ids[0, 0] == tok.bos_token_id and enc.special[0][0]
    assert "".join(enc.tokens[0][1:]) == PROMPT
    assert adapter.layer_names == ["embeddings", *(f"layer.{k}" for k in range(1, model.config.num_hidden_layers + 1)),
                                   "output"]
    assert adapter.attention_names[0] == "attention.1"


def test_greedy_generation_equals_an_argmax_loop(lm, plain):
    name, adapter = lm
    model, tok = plain[name]
    ids = tok(PROMPT)["input_ids"]
    expected = []
    with torch.no_grad():
        for _ in range(8):
            nxt = int(model(input_ids=torch.tensor([ids + expected])).logits[0, -1].argmax())
            expected.append(nxt)
            if nxt == tok.eos_token_id:
                break
    assert adapter.generate(ids, 8) == expected


def test_gradients_equal_per_step_autograd(lm, plain):
    name, adapter = lm
    model, _ = plain[name]
    ex = explain(adapter, ["gradient", "grad_x_input"], generate={"max_new_tokens": 6})
    result, P = ex.result, ex.result["prompt_length"]
    ids = adapter.encode({"prompt": PROMPT}).input_ids[0].tolist() + result["generation"]["token_ids"]
    grads = ex.tensors["gradient"]["gradient"]
    x = model.get_input_embeddings()(torch.tensor([ids]))[0]
    for s, y in enumerate(result["generation"]["token_ids"]):
        ref = reference_gradient(model, ids, P, s, y)
        assert close(grads[s, :P + s], ref)
        assert int(torch.count_nonzero(grads[s, P + s:])) == 0  # unread positions: exact zeros
        assert close(result["methods"]["gradient"]["scores"][s][:P + s], ref.abs().mean(-1))
        assert result["methods"]["gradient"]["scores"][s][P + s:] == [None] * (len(ids) - P - s)
        assert close(result["methods"]["grad_x_input"]["scores"][s][:P + s], (ref * x[:P + s]).sum(-1))


def test_integrated_gradients_equal_an_independent_quadrature(lm, plain):
    name, adapter = lm
    model, _ = plain[name]
    steps = 16
    ex = explain(adapter, ["integrated_gradients"], continuation=" good film",
                 params={"integrated_gradients": {"steps": steps, "internal_batch_size": 7}})
    result, P = ex.result, ex.result["prompt_length"]
    ids = adapter.encode({"prompt": PROMPT}).input_ids[0].tolist() + result["generation"]["token_ids"]
    x = model.get_input_embeddings()(torch.tensor([ids]))
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    alphas, weights = (nodes + 1) / 2, weights / 2
    for s, y in enumerate(result["generation"]["token_ids"]):
        total = sum(w * reference_gradient(model, ids, P, s, y, point=a * x) for a, w in zip(alphas, weights,
                                                                                          strict=True))
        ref = (x[0, :P + s] * total).sum(-1)
        assert close(result["methods"]["integrated_gradients"]["scores"][s][:P + s], ref)
        # the completeness gap, recomputed: Σ attribution − (S(x) − S(0)). (Large on llama-rt with 16 steps: with no
        # position embeddings its zero baseline puts RMSNorm at its singular point, so the integrand peaks at α≈0.)
        with torch.no_grad():
            ends = model(inputs_embeds=torch.cat([x[:, :P + s], torch.zeros_like(x[:, :P + s])])).logits[:, -1, y]
        gap = float(ref.sum() - (ends[0] - ends[1]))
        assert result["methods"]["integrated_gradients"]["delta"][s] == pytest.approx(gap, rel=1e-4, abs=1e-4)


def test_occlusion_equals_masking_each_token_in_turn(plain):
    adapter = load_model("gpt2-rt", device="cpu")
    model, tok = plain["gpt2-rt"]
    ex = explain(adapter, ["occlusion"], continuation=" good film")
    result, P = ex.result, ex.result["prompt_length"]
    ids = tok(PROMPT)["input_ids"] + result["generation"]["token_ids"]
    with torch.no_grad():
        for s, y in enumerate(result["generation"]["token_ids"]):
            full = model(input_ids=torch.tensor([ids[:P + s]])).logits[0, -1, y]
            for t in range(1, P + s):  # <s> (special) is never occluded
                masked = list(ids[:P + s])
                masked[t] = tok.pad_token_id
                drop = full - model(input_ids=torch.tensor([masked])).logits[0, -1, y]
                assert result["methods"]["occlusion"]["scores"][s][t] == pytest.approx(float(drop), rel=1e-4,
                                                                                        abs=1e-5)


def test_contrast_is_the_difference_of_the_two_scores(plain):
    adapter = load_model("gpt2-rt", device="cpu")
    model, tok = plain["gpt2-rt"]
    ex = explain(adapter, ["gradient"], continuation=" film", contrast=" movie")
    P = ex.result["prompt_length"]
    ids = tok(PROMPT)["input_ids"] + tok(" film", add_special_tokens=False)["input_ids"]
    (b,) = tok(" movie", add_special_tokens=False)["input_ids"]
    ref = reference_gradient(model, ids, P, 0, ids[P], contrast=b)
    assert close(ex.tensors["gradient"]["gradient"][0, :P], ref)
    assert ex.result["contrast"]["token_ids"] == [b]


def test_result_document_shape(lm):
    _, adapter = lm
    ex = explain(adapter, ["gradient", "activations"], generate={"max_new_tokens": 4}, score="probability")
    r = ex.result
    assert all(part["seconds"] > 0 for part in r["methods"].values())  # per-layer methods too (docs/api.md)
    S, P = len(r["generation"]["token_ids"]), r["prompt_length"]
    assert r["kind"] == "generation" and len(r["tokens"]) == P + S and 1 <= S <= 4
    part = r["methods"]["gradient"]
    assert len(part["scores"]) == S and all(len(row) == P + S for row in part["scores"])
    assert len(part["word_scores"]) == S and all(len(row) == len(r["words"]) for row in part["word_scores"])
    assert len(part["faithfulness"]) == S
    for s, faith in enumerate(part["faithfulness"]):
        assert faith["probability"] == pytest.approx(r["generation"]["probabilities"][s], rel=1e-4)
        assert {"comprehensiveness", "sufficiency", "random", "lift"} <= set(faith)
    assert all(0.0 < p <= 1.0 for p in r["generation"]["probabilities"])


@pytest.mark.parametrize(("change", "field"), [
    ({"prompt": "word " * 40}, "inputs"),
    ({"generate": {"max_new_tokens": 9}}, "generate"),
    ({"methods": ["smoothgrad"]}, "methods"),
    ({"methods": ["occlusion"], "params": {"occlusion": {"window": 2}}}, "params"),
    ({"contrast": "certainly-not-one-token-xyz"}, "contrast"),
    ({"contrast": ["a", "b"]}, "contrast"),  # a contrast per step needs a continuation
    ({"continuation": " good", "generate": {"max_new_tokens": 2}}, "generate"),
])
def test_bad_generation_requests_are_refused(change, field):
    from worker.methods import Limits, RequestError, validate
    from worker.methods.request import ExplainRequest

    adapter = load_model("gpt2-rt")
    doc = {"inputs": {"prompt": PROMPT}, "methods": ["gradient"], "generate": {"max_new_tokens": 4}}
    if "prompt" in change or "continuation" in change:
        doc["inputs"] = {"prompt": change.get("prompt", PROMPT),
                         **({"continuation": change["continuation"]} if "continuation" in change else {})}
    doc.update({k: v for k, v in change.items() if k not in ("prompt", "continuation")})
    with pytest.raises(RequestError) as e:
        validate(adapter, ExplainRequest.from_document(doc), Limits(max_prompt_tokens=32, max_new_tokens=8))
    assert e.value.field == field


def test_a_classifier_refuses_generation_fields():
    from worker.methods import RequestError, validate
    from worker.methods.request import ExplainRequest

    with pytest.raises(RequestError):
        validate(load_model("cnn-rt"), ExplainRequest(inputs={"text": "a fine film"}, methods=["gradient"],
                                                      generate={"max_new_tokens": 3}))


# ------------------------------------------------------------------------------------ logits only where they are read
WIDE = 50_000  # GPT-2's vocabulary size, about: T×V logits of long prompts are what got workers OOM-killed


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A tiny random GPT-2 with V = 50,000 under gpt2-rt's tokenizer (its ids are < 4,096)."""
    import shutil

    from transformers import GPT2Config, GPT2LMHeadModel

    path = tmp_path_factory.mktemp("wide-gpt2")
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(bundle_dir("gpt2-rt") / name, path / name)
    config = GPT2Config.from_pretrained(bundle_dir("gpt2-rt"), vocab_size=WIDE, n_embd=16, n_layer=2, n_head=2)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(path)
    return load_model(path, device="cpu")


def head_shapes(adapter, run):
    """(run's value, the shape of every output of the model's vocabulary head while it ran)."""
    shapes = []
    hook = adapter.model.get_output_embeddings().register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
    try:
        return run(), shapes
    finally:
        hook.remove()


def test_sequence_logits_and_the_trace_compute_only_the_read_positions(wide):
    enc = wide.extend(wide.encode({"prompt": PROMPT}), [5, 6, 7])
    x = wide.embed(enc)
    T = x.shape[1]
    with torch.no_grad():
        every = wide.model(inputs_embeds=x).logits  # 1×T×V, for reference
        at, shapes = head_shapes(wide, lambda: wide.sequence_logits(x.repeat(2, 1, 1), torch.tensor([T - 3, T - 2]), 0))
        assert at.shape == (2, 2, WIDE) and shapes == [(2, 2, WIDE)]
        assert torch.allclose(at[1], every[0, T - 3:T - 1], atol=1e-5)
        own = wide.sequence_logits(x.repeat(2, 1, 1), torch.tensor([[T - 2], [T - 4]]), 0)  # each row its own
        assert own.shape == (2, 1, WIDE) and torch.allclose(own[:, 0], every[0, [T - 2, T - 4]], atol=1e-5)
        batch = wide.encode([{"prompt": PROMPT}, {"prompt": "a film"}])  # right-padded: the last real token
        trace, shapes = head_shapes(wide, lambda: wide.forward(wide.embed(batch), batch))
        assert shapes == [(2, 1, WIDE)]
        short = len(batch.tokens[1])
        alone = wide.model(input_ids=batch.input_ids[1:, :short]).logits[0, -1]
        assert torch.allclose(trace.logits[1], alone, atol=1e-5)
        assert wide.forward(wide.embed(batch), batch, capture=["output"]).layers["output"].shape[1] == batch.input_ids.shape[1]


def test_every_pass_of_a_job_holds_at_most_the_steps_logits(wide, monkeypatch):
    """The head never sees T positions (only S steps, or 1 for faithfulness), and LIME/occlusion passes shrink under
    the logits budget with the same numbers."""
    from worker.methods import generation_steps

    methods = ["gradient", "integrated_gradients", "occlusion", "lime"]
    params = {"lime": {"samples": 48, "batch_size": 48}, "occlusion": {"batch_size": 48},
              "integrated_gradients": {"steps": 4}}
    ex, shapes = head_shapes(wide, lambda: explain(wide, methods, continuation=" good film and", params=params))
    S, T = len(ex.result["generation"]["token_ids"]), len(ex.result["tokens"])
    assert S >= 3 and T > S + 1
    assert {shape[1] for shape in shapes} == {1, S}  # a step per row, every step, or the last token (faithfulness)
    assert max(shape[0] for shape in shapes if shape[1] == S) == 48  # every copy of LIME's samples in one pass
    monkeypatch.setattr(generation_steps, "LOGIT_BUDGET", 8 * (S + 1) * WIDE)
    capped, shapes = head_shapes(wide, lambda: explain(wide, methods, continuation=" good film and", params=params))
    assert max(shape[0] for shape in shapes if shape[1] == S) == 8
    for name in methods:
        assert np.allclose(np.array(capped.result["methods"][name]["scores"], dtype=float),
                           np.array(ex.result["methods"][name]["scores"], dtype=float), rtol=1e-5, atol=1e-7,
                           equal_nan=True)


def test_a_model_that_ignores_logits_to_keep_is_read_in_full():
    from worker.models.causal_lm import keep_mode

    table = torch.randn(6, 5)
    assert keep_mode(lambda ids, **kw: table[ids], torch.device("cpu")) == "none"  # takes the argument, ignores it
    assert keep_mode(lambda ids: table[ids], torch.device("cpu")) == "none"  # refuses it
    assert keep_mode(lambda ids, logits_to_keep=0: table[ids][:, logits_to_keep] if torch.is_tensor(logits_to_keep)
                     and logits_to_keep.ndim == 1 else table[ids], torch.device("cpu")) == "shared"


def same_tree(a, b, tol=1e-6) -> bool:
    """Nested dicts/lists equal, numbers within `tol` (absolute and relative)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_tree(a[k], b[k], tol) for k in a)
    if isinstance(a, list | tuple):
        return isinstance(b, list | tuple) and len(a) == len(b) and all(same_tree(x, y, tol) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=tol, abs=tol)
    return a == b


def test_faithfulness_of_every_step_at_once_equals_each_step_alone(lm, monkeypatch):
    """One drive of masked rows over the S prefixes gives what faithfulness gives on each prefix alone (bounds
    searched again: the cache emptied)."""
    from worker.methods import aopc_bounds
    from worker.methods import faithfulness as module
    from worker.methods.faithfulness import faithfulness

    _, adapter = lm
    drives, drive = [], module.drive
    monkeypatch.setattr(module, "drive", lambda *a, **kw: drives.append(len(a[3])) or drive(*a, **kw))
    ex = explain(adapter, ["grad_x_input"], continuation=" good film and a", seed=3)
    monkeypatch.setattr(module, "drive", drive)
    r = ex.result
    P, new = r["prompt_length"], r["generation"]["token_ids"]
    assert drives == [len(new)]  # one drive of the masked rows, every step's item in it
    part = r["methods"]["grad_x_input"]
    monkeypatch.setattr(aopc_bounds.CACHE, "items", {})
    prompt = adapter.encode({"prompt": PROMPT})
    for s, y in enumerate(new):
        alone = faithfulness(adapter, adapter.extend(prompt, new[:s]), part["scores"][s][:P + s], torch.tensor([y]), 3)
        batched = dict(part["faithfulness"][s])
        assert alone is not None and same_tree(batched, alone | {"normalized": batched["normalized"]}), s
        # normalized = (AOPC − low) / (high − low) amplifies the float32 rounding of padded passes (~1e-6 seen)
        assert same_tree(batched["normalized"], alone["normalized"], tol=1e-5), s


def test_one_rule_says_which_words_a_step_reads():
    """A word is read once all its tokens are (Steps.reads_group), for the word scores and LIME's features alike: a
    word made of the prompt's last token and the first new one is null at step 0 and read from step 1."""
    import dataclasses

    from worker.methods.generation import method_document
    from worker.methods.generation_steps import StepResult, Steps

    adapter = load_model("gpt2-rt", device="cpu")
    prompt = adapter.encode({"prompt": PROMPT})
    P, new = len(prompt.tokens[0]), [5, 6]
    enc = adapter.extend(prompt, new)
    words = [g for g in enc.words[0] if g[-1] < P - 1] + [[P - 1, P], [P + 1]]
    steps = Steps(dataclasses.replace(enc, words=[words]), P, torch.tensor(new), None)
    assert [steps.reads_group(s, [P - 1, P]) for s in (0, 1)] == [False, True]
    doc = method_document(adapter, steps, StepResult(torch.ones(2, P + 2), {}, {}, ""), {}, 0, 0.0)
    assert [row[-2] is None for row in doc["word_scores"]] == [True, False]
