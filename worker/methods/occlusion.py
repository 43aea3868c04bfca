"""`occlusion`: erasure / leave-one-out (Li et al. 2016, "Understanding neural networks through representation
erasure"; Zeiler & Fergus' occlusion), per token or over n-gram windows.

Windows of ``window`` consecutive non-special tokens slide one token at a time over the input (specials are never
occluded; with ``window=1`` this is leave-one-out). Occluding a window replaces the embeddings of its tokens with the
baseline (``"mask"``: the mask token's embedding, the same as masking at the id level; ``"zero"``: zeros). For window w,
d_w = S(x) − S(x with w occluded), and a token's score is the mean of d_w over the windows that contain it (the
numbers of Captum's ``FeatureAblation`` with one feature per token, and of ``Occlusion`` with a window of
``window`` tokens and stride 1, on the non-special tokens). Specials score 0. A window longer than the input is cut to
the input. Higher = removing the token lowers S(y) more.

JSON: ``{"scores": [T floats], "window", "baseline", "windows": number of occluded copies}``.
Tensors: ``scores`` (T), ``drops`` (one d_w per window, in order).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import marshmallow as ma
import torch

from worker.methods.base import Method, MethodResult, Params, Target, token_result
from worker.methods.perturb import BASELINES, baseline_embedding, batched_scores, candidates
from worker.models.base import Adapter, Encoding


class OcclusionParams(Params):
    window = ma.fields.Integer(load_default=1, strict=True, validate=ma.validate.Range(1, 64),
                               metadata={"description": "tokens occluded together (1 = leave-one-out)"})
    baseline = ma.fields.String(load_default="mask", validate=ma.validate.OneOf(BASELINES),
                                metadata={"description": "what replaces an occluded token's embedding"})
    batch_size = ma.fields.Integer(load_default=32, strict=True, validate=ma.validate.Range(1, 256),
                                   metadata={"description": "occluded copies per forward pass"})


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
    x = adapter.embed(one)
    baseline = baseline_embedding(adapter, one, params["baseline"])
    cand = candidates(one).to(x.device)
    width = min(params["window"], len(cand))
    spans = [cand[i : i + width] for i in range(len(cand) - width + 1)]
    copies = x.repeat(len(spans) + 1, 1, 1)  # row 0: x itself
    cover = torch.zeros(len(spans), x.shape[1], dtype=x.dtype, device=x.device)  # window × token
    for row, span in enumerate(spans):
        copies[row + 1, span] = baseline[0, span]
        cover[row, span] = 1.0
    values = batched_scores(adapter, one, copies, target, params["batch_size"])
    drops = values[0] - values[1:]
    counts = cover.sum(0)
    scores = (drops @ cover) / counts.clamp_min(1.0)
    progress(1.0)
    title = "leave-one-out (occlusion)" if width == 1 else f"occlusion, {width}-token windows"
    return token_result(adapter, one, target, scores, title, {"drops": drops}, window=width,
                        baseline=params["baseline"], windows=len(spans))


METHOD = Method(
    name="occlusion",
    summary="Erasure: drop of S(y) when a token (or an n-token window) is replaced by the mask token; per-token mean.",
    params=OcclusionParams,
    run=run,
    tensors=("scores", "drops"),
)
