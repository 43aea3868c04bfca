"""Explanation methods: a registry of one module per method, and `explain`, the engine's entry point.

Adding a method = one new module `worker/methods/<name>.py` with `METHOD = Method(...)` and one line in
`worker.capabilities.METHODS` (its name and what it requires of an adapter).
"""
from __future__ import annotations

import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from worker.capabilities import Capability
from worker.methods.base import KnownGradient, Method, MethodResult, Target, word_scores
from worker.methods.catalog import HEAD_WORDS, applicable_methods, refusal, registry, some_labels
from worker.methods.faithfulness import FULL, faithfulness_batch
from worker.methods.request import (
    NO_LIMITS,
    ExplainOptions,
    ExplainRequest,
    Limits,
    RequestError,
    UnknownMethods,
    validate,
    validate_options,
)
from worker.methods.stability import stability
from worker.models.base import Adapter, Encoding, InputError

# the engine's public names, re-exported from where they live (scripts and the service import them from here)
__all__ = ["HEAD_WORDS", "NO_LIMITS", "Cancelled", "ExplainOptions", "ExplainRequest", "Explanation", "Limits",
           "RequestError", "UnknownMethods", "applicable_methods", "check_methods", "compare_figures", "explain",
           "explain_batch", "explain_many", "explain_request", "refusal", "registry", "some_labels", "validate",
           "validate_options"]


class Cancelled(Exception):
    """Raised from a progress callback when the job was cancelled; stops the run between steps."""


@dataclass
class Explanation:
    result: dict[str, Any]  # the job document's "result" (docs/api.md)
    tensors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # method -> tensors
    figures: dict[str, bytes] = field(default_factory=dict)  # artifact name (e.g. "gradient.png") -> PNG


def resolve_target(adapter: Adapter, logits: torch.Tensor | None, target: str) -> torch.Tensor | None:
    if logits is None or not adapter.has_head:
        return None
    if target in (None, "predicted"):
        return logits.argmax(-1)
    labels = adapter.head_labels()
    if target not in labels:
        raise InputError(f"unknown target {target!r}; this model's labels are {some_labels(labels)}")
    return torch.full((logits.shape[0],), labels.index(target), dtype=torch.long)


def target_probability(logits: torch.Tensor | None, index: torch.Tensor | None) -> torch.Tensor | None:
    """p(target) of each item from the prediction's logits (B): the faithfulness variants' unmasked row, known."""
    if logits is None or index is None:
        return None
    return logits.softmax(-1).gather(1, index.view(-1, 1).to(logits.device)).squeeze(1).double().cpu()


Progress = Callable[[float], None]


def explain(
    adapter: Adapter,
    inputs: dict[str, str],
    methods: list[str],
    layers: list[str] | None = None,
    target: str = "predicted",
    score: str = "logit",
    params: dict[str, dict[str, Any]] | None = None,
    seed: int = 0,
    progress: Progress = lambda fraction: None,
    figures: bool = True,
    faithfulness: str = FULL,
) -> Explanation:
    """Run `methods` on one input and assemble the result document, tensors and figures (figures=False skips
    rendering, e.g. for the items of an audit; `faithfulness` the request option's level)."""
    return explain_batch(adapter, [inputs], methods, layers, target, score, params, seed, progress, figures,
                         faithfulness)[0]


def explain_batch(
    adapter: Adapter,
    inputs: list[dict[str, str]],
    methods: list[str],
    layers: list[str] | None = None,
    target: str = "predicted",
    score: str = "logit",
    params: dict[str, dict[str, Any]] | None = None,
    seed: int = 0,
    progress: Progress = lambda fraction: None,
    figures: bool = True,
    faithfulness: str = FULL,
) -> list[Explanation]:
    """`explain` for several inputs: one padded batch for the prediction, and one pass per method for the methods
    that have `run_batch` (the others run item by item). The results equal those of `explain` per item."""
    options = ExplainOptions(methods=methods, layers=layers, target=target, score=score, params=params or {},
                             seed=seed, faithfulness=faithfulness)
    return explain_many(adapter, options, inputs, progress=progress, figures=figures)


def explain_request(adapter: Adapter, request: ExplainRequest, limits: Limits = NO_LIMITS,
                    progress: Progress = lambda fraction: None, figures: bool = True) -> Explanation:
    """A job's request: validated as the API validated it (its input and the service's limits included), then
    run."""
    if Capability.GENERATION in adapter.capabilities:  # step by step (worker/methods/generation.py)
        from worker.methods.generation import explain_generation

        checked = validate(adapter, request, limits)
        return Explanation(*explain_generation(adapter, checked, provenance(adapter, checked.seed), progress, figures))
    return _run(adapter, validate(adapter, request, limits), [request.inputs], progress, figures)[0]


def explain_many(adapter: Adapter, options: ExplainOptions, inputs: Sequence[Mapping[str, str]],
                 limits: Limits = NO_LIMITS, progress: Progress = lambda fraction: None,
                 figures: bool = True) -> list[Explanation]:
    """The same options on several inputs (an audit's batch): the options are validated; the inputs are not,
    beyond their encoding, because their caller checks each one apart (one bad item must not fail the others)."""
    return _run(adapter, validate_options(adapter, options, limits), inputs, progress, figures)


def _run(adapter: Adapter, options: ExplainOptions, inputs: Sequence[Mapping[str, str]], progress: Progress,
         figures: bool) -> list[Explanation]:
    """The work of validated options: the prediction in one batch, then each method."""
    table, params, seed, score = registry(), options.plain_params(), options.seed, options.score
    plain = [dict(one) for one in inputs]
    encoding = adapter.encode(plain if len(plain) > 1 else plain[0]).to(adapter.device)
    # on a GPU, BiLSTM/ESIM pick their LSTM kernel by grad mode (cuDNN without): the prediction stays a no-grad pass
    keep = adapter.device.type == "cpu" and any(table[n].gradient_at_input for n in options.methods)
    logits, graph = predict(adapter, encoding, keep_graph=keep)
    index = resolve_target(adapter, logits, options.target)
    known = None
    if graph is not None and index is not None:
        x, with_graph, forward_seconds = graph
        known = KnownGradient(encoding, x, with_graph, Target(index, score), forward_seconds)
    last_served = max((n for n, name in enumerate(options.methods) if table[name].gradient_at_input), default=-1)
    items = [encoding.item(i) for i in range(len(plain))] if len(plain) > 1 else [encoding]
    heads = [None if index is None else index[i:i + 1] for i in range(len(items))]
    explanations = [Explanation(document(adapter, items[i], None if logits is None else logits[i:i + 1],
                                         heads[i], score, seed)) for i in range(len(items))]
    layers = None if options.layers is None else list(options.layers)
    methods = options.methods
    for n, name in enumerate(methods):
        method, chosen = table[name], params[name]

        def step(fraction: float, n: int = n) -> None:
            progress((n + min(max(fraction, 0.0), 1.0)) / len(methods))

        targets = [Target(heads[i], score, known) if index is not None else None for i in range(len(items))]
        if method.run_batch is not None and len(items) > 1:
            started = time.perf_counter()
            torch.manual_seed(seed)
            outs = method.run_batch(adapter, encoding, Target(index, score, known) if index is not None else None,
                                    chosen, layers=layers, progress=step, seed=seed)
            seconds = [(time.perf_counter() - started) / len(items)] * len(items)  # the batch's time, shared
        else:
            outs, seconds = [], []
            for i, item in enumerate(items):
                started = time.perf_counter()
                torch.manual_seed(seed)
                outs.append(method.run(adapter, item, targets[i], chosen, layers=layers, seed=seed,
                                       progress=lambda f, i=i: step((i + min(max(f, 0.0), 1.0)) / len(items))))
                seconds.append(time.perf_counter() - started)
        # the faithfulness of all items at once: their masked variants and bound searches share passes
        faith = faithfulness_batch(adapter, encoding, [out.json.get("scores") if method.token_scores else None
                                                       for out in outs], index, seed, level=options.faithfulness,
                                   probability=target_probability(logits, index))
        if known is not None and method.gradient_at_input:  # its forward and backward ran as the prediction's
            seconds = [s + known.seconds / len(items) for s in seconds]
        if n == last_served:
            known = None  # no later method takes it: let x and the gradient go
        for i, out in enumerate(outs):
            attach(explanations[i], adapter, items[i], name, method, out, chosen, faith[i], figures)
            part = explanations[i].result["methods"][name]
            part["seconds"] = round(seconds[i], 6)  # the method's own run, not its faithfulness
            if chosen.get("stability") and "scores" in part:
                part["stability"] = stability(method, adapter, items[i], targets[i], chosen, layers, seed,
                                              part["scores"])
        step(1.0)
    return explanations


def predict(adapter: Adapter, encoding: Encoding,
            keep_graph: bool) -> tuple[torch.Tensor | None, tuple[torch.Tensor, torch.Tensor, float] | None]:
    """The prediction's logits (None for a headless model) and, with `keep_graph`, the pass itself: the input
    embeddings x (requiring grad), the logits with their graph and the pass's seconds, from which `KnownGradient`
    takes ∂S/∂x."""
    x = adapter.embed(encoding)
    if not keep_graph:
        with torch.no_grad():
            return adapter.forward(x, encoding).logits, None
    started = time.perf_counter()
    x.requires_grad_(True)
    with torch.enable_grad():
        logits = adapter.forward(x, encoding).logits
    return (None, None) if logits is None else (logits.detach(), (x, logits, time.perf_counter() - started))


def check_methods(adapter: Adapter, table: dict[str, Method], methods: list[str], score: str,
                  params: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each method's params with defaults, or RequestError: `validate_options` for callers of this older name
    (`table` is not read: validation reads the registry itself)."""
    options = validate_options(adapter, ExplainOptions(methods=methods, score=score, params=params))
    return options.plain_params()


def document(adapter: Adapter, encoding: Encoding, logits: torch.Tensor | None, index: torch.Tensor | None,
             score: str, seed: int) -> dict[str, Any]:
    """The result document of one input (docs/api.md), before its methods are added."""
    return {
        "schema_version": 1,
        "tokens": encoding.tokens[0],
        "special": encoding.special[0],
        "words": encoding.words[0],
        "word_strings": encoding.word_strings(0),
        "prediction": prediction(adapter, logits),
        "target": None if index is None else adapter.head_labels()[int(index[0])],
        "score": score,
        "methods": {},
        "provenance": provenance(adapter, seed),
    }


def attach(explanation: Explanation, adapter: Adapter, encoding: Encoding, name: str, method: Method,
           out: MethodResult, chosen: dict[str, Any], faith: dict[str, Any] | None, figures: bool) -> None:
    """One method's output into one input's explanation: word scores and faithfulness (`faith`) for token scores."""
    part = dict(out.json)
    if method.token_scores and "scores" in part:
        part.setdefault("word_scores", word_scores(part["scores"], encoding.words[0]))
        if faith is not None:  # omitted for headless models, adapters that cannot mask tokens, level "none"
            part["faithfulness"] = faith
    part["params"] = chosen
    explanation.result["methods"][name] = part
    explanation.tensors[name] = out.tensors
    for view, png in out.figures.items() if figures else ():
        explanation.figures[f"{name}-{view}.png" if view else f"{name}.png"] = png() if callable(png) else png


def compare_figures(methods: list[str], results: dict[str, dict[str, Any]]) -> dict[str, bytes]:
    """The side-by-side figures of a ``compare_with`` job: {model name: its result document} (the job's own model
    first) -> {"<method>-compare.png": PNG} for each method that draws one."""
    table = registry()
    out = {}
    for name in methods:
        compare = table[name].compare
        if compare is not None and all(name in r.get("methods", {}) for r in results.values()):
            out[f"{name}-compare.png"] = compare({m: r["methods"][name] for m, r in results.items()})
    return out


PREDICTION_TOP = 20  # a model with more labels (a language model: its vocabulary) lists its most probable only


def prediction(adapter: Adapter, logits: torch.Tensor | None) -> dict[str, Any] | None:
    """The predicted label and the probabilities of all labels, or of the PREDICTION_TOP most probable (in order)
    when the model has more labels than that."""
    if logits is None or not adapter.has_head:
        return None
    labels = adapter.head_labels()
    probs = logits[0].softmax(-1)
    if len(labels) > PREDICTION_TOP:
        top = probs.topk(PREDICTION_TOP)
        pairs = [(labels[int(i)], float(p)) for p, i in zip(top.values, top.indices, strict=True)]
    else:
        pairs = list(zip(labels, probs.tolist(), strict=True))
    return {"label": labels[int(logits[0].argmax())], "probabilities": dict(pairs)}


def provenance(adapter: Adapter, seed: int) -> dict[str, Any]:
    import transformers

    return {
        "seed": seed,
        "model_revision": adapter.revision,
        "device": str(adapter.device),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
    }
