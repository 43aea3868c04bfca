"""What every method shares: the target score, the result shape, the registry entry (docs/extending.md)."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import marshmallow as ma
import torch

from worker.capabilities import METHODS, Capability, Requires
from worker.models.base import Adapter, Encoding

SCORES = ("logit", "probability", "log_probability")


@dataclass
class Target:
    """Which class to explain and how to score it: S(y), the target's logit, probability or log-probability."""

    index: torch.Tensor  # B long: class per item
    score: str = "logit"
    # ∂S/∂x at the input itself from `explain`'s prediction pass, when a requested method wants it
    # (`Method.gradient_at_input`): that method then needs no pass of its own (worker/methods/gradient.py)
    known: KnownGradient | None = None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """S(y) per item (B) from B×C logits."""
        if self.score == "probability":
            values = logits.softmax(-1)
        elif self.score == "log_probability":
            values = logits.log_softmax(-1)
        else:
            values = logits
        return values.gather(-1, self.index.view(-1, 1).to(values.device)).squeeze(-1)


class KnownGradient:
    """∂S(y)/∂x at the input's own embeddings x for one target, computed by `explain` from its prediction pass (a
    backward only, and the graph freed at once) for the methods that want it (`Method.gradient_at_input`): they run
    no forward or backward of their own. It serves only the input and the target it was computed for."""

    def __init__(self, encoding: Encoding, x: torch.Tensor, logits: torch.Tensor, target: Target,
                 forward_seconds: float = 0.0):
        """`x` requires grad and `logits` were computed from it, in `forward_seconds` (the graph is consumed here).
        `seconds`: that forward and this backward, the pass the methods served would have run themselves."""
        started = time.perf_counter()
        with torch.enable_grad():
            (gradient,) = torch.autograd.grad(target(logits).sum(), x)
        self.seconds = forward_seconds + time.perf_counter() - started
        self.encoding, self.x, self.gradient = encoding, x.detach(), gradient.detach()
        self.index, self.score = target.index, target.score

    def serves(self, encoding: Encoding, target: Target) -> bool:
        """Whether `encoding` is the input this was computed on (the same tokens, mask and segments) and `target`
        the same classes and score."""
        mine = self.encoding
        return (target.score == self.score and torch.equal(target.index.cpu(), self.index.cpu())
                and mine.input_ids.shape == encoding.input_ids.shape and torch.equal(mine.input_ids, encoding.input_ids)
                and torch.equal(mine.attention_mask, encoding.attention_mask)
                and _same(mine.token_type_ids, encoding.token_type_ids) and mine.segments == encoding.segments)


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))


class Params(ma.Schema):
    """Base of every method's parameter schema: an unknown parameter is an error, not silently ignored."""

    class Meta:
        unknown = ma.RAISE


class SeededParams(Params):
    """Base of a stochastic method's schema: ``stability: true`` asks for its scores' agreement across seeds
    (worker/methods/stability.py)."""

    stability = ma.fields.Boolean(load_default=False, metadata={
        "description": "also run with 2 more seeds and report the mean Spearman ρ of the scores (3× the cost)"})


@dataclass
class MethodResult:
    """Named tensors (one safetensors file per method), the JSON part of the job result, figures as PNG bytes."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    json: dict[str, Any] = field(default_factory=dict)
    # view name ("" = main) -> PNG bytes, or a no-argument callable that renders them (preferred: explain() only
    # calls it when figures are wanted, so audits skip the rendering cost)
    figures: dict[str, bytes | Callable[[], bytes]] = field(default_factory=dict)


Progress = Callable[[float], None]  # fraction 0..1 of this method; raises to cancel


def first_item(run_batch: Callable[..., list[MethodResult]]) -> Callable[..., MethodResult]:
    """`run` for a method whose batched pass is its only implementation: the batch pass on item 0 alone."""

    def run(adapter, encoding, target, params, layers=None, progress=lambda fraction: None, seed=0) -> MethodResult:
        return run_batch(adapter, encoding.item(0), target, params, layers, progress, seed)[0]

    return run


@dataclass(frozen=True)
class Method:
    """A registry entry. run(adapter, encoding, target, params, layers=, progress=, seed=) -> MethodResult.

    `seed` seeds the method's own random generator (noise, sampling) so that a run is reproducible on any device.
    What the method requires of an adapter is its line in :data:`worker.capabilities.METHODS` (``requires``).
    """

    name: str
    summary: str
    params: type[ma.Schema]
    run: Callable[..., MethodResult]
    takes_layers: bool = False
    token_scores: bool = True  # scores per token: gets word_scores and faithfulness
    tensors: tuple[str, ...] = ()
    sanity: dict[str, Any] = field(default_factory=dict)
    # the same method over a padded batch: (adapter, encoding B, target B, params, layers=, progress=, seed=) ->
    # one MethodResult per item, equal to `run` on each item alone (None: explain_batch runs items one by one)
    run_batch: Callable[..., list[MethodResult]] | None = None
    # the side-by-side figure of a compare_with job: {model name: this method's JSON part} -> PNG (None = none)
    compare: Callable[[dict[str, dict[str, Any]]], bytes] | None = None
    # checks of the loaded params against the model that need no weights (layer names, patterns): raises
    # InputError. The API calls it at submit and the worker before any work, so both refuse the same requests.
    check: Callable[[Any, dict[str, Any]], None] | None = None
    # whether it needs ∂S/∂x at the input's own embeddings (and has `run_batch`): `explain` then computes it from
    # its prediction pass (Target.known), so the method runs no forward or backward of its own
    gradient_at_input: bool = False

    @property
    def requires(self) -> Requires:
        """The capabilities an adapter must offer (the method's line in the registry; none if it has no line)."""
        return METHODS.get(self.name, Requires())

    @property
    def needs_head(self) -> bool:
        """Whether it explains a class: it requires ``head``."""
        return Capability.HEAD in self.requires.all_of

    def missing(self, adapter: Adapter) -> list[str]:
        """What `adapter` lacks for this method (empty: the method applies)."""
        return self.requires.missing(adapter.capabilities)


def word_scores(token_scores: list[float], words: list[list[int]]) -> list[float]:
    """Word score = sum of its tokens' scores (attributions are additive over subwords)."""
    return [float(sum(token_scores[t] for t in group)) for group in words]


def token_figure(adapter: Adapter, encoding: Encoding, scores: list[float], title: str,
                 target: Target | None) -> bytes:
    """The token-score figure of item 0 (specials hidden), titled with the method and the target explained."""
    from worker.render import token_scores_png

    subtitle = None
    if adapter.labels and target is not None:
        subtitle = f"target: {adapter.labels[int(target.index[0])]} ({target.score})"
    return token_scores_png(encoding.tokens[0], encoding.special[0], encoding.words[0], scores,
                            words=encoding.word_strings(0), title=title, subtitle=subtitle)


def token_result(adapter: Adapter, encoding: Encoding, target: Target | None, scores: torch.Tensor, title: str,
                 tensors: dict[str, torch.Tensor] | None = None, **extra: Any) -> MethodResult:
    """The result of a token-scoring method on item 0: `scores` (T) as a tensor and in the JSON part, the other
    tensors moved to the CPU, `extra` JSON fields, and the figure rendered only when asked for."""
    values = scores.detach().cpu().tolist()
    stored = {"scores": scores, **(tensors or {})}
    return MethodResult(
        tensors={name: t.detach().cpu().contiguous() for name, t in stored.items()},
        json={"scores": values, **extra},
        figures={"": lambda: token_figure(adapter, encoding, values, title, target)},
    )

