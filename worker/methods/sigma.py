"""`sigma`: how much information of each input token a layer keeps (Guan et al., ICML 2019, §3.2).

For every requested layer, σ_i per token minimises (engine: :mod:`worker.sigma.engine`, all layers batched)::

    mean over elements of s of E(Φ(x̃) − s)² / σ_S²  −  λ · mean over tokens of log(σ_i / bound),   x̃_i = x_i + N(0, σ_i² I)

Small σ_i: the layer keeps token i (perturbing it changes s); σ_i at the bound: the layer discards it. Every token is
perturbed, specials included (as the authors' code does).

Layers: the request's ``layers``, default every per-token hidden state — ``embeddings`` and the hidden layers in
forward order (for an HF encoder ``embeddings``, ``layer.1`` … ``layer.N``: Guan §5.2 explains hidden layers, and
``embeddings`` is the first of them in docs/api.md, layer names). ``pool`` and ``output`` (Guan §5.1: the state the softmax reads)
are explained when asked for. For a hidden layer s is all real positions × hidden units (padding excluded).
Timestamp mode (Guan Fig. 2): the layers in param ``timestamps`` (e.g. a seq2seq ``decoder``, B×T_dec×H) are explained
once per time step t with s = the state at step t.

Params (names are a contract): ``lambda`` (0.1), ``bound`` (default 10 × std of the model's embedding matrix),
``normalization`` (``std``: per-unit std of the layer over reference inputs, from the bundle's
``sigma_stats.safetensors``; a model without them falls back to ``mean_square``, and the result says so),
``samples`` (noise draws per step per layer), ``max_steps``, ``optimizer`` (``newton``, the default: per-token
fixed-point steps on log σ; ``adam``: Adam on r, σ = bound·sigmoid(r), with ``lr``), ``lr``, ``init``
(``linear``: the closed-form small-noise start from vector–Jacobian products; ``random``: the authors' r ~ N(0, 1);
``half``: σ = bound/2), ``restarts`` (extra starts from ``random``; the lowest re-estimated objective wins, per layer),
``eval_samples`` (noise draws for the final objective), ``timestamps``, ``concepts`` (concept name -> words: word
attributes of Guan Eq. 8–9 per layer, below).

JSON (docs/api.md): ``{"layers": {name: {"sigma": [T], "scores": [T] = −log(σ/bound), "entropy": [T] = K/2·log(2πe) +
K·log σ_i, "sentence_entropy": Σ entropy, "objective", "word_sigma", "word_scores", "word_entropy" (per word: geometric
mean of σ / sums), "start_objectives": [per start], "start": index of the winning start}},
"timestamps": {name: {"steps": [per step: the same fields]}}, "bound", "normalization" (used),
"normalization_fallback" (bool), "embedding_size": K, "basin": {"starts", "rule", "steps", "converged"}}`` plus
``params`` (as requested, filled by ``explain``). With ``concepts``, each layer entry also has, per word (null for
words made only of specials), ``"A_i": [per word]``, ``"A_c": {concept: [per word]}``, ``"r": {concept: [per word]}``
(r_{i,c} = A_i − A_c; p(x'|s) = N(x'; x_i, σ_i² I) with the word's σ; random words = the embedding table).
Tensors: ``sigma.<layer>``, ``scores.<layer>``, ``entropy.<layer>`` (T each); ``sigma.<layer>@steps`` (T_dec×T) in
timestamp mode. Figures: ``sigma.png`` (layers × words information map), ``sigma-timestamps.png`` (steps × tokens),
``sigma-attributes.png`` (with ``concepts``: r_{i,c} per layer for the word with the most information, Fig. 8).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import marshmallow as ma
import torch

from worker.capabilities import Capability
from worker.methods.base import Method, MethodResult, Params, Target
from worker.models.base import Adapter, Encoding, InputError
from worker.models.protocols import EmbeddingTable, offering
from worker.sigma import (
    INITS,
    NORMALIZATIONS,
    OPTIMIZERS,
    Settings,
    View,
    fit,
    load_stats,
    scores,
    token_entropy,
)
from worker.sigma.analysis import word_attributes, word_embedding, word_sigma, word_values

MAX_STEPS = 5000
MAX_CONCEPTS, MAX_CONCEPT_WORDS = 16, 500
HEAD_LAYERS = ("pool", "output")

_FIELDS: dict[str, ma.fields.Field] = {
    "lambda": ma.fields.Float(load_default=0.1, allow_nan=False,
                              validate=ma.validate.Range(0.0, 10.0, min_inclusive=False),
                              metadata={"description": "weight λ of the entropy term"}),
    "bound": ma.fields.Float(load_default=None, allow_none=True, allow_nan=False,
                             validate=ma.validate.Range(0.0, 1e3, min_inclusive=False),
                             metadata={"description": "largest σ; default 10 × std of the embedding matrix"}),
    "normalization": ma.fields.String(load_default="std", validate=ma.validate.OneOf(NORMALIZATIONS),
                                      metadata={"description": "σ_S²: per-unit variance over reference inputs (std) "
                                                               "or the sentence's mean of s² (mean_square)"}),
    "samples": ma.fields.Integer(load_default=4, strict=True, validate=ma.validate.Range(1, 64),
                                 metadata={"description": "noise draws per step and layer"}),
    "max_steps": ma.fields.Integer(load_default=600, strict=True, validate=ma.validate.Range(1, MAX_STEPS),
                                   metadata={"description": "most optimisation steps (stops earlier on convergence)"}),
    "lr": ma.fields.Float(load_default=0.1, allow_nan=False, validate=ma.validate.Range(0.0, 1.0, min_inclusive=False),
                          metadata={"description": "Adam step size on r (σ = bound · sigmoid(r))"}),
    "init": ma.fields.String(load_default="linear", validate=ma.validate.OneOf(INITS),
                             metadata={"description": "first start: linear (closed form from Jacobian norms), "
                                                      "random (authors'), half (σ = bound/2)"}),
    "optimizer": ma.fields.String(load_default="newton", validate=ma.validate.OneOf(OPTIMIZERS),
                                  metadata={"description": "newton: per-token fixed-point steps on log σ (converges "
                                                           "in tens of steps); adam: Adam on r with lr (the authors' "
                                                           "optimiser, many more steps)"}),
    "restarts": ma.fields.Integer(load_default=1, strict=True, validate=ma.validate.Range(1, 8),
                                  metadata={"description": "starts (the 2nd on are random); lowest objective wins"}),
    "eval_samples": ma.fields.Integer(load_default=64, strict=True, validate=ma.validate.Range(16, 4096),
                                      metadata={"description": "noise draws for the reported objective"}),
    "timestamps": ma.fields.List(ma.fields.String(), load_default=list,
                                 metadata={"description": "layers to explain once per time step (Guan Fig. 2)"}),
    "concepts": ma.fields.Dict(keys=ma.fields.String(validate=ma.validate.Length(1, 100)),
                               values=ma.fields.List(ma.fields.String(validate=ma.validate.Length(1, 100)),
                                                     validate=ma.validate.Length(1, MAX_CONCEPT_WORDS)),
                               load_default=dict, validate=ma.validate.Length(0, MAX_CONCEPTS),
                               metadata={"description": "concept name -> its words: adds the word attributes A_i, "
                                                        "A_c and r_{i,c} per layer (Guan Eq. 8-9, Fig. 8)"}),
}


# built from a dict because `lambda`, a parameter name, is a Python keyword; unknown parameters are refused (Params)
SigmaParams: type[ma.Schema] = Params.from_dict(_FIELDS, name="SigmaParams")


def default_layers(adapter: Adapter) -> list[str]:
    return [name for name in adapter.layer_names if name not in HEAD_LAYERS]


def check(adapter: Adapter, params: dict[str, Any]) -> None:
    """What the API checks at submit too: the timestamp layers exist and hold a row per token, and concepts come
    with an embedding table (the request's ``layers`` are checked for every method)."""
    if params.get("concepts") and Capability.EMBEDDING_TABLE not in adapter.capabilities:
        raise InputError(f"{adapter.name} has no embedding table to draw random words from; concepts need one "
                         f"(capability {Capability.EMBEDDING_TABLE})")
    stamps = params.get("timestamps") or ()
    unknown = [n for n in stamps if n not in adapter.layer_names]
    if unknown:
        raise InputError(f"timestamps: unknown layer(s) {unknown}; {adapter.name} has {adapter.layer_names}")
    pooled = [n for n in stamps if not per_token(adapter, n)]
    if pooled:
        raise InputError(f"timestamp mode needs per-token layers; {pooled} hold one vector per input")


def per_token(adapter: Adapter, name: str) -> bool:
    """Whether a layer has a row per token, told from its name and the adapter's capabilities: ``pool`` never; a
    classifier's ``output`` is one row of logits, while a ``sequence_output`` model's (a language model, a seq2seq)
    has one per step."""
    if name == "pool":
        return False
    return name != "output" or Capability.SEQUENCE_OUTPUT in adapter.capabilities


def settings_for(adapter: Adapter, params: dict[str, Any]) -> Settings:
    bound = params.get("bound")
    if bound is None:
        std = adapter.embedding_std()
        if std is None:
            raise InputError(f"{adapter.name} cannot tell its embedding std; give sigma a bound")
        bound = 10.0 * std
    return Settings(lam=params["lambda"], bound=float(bound), normalization=params["normalization"],
                    samples=params["samples"], max_steps=params["max_steps"], lr=params["lr"], init=params["init"],
                    restarts=params["restarts"], eval_samples=params["eval_samples"], optimizer=params["optimizer"])


def _entry(sigma: torch.Tensor, k: int, bound: float, words: list[list[int]], objective: float,
           start_objectives: list[float], start: int) -> dict[str, Any]:
    sig = sigma.tolist()
    sc = scores(sigma, bound).tolist()
    ent = token_entropy(sigma, k).tolist()
    return {"sigma": sig, "scores": sc, "entropy": ent, "sentence_entropy": float(sum(ent)), "objective": objective,
            "word_sigma": word_sigma(sig, words), "word_scores": word_values(sc, words),
            "word_entropy": word_values(ent, words), "start_objectives": start_objectives, "start": start}


def attributes(adapter: Adapter, one: Encoding, x: torch.Tensor, out_layers: dict[str, dict[str, Any]],
               concepts: dict[str, list[str]]) -> None:
    """Adds to each layer entry the word attributes of Guan Eq. 8-9 for every word (null for words made only of
    special tokens): ``"A_i": [per word]``, ``"A_c": {concept: [per word]}``, ``"r": {concept: [per word]}``.

    A word's embedding x_i is the mean of its tokens' rows of x, its σ per layer the word σ (geometric mean over its
    tokens); a concept is the embeddings of its words (each the mean of its non-special tokens); the random-word
    baseline E_{x'∈X_i} is the whole embedding table (padding row excluded)."""
    table = offering(adapter, Capability.EMBEDDING_TABLE, EmbeddingTable, "sigma").embedding_table().to(x)
    embedded = {c: torch.stack([word_embedding(adapter, w) for w in words]).to(x) for c, words in concepts.items()}
    names = list(out_layers)
    for entry in out_layers.values():
        entry["A_i"], entry["A_c"], entry["r"] = [], {c: [] for c in concepts}, {c: [] for c in concepts}
    for w, group in enumerate(one.words[0]):
        special_only = all(one.special[0][t] for t in group)
        if not special_only:
            x_w = x[group].mean(0)
            sigma_w = torch.tensor([out_layers[n]["word_sigma"][w] for n in names], dtype=x.dtype)
            attrs = word_attributes(x_w, sigma_w, embedded, table)
        for i, name in enumerate(names):
            entry = out_layers[name]
            entry["A_i"].append(None if special_only else float(attrs["A_i"][i]))
            for c in concepts:
                entry["A_c"][c].append(None if special_only else float(attrs["A_c"][c][i]))
                entry["r"][c].append(None if special_only else float(attrs["r"][c][i]))


def run(
    adapter: Adapter,
    encoding: Encoding,
    target: Target | None,
    params: dict[str, Any],
    layers: list[str] | None = None,
    progress: Callable[[float], None] = lambda fraction: None,
    seed: int = 0,
) -> MethodResult:
    one = encoding.item(0)
    layers = list(layers) if layers else default_layers(adapter)
    unknown = [n for n in [*layers, *params["timestamps"]] if n not in adapter.layer_names]
    if unknown:
        raise InputError(f"unknown layer(s) {unknown}; {adapter.name} has {adapter.layer_names}")
    settings = settings_for(adapter, params)
    x = adapter.embed(one)
    views = [View(name) for name in layers]
    if params["timestamps"]:
        with torch.no_grad():
            trace = adapter.forward(x, one, capture=params["timestamps"])
        for name in params["timestamps"]:
            if trace.layers[name].dim() != 3:
                raise InputError(f"timestamp mode needs a B×T×H layer; {name} is {tuple(trace.layers[name].shape)}")
            views += [View(name, t) for t in range(trace.layers[name].shape[1])]
    result = fit(adapter, one, views, settings, stats=load_stats(adapter), seed=seed, progress=progress, x=x)

    k, bound, words = x.shape[-1], settings.bound, one.words[0]
    entries, tensors = {}, {}
    for i, view in enumerate(views):
        entries[view.name] = _entry(result.sigma[i][0], k, bound, words, float(result.objective[i, 0]),
                                    result.start_objectives[:, i, 0].tolist(), int(result.winner[i, 0]))
    out_layers = {name: entries[name] for name in layers}
    if params["concepts"] and out_layers:
        attributes(adapter, one, x[0], out_layers, params["concepts"])
    stamps = {name: {"steps": [entries[v.name] for v in views if v.layer == name and v.step is not None]}
              for name in params["timestamps"]}
    for name, entry in out_layers.items():
        for key in ("sigma", "scores", "entropy"):
            tensors[f"{key}.{name}"] = torch.tensor(entry[key], dtype=torch.float32)
    for name, stamp in stamps.items():
        tensors[f"sigma.{name}@steps"] = torch.tensor([e["sigma"] for e in stamp["steps"]], dtype=torch.float32)

    figures: dict[str, bytes | Callable[[], bytes]] = {}
    labels = one.word_strings(0)
    shown = [w for w, group in enumerate(words) if not all(one.special[0][t] for t in group)] or list(range(len(words)))
    subtitle = f"λ {settings.lam:g}, bound {bound:.3g}, {result.normalization}; darker = more kept"
    if out_layers:
        from worker.render.sigma import information_map_png

        grid = [[out_layers[n]["word_scores"][w] for w in shown] for n in layers]
        figures[""] = information_map_png(layers, [labels[w] for w in shown], grid, subtitle=subtitle)
    if params["concepts"] and out_layers:
        from worker.render.sigma import attributes_png

        w = max(shown, key=lambda w: sum(out_layers[n]["word_scores"][w] for n in layers))  # the most-kept word
        figures["attributes"] = attributes_png(layers, {c: [out_layers[n]["r"][c][w] for n in layers]
                                                        for c in params["concepts"]}, labels[w])
    for name, stamp in stamps.items():
        from worker.render.sigma import timestamp_map_png

        grid = [e["scores"] for e in stamp["steps"]]
        figures["timestamps"] = timestamp_map_png([f"t={t + 1}" for t in range(len(grid))], one.tokens[0], grid,
                                                  title=f"information kept by {name} per time step",
                                                  subtitle=subtitle)
    return MethodResult(
        tensors=tensors,
        json={
            "layers": out_layers, "timestamps": stamps, "bound": bound, "normalization": result.normalization,
            "normalization_fallback": result.normalization != settings.normalization, "embedding_size": k,
            "basin": {"starts": result.starts, "steps": result.steps,
                      "converged": bool(result.converged.all()),
                      "rule": f"each layer keeps the start with the lowest objective, re-estimated with "
                              f"{settings.eval_samples} noise draws shared by all starts"},
        },
        figures=figures,
    )


METHOD = Method(
    name="sigma",
    summary="Information of each input word kept by each layer (Guan et al. 2019): per-token noise σ fitted so the "
            "layer's state barely changes; small σ = kept.",
    params=SigmaParams,
    run=run,
    takes_layers=True,
    token_scores=False,
    tensors=("sigma.<layer>", "scores.<layer>", "entropy.<layer>", "sigma.<layer>@steps"),
    check=check,
)
