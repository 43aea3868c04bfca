"""lime, attention, attention_rollout, sigma and activations on the causal LMs (gpt2-rt, llama-rt), each against an
independent computation written here with plain transformers + numpy (no Lantern code), step by step on the prefix
each step reads; sigma against its own engine's objective (the fit is a minimum), on hidden states checked against
plain transformers'."""
from __future__ import annotations

import numpy as np
import pytest
import safetensors.torch
import torch

from worker.models import bundle_dir, load_model

PROMPT = "the film is a charming and"
CONTINUATION = " funny and sweet ."
MODELS = ("gpt2-rt", "llama-rt")
PER_STEP = ["lime", "attention", "attention_rollout"]


def explain(adapter, methods, figures=False, continuation=CONTINUATION, **kw):
    from worker.methods import ExplainRequest, explain_request

    request = ExplainRequest(inputs={"prompt": PROMPT, "continuation": continuation}, methods=methods, **kw)
    return explain_request(adapter, request, figures=figures)


@pytest.fixture(scope="module", params=MODELS)
def case(request):
    """(name, adapter, plain model, token ids, P, S, the explanation with every new method)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = request.param
    model = AutoModelForCausalLM.from_pretrained(bundle_dir(name), local_files_only=True, use_safetensors=True,
                                                 attn_implementation="eager").eval().requires_grad_(False)
    tok = AutoTokenizer.from_pretrained(bundle_dir(name), local_files_only=True)
    prompt, new = tok(PROMPT)["input_ids"], tok(CONTINUATION, add_special_tokens=False)["input_ids"]
    adapter = load_model(name, device="cpu")
    ex = explain(adapter, [*PER_STEP, "sigma", "activations"], layers=["layer.2", "layer.4"], seed=3,
                 params={"lime": {"samples": 60, "unit": "token"}, "sigma": {"max_steps": 80}})
    return name, adapter, model, tok, prompt + new, len(prompt), len(new), ex


def rows_equal(doc_rows, expected, P, atol=1e-6):
    """doc_rows: S×T JSON rows (null at positions ≥ P+s); expected: per step the P+s values."""
    assert len(doc_rows) == len(expected)
    for s, (row, want) in enumerate(zip(doc_rows, expected, strict=True)):
        assert all(v is None for v in row[P + s:]), s
        np.testing.assert_allclose(np.array(row[:P + s], dtype=float), np.asarray(want, dtype=float), atol=atol,
                                   rtol=0)


def test_attention_rows_equal_output_attentions(case):
    _, adapter, model, _, ids, P, S, ex = case
    with torch.no_grad():
        maps = model(input_ids=torch.tensor([ids]), output_attentions=True).attentions  # L × (1×H×T×T)
    part = ex.result["methods"]["attention"]
    assert part["view"] == "generation" and part["figure_layer"] == f"attention.{len(maps)}"
    assert "layers" not in part  # a classifier's attention lists layer names under `layers`: one type per key
    for k, a in enumerate(maps, 1):
        average = a[0].mean(0)
        rows_equal(part["layer_rows"][f"attention.{k}"], [average[P + s - 1, :P + s] for s in range(S)], P)
    last = maps[-1][0].mean(0)
    rows_equal(part["scores"], [last[P + s - 1, :P + s] for s in range(S)], P)
    stacked = torch.stack([a[0] for a in maps])  # L×H×T×T
    assert torch.allclose(ex.tensors["attention"]["attention"], stacked[:, :, P - 1:P - 1 + S], atol=1e-6)
    assert part["shape"] == [len(maps), maps[0].shape[1], S, len(ids)]


def test_attention_figure_layer_picks_the_scored_layer(case):
    _, adapter, model, _, ids, P, S, _ = case
    with torch.no_grad():
        second = model(input_ids=torch.tensor([ids]), output_attentions=True).attentions[1][0].mean(0)
    part = explain(adapter, ["attention"], params={"attention": {"figure_layer": "attention.2"}}).result["methods"]
    rows_equal(part["attention"]["scores"], [second[P + s - 1, :P + s] for s in range(S)], P)


def test_rollout_rows_equal_a_numpy_rollout(case):
    _, _, model, _, ids, P, S, ex = case
    with torch.no_grad():
        maps = model(input_ids=torch.tensor([ids]), output_attentions=True).attentions
    T = len(ids)
    flow = np.eye(T)
    for a in maps:  # Abnar & Zuidema: 0.5 I + 0.5 head average, rows renormalised, multiplied bottom-up
        step = 0.5 * np.eye(T) + 0.5 * a[0].double().mean(0).numpy()
        flow = (step / step.sum(-1, keepdims=True)) @ flow
    part = ex.result["methods"]["attention_rollout"]
    rows_equal(part["scores"], [flow[P + s - 1, :P + s] for s in range(S)], P)
    assert all(abs(sum(row[:P + s]) - 1) < 1e-9 for s, row in enumerate(part["scores"]))


def independent_lime(model, ids, P, S, special, mask_id, design, width=25.0, alpha=1.0, contrast=None):
    """Per step: the prefix of P+s tokens masked by each design row (features = the non-special tokens), p(y_s)
    (minus p(b) with a contrast token b) by a forward pass over that prefix alone, and LIME's weighted ridge solved
    as one augmented least squares."""
    features = [t for t in range(len(ids)) if not special[t]]
    out = []
    for s in range(S):
        read = [f for f, t in enumerate(features) if t < P + s]
        prefixes = [[mask_id if t in features and row[features.index(t)] == 0 else i for t, i in enumerate(ids[:P + s])]
                    for row in design]
        with torch.no_grad():  # every masked prefix of this step in one batch (same length, no padding)
            logits = model(input_ids=torch.tensor(prefixes)).logits[:, -1].double()
        p = logits.softmax(-1)
        y = (p[:, ids[P + s]] - (p[:, contrast] if contrast is not None else 0.0)).tolist()
        z = design[:, read].astype(float)
        cosine = 1 - z.sum(1) / (np.maximum(np.linalg.norm(z, axis=1), 1e-12) * np.sqrt(len(read)))
        w = np.sqrt(np.exp(-((100 * cosine) ** 2) / width ** 2))
        a = np.vstack([np.sqrt(w)[:, None] * np.hstack([np.ones((len(z), 1)), z]),
                       np.hstack([np.zeros((len(read), 1)), np.sqrt(alpha) * np.eye(len(read))])])
        b = np.concatenate([np.sqrt(w) * np.array(y), np.zeros(len(read))])
        coef = np.linalg.lstsq(a, b, rcond=None)[0]
        out.append({features[f]: c for f, c in zip(read, coef[1:], strict=True)})
    return out


def test_lime_each_step_equals_an_independent_fit(case):
    _, adapter, model, tok, ids, P, S, ex = case
    part, tensors = ex.result["methods"]["lime"], ex.tensors["lime"]
    design = tensors["design"].numpy()
    assert design.shape == (60, sum(not s for s in ex.result["special"])) and design[0].all()
    mask_id = next(i for i in (tok.unk_token_id, tok.pad_token_id, tok.eos_token_id) if i is not None)
    expected = independent_lime(model, ids, P, S, ex.result["special"], mask_id, design)
    for s, want in enumerate(expected):
        got = part["scores"][s]
        assert all(v is None for v in got[P + s:])
        assert all(got[t] == 0.0 for t in range(P + s) if t not in want)  # specials score 0
        np.testing.assert_allclose([got[t] for t in want], list(want.values()), atol=2e-6, rtol=0)
    assert part["features"] == [len(w) for w in expected] and len(part["r2"]) == len(part["intercept"]) == S


def test_lime_and_occlusion_with_a_contrast_explain_p_y_minus_p_b(case):
    """Why y_s rather than b (Yin & Neubig 2022): LIME regresses p(y_s) − p(b); occlusion (score probability) drops
    p(y_s) − p(b) — each against the step's own prefixes run here."""
    _, adapter, model, tok, ids, P, S, _ = case
    (b,) = tok(" the", add_special_tokens=False)["input_ids"]
    ex = explain(adapter, ["lime", "occlusion"], contrast=" the", score="probability", seed=4,
                 params={"lime": {"samples": 40, "unit": "token"}})
    special = ex.result["special"]
    mask_id = next(i for i in (tok.unk_token_id, tok.pad_token_id, tok.eos_token_id) if i is not None)
    expected = independent_lime(model, ids, P, S, special, mask_id, ex.tensors["lime"]["design"].numpy(), contrast=b)
    lime, occlusion = ex.result["methods"]["lime"]["scores"], ex.result["methods"]["occlusion"]["scores"]
    for s, want in enumerate(expected):
        np.testing.assert_allclose([lime[s][t] for t in want], list(want.values()), atol=2e-6, rtol=0)
        prefixes = [ids[:P + s]] + [[mask_id if u == t else i for u, i in enumerate(ids[:P + s])] for t in want]
        with torch.no_grad():
            p = model(input_ids=torch.tensor(prefixes)).logits[:, -1].double().softmax(-1)
        score = p[:, ids[P + s]] - p[:, b]
        np.testing.assert_allclose([occlusion[s][t] for t in want], (score[0] - score[1:]).numpy(), atol=1e-6,
                                   rtol=1e-4)


def test_lime_is_seeded_and_word_units_sum_to_the_coefficients(case):
    _, adapter, *_ = case
    a, b, c = (explain(adapter, ["lime"], seed=seed, params={"lime": {"samples": 30}}) for seed in (5, 5, 6))
    assert torch.equal(a.tensors["lime"]["design"], b.tensors["lime"]["design"])
    assert not torch.equal(a.tensors["lime"]["design"], c.tensors["lime"]["design"])
    assert a.result["methods"]["lime"]["scores"] == b.result["methods"]["lime"]["scores"]
    part, coefficients = a.result["methods"]["lime"], a.tensors["lime"]["coefficients"].double()
    words = [g for g in a.result["words"] if not all(a.result["special"][t] for t in g)]
    for s, row in enumerate(part["word_scores"]):  # word score = the word's coefficient (split over its tokens)
        index = {tuple(g): f for f, g in enumerate(words)}
        for w, group in enumerate(a.result["words"]):
            if row[w] is not None and tuple(group) in index:
                assert row[w] == pytest.approx(float(coefficients[s, index[tuple(group)]]), abs=1e-6)


def test_activations_norms_equal_hidden_state_norms(case):
    _, _, model, _, ids, P, S, ex = case
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        embedded = model.get_input_embeddings()(torch.tensor([ids]))[0]
    part = ex.result["methods"]["activations"]
    L = model.config.num_hidden_layers
    assert list(part["norms"]) == ["embeddings", *(f"layer.{k}" for k in range(1, L + 1))]
    np.testing.assert_allclose(part["norms"]["embeddings"], embedded.double().norm(dim=-1).numpy(), rtol=1e-6)
    for k in range(1, L + 1):
        np.testing.assert_allclose(part["norms"][f"layer.{k}"], out.hidden_states[k][0].double().norm(dim=-1).numpy(),
                                   rtol=1e-5)
    top = out.hidden_states[L][0][:, part["neurons"]].T  # the classifier part: traces of the deepest layer
    assert part["layer"] == f"layer.{L}"
    np.testing.assert_allclose(part["traces"], top.numpy(), atol=1e-5)
    assert ex.tensors["activations"]["norms"].shape == (L + 1, P + S)


def test_sigma_reads_the_decoder_states_and_its_fit_is_a_minimum(case):
    from worker.methods.sigma import settings_for
    from worker.sigma import View, load_stats, objective
    from worker.sigma.engine import element_weights, states

    _, adapter, model, _, ids, P, S, ex = case
    part = ex.result["methods"]["sigma"]
    assert list(part["layers"]) == ["layer.2", "layer.4"] and part["timestamps"] == {}
    assert all(len(entry["sigma"]) == P + S and len(entry["word_scores"]) == len(ex.result["words"])
               for entry in part["layers"].values())
    assert "scores" not in part and "faithfulness" not in part  # per layer × token, not per step

    encoding = adapter.extend(adapter.encode({"prompt": PROMPT}), ids[P:])
    x = adapter.embed(encoding).detach()
    views = [View("layer.2"), View("layer.4")]
    with torch.no_grad():
        raw = states(adapter, x, encoding, views)
        plain = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    for h, k in zip(raw, (2, 4), strict=True):  # the engine's states are the model's hidden states
        assert torch.allclose(h, plain[k], atol=1e-5)
    settings = settings_for(adapter, {**part["params"], "eval_samples": 128})
    weights, used = element_weights(encoding, views, raw, part["params"]["normalization"], load_stats(adapter))
    assert used == part["normalization"]
    s = [h.reshape(1, -1) for h in raw]
    fitted = torch.tensor([part["layers"][v.layer]["sigma"] for v in views], dtype=x.dtype)[:, None]  # V×1×T
    bound = settings.bound
    scaled = [fitted, (fitted * 2).clamp(max=bound), fitted * 0.5]  # the fit, every σ doubled / halved
    values = objective(adapter, x, encoding, views, torch.stack(scaled), s, weights, settings,
                       torch.Generator().manual_seed(11))  # G×V×1, the same draws for every start
    assert (values[1:] > values[:1]).all(), values[:, :, 0]
    last = fitted[1:]  # layer.4 alone: one token's σ doubled or halved, the others kept
    starts = [last]
    for t in range(P + S):
        for factor in (2.0, 0.5):
            one = last.clone()
            one[..., t] = (one[..., t] * factor).clamp(max=bound)
            starts.append(one)
    values = objective(adapter, x, encoding, views[1:], torch.stack(starts), s[1:], weights[1:], settings,
                       torch.Generator().manual_seed(12))
    assert (values[1:] >= values[:1] - 1e-4 * values[:1].abs()).all(), values[:, 0, 0]


@pytest.mark.parametrize(("params", "says"), [
    ({"attention_rollout": {"query": "first"}}, "query"),
    ({"attention": {"generate": 3}}, "generate"),
    ({"lime": {"stability": True}}, "stability"),
])
def test_params_without_meaning_on_lms_are_refused(params, says):
    from worker.methods import RequestError, validate
    from worker.methods.request import ExplainRequest

    adapter = load_model("gpt2-rt")
    with pytest.raises(RequestError) as e:
        validate(adapter, ExplainRequest(inputs={"prompt": PROMPT}, methods=list(params), params=params,
                                         generate={"max_new_tokens": 2}))
    assert e.value.field == "params" and says in e.value.detail and list(params) == list(e.value.errors["params"])


def test_params_without_meaning_on_lms_follow_their_schema_default(monkeypatch):
    """The one accepted value is the schema's default, read from it: a changed default moves what is refused."""
    from worker.methods import RequestError, validate
    from worker.methods.catalog import registry
    from worker.methods.request import ExplainRequest

    adapter = load_model("gpt2-rt")

    def check(stability: bool) -> None:
        validate(adapter, ExplainRequest(inputs={"prompt": PROMPT}, methods=["lime"],
                                         params={"lime": {"stability": stability}}, generate={"max_new_tokens": 2}))

    check(False)
    monkeypatch.setattr(registry()["lime"].params._declared_fields["stability"], "load_default", True)
    check(True)
    with pytest.raises(RequestError, match="stability"):
        check(False)


def test_result_page_and_figures_render_the_new_methods():
    from worker.render.page import result_html

    adapter = load_model("gpt2-rt", device="cpu")
    ex = explain(adapter, [*PER_STEP, "sigma", "activations"], figures=True, continuation=" funny",
                 params={"lime": {"samples": 20}, "sigma": {"max_steps": 5, "eval_samples": 16}})
    assert {f"{m}.png" for m in [*PER_STEP, "sigma", "activations"]} | {"activations-norms.png"} <= set(ex.figures)
    assert all(png.startswith(b"\x89PNG") for png in ex.figures.values())
    for tensors in ex.tensors.values():  # what the runner stores: no two tensors of a method may share memory
        assert safetensors.torch.load(safetensors.torch.save(tensors)).keys() == tensors.keys()
    text = result_html({"id": "j1", "status": "succeeded", "result": ex.result,
                        "request": {"inputs": {"prompt": PROMPT, "continuation": " funny"}}})
    for m in PER_STEP:
        assert f"<figcaption>{m}: steps (the token explained) × tokens</figcaption>" in text
    assert '<section class="other sigma"><h3>sigma</h3>' in text and "layer.4" in text
    assert '<section class="other other"><h3>activations</h3>' in text


def test_the_methods_offered_on_lms_are_the_ones_generation_runs():
    from worker.capabilities import GENERATION_METHODS
    from worker.methods.generation import RUNS

    assert sorted(GENERATION_METHODS) == sorted(RUNS)
