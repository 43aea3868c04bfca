"""`shap`: Shapley-value attributions for text, masking by the adapter's mask token (Lundberg & Lee 2017).

The game: v(S) = S(y) of item 0 with every feature outside S masked at the id level (``Adapter.mask``; specials are
never masked). ``base_value`` = v(∅) (every non-special token masked), ``output_value`` = v(all) = S(y) of the input.
Features are the input's tokens (``unit="token"``) or words (``unit="word"``); the scores of a word are split
equally over its tokens, so ``word_scores`` are the words' values. Every masked variant of a step runs in batched
forward passes of ``batch_size`` rows; a variant already evaluated (e.g. one that differs only in a special token) is
not run again.

``algorithm="partition"`` (default): Owen values over a hierarchical clustering of the features, as the shap
package's ``PartitionExplainer`` with its ``Text`` masker computes them (with ``output_type="token_ids"``, i.e.
id-level masking; ``fixed_context=None``). The clustering merges neighbours bottom-up by a text heuristic (subword
pieces first, then apostrophe endings; connectors, commas and sentence ends last), with the specials as leaves
(always kept). From the root, a node with children L, R in context (off, on) is expanded with two evaluations,
v(off ∪ L) and v(off ∪ R); each child is queued twice (in the off and in the on context) with half the weight, the
queue ordered by the largest |Δv| × weight first (ties broken by a seeded normal draw, as shap does with the global
numpy generator). Expansion stops when ``max_evals`` − 2 evaluations are spent; a node not expanded keeps its
weighted Δv, spread over its leaves in proportion to their number. Σ scores = output_value − base_value exactly
(up to rounding). With the same tree, ``max_evals``, ``batch_size`` (the masks per step, 2 per node) and seed, the
numbers are shap's (tests/unit/test_shap.py).

``algorithm="kernel"``: KernelSHAP (Lundberg & Lee 2017) over the non-special features: when the 2^d − 2 proper
coalitions fit in ``max_evals`` − 2 they are all evaluated and weighted by the Shapley kernel (the result is then the
exact Shapley values), otherwise ``max_evals`` − 2 coalitions are drawn (a size s with probability ∝ (d−1)/(s(d−s)),
then a uniform subset of that size, each with its complement), from a generator seeded with the job's seed. The
weighted least squares fit is constrained so that Σ scores = output_value − base_value. Specials score 0.

JSON: ``{"scores": [T floats], "algorithm", "unit", "base_value", "output_value", "evals": forward rows the
algorithm counted (shap's count for partition), "features"}``. Tensors: ``scores`` (T), ``values`` (one per feature).
"""
from __future__ import annotations

import heapq
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import marshmallow as ma
import numpy as np
import torch

from worker.methods.base import Method, MethodResult, SeededParams, Target, token_result
from worker.models.base import Adapter, Encoding, InputError

ALGORITHMS = ("partition", "kernel")
UNITS = ("token", "word")
MAX_EVALS = 20_000


class ShapParams(SeededParams):
    algorithm = ma.fields.String(load_default="partition", validate=ma.validate.OneOf(ALGORITHMS),
                                 metadata={"description": "partition (Owen values over a text clustering) or kernel "
                                                          "(KernelSHAP, seeded)"})
    unit = ma.fields.String(load_default="token", validate=ma.validate.OneOf(UNITS),
                            metadata={"description": "features: subword tokens (as shap's Text masker) or words"})
    max_evals = ma.fields.Integer(load_default=500, strict=True, validate=ma.validate.Range(10, MAX_EVALS),
                                  metadata={"description": "model evaluations (masked inputs), the two ends included"})
    batch_size = ma.fields.Integer(load_default=64, strict=True, validate=ma.validate.Range(2, 1024),
                                   metadata={"description": "masked inputs per step and forward pass"})


# ---------------------------------------------------------------------------------------------- the game
@dataclass
class Game:
    """v(keep) for item 0 of an encoding: S(y) with the features not kept masked, evaluated in batches, memoised."""

    adapter: Adapter
    encoding: Encoding  # one item
    target: Target
    member: torch.Tensor  # features × T bool: the tokens of each feature
    batch_size: int

    def __post_init__(self) -> None:
        self.special = torch.tensor(self.encoding.special[0], dtype=torch.bool)
        self.cache: dict[bytes, float] = {}
        self.rows = 0  # forward rows actually run

    def __call__(self, keep: np.ndarray) -> np.ndarray:
        """keep: N × features bool -> N float64 values."""
        drop = ~((torch.as_tensor(keep, dtype=torch.float32) @ self.member.float()) > 0) & ~self.special
        keys = [row.numpy().tobytes() for row in drop]
        first = {k: i for i, k in reversed(list(enumerate(keys))) if k not in self.cache}
        todo = list(first)
        if todo:
            rows = drop[torch.tensor([first[k] for k in todo])]
            for k, value in zip(todo, self._scores(rows).tolist(), strict=True):
                self.cache[k] = value
        return np.array([self.cache[k] for k in keys], dtype=np.float64)

    def _scores(self, drop: torch.Tensor) -> torch.Tensor:
        out = []
        with torch.no_grad():
            for rows in drop.split(self.batch_size):
                masked = self.adapter.mask(self.encoding.repeat(rows.shape[0]), rows)
                logits = self.adapter.forward(self.adapter.embed(masked), masked).head_logits()
                out.append(Target(self.target.index[:1].expand(rows.shape[0]), self.target.score)(logits))
        self.rows += int(drop.shape[0])
        return torch.cat(out).double().cpu()


def feature_groups(encoding: Encoding, unit: str, specials: bool) -> list[list[int]]:
    """Token indices of each feature of item 0, in token order: every non-special token or word, and (when
    `specials`) each special token as a feature of its own, which is never masked."""
    special = encoding.special[0]
    if unit == "token":
        return [[t] for t, s in enumerate(special) if specials or not s]
    groups: list[list[int]] = []
    for word in encoding.words[0]:
        if all(special[t] for t in word):
            groups.extend([t] for t in word if specials)
        else:
            groups.append(word)
    return groups


def membership(groups: list[list[int]], tokens: int) -> torch.Tensor:
    member = torch.zeros(len(groups), tokens, dtype=torch.bool)
    for f, group in enumerate(groups):
        member[f, group] = True
    return member


# ------------------------------------------------------------------------------------- text clustering
def segments(encoding: Encoding, groups: list[list[int]]) -> list[str]:
    """The text of each feature with the whitespace up to the next feature of the same text (specials: "")."""
    item = encoding.inputs[0]
    texts = [item["text"]] if "text" in item else [item["premise"], item["hypothesis"]]
    spans = []
    for group in groups:
        if all(encoding.special[0][t] for t in group):
            spans.append((0, 0, 0))
        else:
            first, last = group[0], group[-1]
            spans.append((encoding.segments[0][first], encoding.offsets[0][first][0], encoding.offsets[0][last][1]))
    parts = []
    for i, (segment, start, end) in enumerate(spans):
        following = spans[i + 1][1] if i + 1 < len(spans) and spans[i + 1][0] == segment else end
        parts.append(texts[segment][start:max(end, following)] if end > start else "")
    return parts


def cluster_labels(parts: list[str]) -> list[str]:
    """The features as the clustering reads them: stripped, with "##" before a piece that continues a word (the
    previous part ends in a word character and this one starts with a letter)."""
    labels: list[str] = []
    for i, part in enumerate(parts):
        glued = (i > 0 and labels[i - 1] != "" and re.match(r"^.*\W$", parts[i - 1]) is None
                 and re.match(r"^[A-Za-z]", part) is not None)
        labels.append(("##" + part.strip()) if glued else part.strip())
    return labels


OPEN, CLOSE = "(", ")"
CONNECTORS = ("but", "and", "or")
SENTENCE_ENDS = (".", "?", "!")


@dataclass
class _Leaf:
    text: str
    balanced: bool


def _affinity(left: list[_Leaf], right: list[_Leaf]) -> float:
    """How much two neighbouring groups want to merge: word pieces and apostrophe endings first, brackets kept
    balanced, connectors, commas and sentence ends crossed late, small groups before large ones."""
    a, b = left[-1].text, right[0].text
    score = 0.0
    if b.startswith("##"):
        score += 20
    if b == "'" and (len(right) == 1 or (len(right) == 2 and right[1].text in ("t", "s"))):
        score += 15
    if a == "'" and b in ("t", "s"):
        score += 15
    opens_control = left[0].text.startswith("[") and left[0].text.endswith("]")
    closes_control = right[-1].text.startswith("[") and right[-1].text.endswith("]")
    if opens_control != closes_control:
        score -= 1000
    if b == OPEN and not right[0].balanced:
        score -= 100
    if a == CLOSE and not left[-1].balanced:
        score -= 100
    if left[0].text == OPEN:
        score -= 2
    if a in CONNECTORS or b in CONNECTORS:
        score -= 2
    if a == ",":
        score -= 10
    if b == ",":
        score -= 10 if len(right) > 1 else 1
    if a in SENTENCE_ENDS:
        score -= 20
    if b in SENTENCE_ENDS:
        score -= 20 if len(right) > 1 else 1
    return score - len(left) - len(right)


def text_clustering(labels: list[str]) -> np.ndarray:
    """(M−1) × 4 linkage (left, right, height, leaves), scipy's layout: neighbours merged greedily by `_affinity`
    (the first best pair), height = leaves / the root's leaves."""
    m = len(labels)
    groups = [[_Leaf(t, t not in (OPEN, CLOSE))] for t in labels]
    ids = list(range(m))
    sizes = [1] * m
    scores = [_affinity(groups[i], groups[i + 1]) for i in range(m - 1)]
    linkage = np.zeros((max(m - 1, 0), 4))
    for step in range(m - 1):
        i = int(np.argmax(scores))
        merged = groups[i] + groups[i + 1]
        if merged[0].text == OPEN and merged[-1].text == CLOSE:
            merged[0].balanced = merged[-1].balanced = True
        linkage[step] = (ids[i], ids[i + 1], 0.0, sizes[ids[i]] + sizes[ids[i + 1]])
        sizes.append(int(linkage[step, 3]))
        groups[i:i + 2], ids[i:i + 2] = [merged], [m + step]
        del scores[i]
        if i > 0:
            scores[i - 1] = _affinity(groups[i - 1], groups[i])
        if i < len(groups) - 1:
            scores[i] = _affinity(groups[i], groups[i + 1])
    if m > 1:
        linkage[:, 2] = linkage[:, 3] / linkage[:, 3].max()
    return linkage


# ------------------------------------------------------------------------------------------ partition
def owen_values(game: Callable[[np.ndarray], np.ndarray], linkage: np.ndarray, m: int, max_evals: int,
                batch_size: int, rng: np.random.RandomState, base: float, full: float,
                progress: Callable[[float], None] = lambda fraction: None) -> tuple[np.ndarray, int]:
    """The partition explainer's recursion (module docstring) -> (value per leaf, evaluations counted)."""
    below = np.zeros((2 * m - 1, m), dtype=bool)  # the leaves under each node
    below[np.arange(m), np.arange(m)] = True
    for node, (left, right, _, _) in enumerate(linkage, start=m):
        below[node] = below[int(left)] | below[int(right)]
    credit = np.zeros(2 * m - 1)
    queue: list[tuple[float, float, int, tuple]] = [(0.0, 0.0, 0, (np.zeros(m, dtype=bool), base, full, 2 * m - 2, 1.0))]
    pushed, evals, budget = 1, 0, max_evals - 2
    while queue:
        if evals >= budget:  # what is left in the queue keeps its weighted difference
            for _, _, _, (_, low, high, node, weight) in queue:
                credit[node] += (high - low) * weight
            break
        work: list[tuple] = []
        masks: list[np.ndarray] = []
        while queue and len(masks) < batch_size and evals + len(masks) < budget:
            off, low, high, node, weight = heapq.heappop(queue)[3]
            if node < m:  # a leaf: its value in this context
                credit[node] += (high - low) * weight
                continue
            left, right = int(linkage[node - m, 0]), int(linkage[node - m, 1])
            work.append((off, low, high, left, right, weight / 2))
            masks += [off | below[left], off | below[right]]
        if not work:
            continue
        values = game(np.array(masks))
        evals += len(masks)
        progress(evals / budget)
        for j, (off, low, high, left, right, half) in enumerate(work):
            with_left, with_right = values[2 * j], values[2 * j + 1]
            for args in ((off, low, with_left, left, half), (off, low, with_right, right, half),
                         (off | below[right], with_right, high, left, half),
                         (off | below[left], with_left, high, right, half)):
                heapq.heappush(queue, (-abs(args[2] - args[1]) * half, float(rng.randn()), pushed, args))
                pushed += 1
    for node in range(2 * m - 2, m - 1, -1):  # spread each node's credit over its children by their leaf counts
        left, right, _, size = linkage[node - m]
        for child in (int(left), int(right)):
            credit[child] += credit[node] * (linkage[child - m, 3] if child >= m else 1) / size
    return credit[:m], evals


# --------------------------------------------------------------------------------------------- kernel
def kernel_coalitions(d: int, budget: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Coalitions (n × d bool) and their regression weights: all 2^d − 2 with the Shapley kernel when they fit in
    `budget`, else `budget` sampled by the kernel (in complementary pairs), each weighted 1."""
    if d < 31 and 2 ** d - 2 <= budget:
        codes = np.arange(1, 2 ** d - 1)
        z = (codes[:, None] >> np.arange(d)) & 1 == 1
        s = z.sum(1)
        weights = (d - 1) / (np.array([math.comb(d, int(k)) for k in s]) * s * (d - s))
        return z, weights
    sizes = np.arange(1, d)
    p = (d - 1) / (sizes * (d - sizes))
    drawn = rng.choice(sizes, size=max(1, budget // 2), p=p / p.sum())
    rows = []
    for k in drawn:
        z = np.zeros(d, dtype=bool)
        z[rng.permutation(d)[:k]] = True
        rows += [z, ~z]
    return np.array(rows), np.ones(len(rows))


def kernel_shap(z: np.ndarray, weights: np.ndarray, values: np.ndarray, base: float, full: float) -> np.ndarray:
    """argmin Σ w (v − base − z·φ)² subject to Σ φ = full − base (the last φ eliminated), in float64."""
    d = z.shape[1]
    total = full - base
    if d == 1:
        return np.array([total])
    zf = z.astype(np.float64)
    design = zf[:, :-1] - zf[:, -1:]
    response = values - base - zf[:, -1] * total
    root = np.sqrt(weights)
    head, *_ = np.linalg.lstsq(design * root[:, None], response * root, rcond=None)
    return np.append(head, total - head.sum())


# ----------------------------------------------------------------------------------------------- run
def run(
    adapter: Adapter,
    encoding: Encoding,
    target: Target,
    params: dict[str, Any],
    layers: list[str] | None = None,
    progress: Callable[[float], None] = lambda fraction: None,
    seed: int = 0,
) -> MethodResult:
    progress(0.0)
    one = encoding.item(0)
    partition = params["algorithm"] == "partition"
    groups = feature_groups(one, params["unit"], specials=partition)
    if not groups:
        raise InputError("the input has no tokens to attribute")
    T = len(one.tokens[0])
    game = Game(adapter, one, target, membership(groups, T), params["batch_size"])
    base, full = game(np.array([[False] * len(groups), [True] * len(groups)]))
    if partition:
        linkage = text_clustering(cluster_labels(segments(one, groups)))
        values, evals = owen_values(game, linkage, len(groups), params["max_evals"], params["batch_size"],
                                    np.random.RandomState(int(seed)), base, full, progress)
    else:
        z, weights = kernel_coalitions(len(groups), params["max_evals"] - 2, np.random.default_rng(int(seed)))
        values = kernel_shap(z, weights, game(z), base, full)
        evals = len(z)
    scores = torch.zeros(T, dtype=torch.float64)
    for f, group in enumerate(groups):
        scores[group] = float(values[f]) / len(group)
    progress(1.0)
    title = f"SHAP ({params['algorithm']}, {params['unit']}s, max_evals {params['max_evals']})"
    return token_result(adapter, one, target, scores, title, {"values": torch.as_tensor(values)},
                        algorithm=params["algorithm"], unit=params["unit"], base_value=float(base),
                        output_value=float(full), evals=int(evals) + 2, features=len(groups))


METHOD = Method(
    name="shap",
    summary="SHAP for text: Owen values over a text clustering (shap's Partition explainer) or KernelSHAP, "
            "masking with the mask token.",
    params=ShapParams,
    run=run,
    tensors=("scores", "values"),
)
