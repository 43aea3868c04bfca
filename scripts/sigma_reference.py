"""The original sigma procedure (Guan et al. 2019, the authors' Interpreter.py), reimplemented cleanly, as the
reference that Lantern's batched engine is checked against (scripts/sigma_agreement.py, its tests, benchmarks).

One sentence, one layer at a time; σ = bound · sigmoid(r) with r ~ N(0, 1); ONE noise draw per step; Φ(x) recomputed
every step; Adam, lr 0.01; a fixed number of iterations; the state with the lowest (one-draw) loss is kept. Loss, in the
authors' form::

    mean over elements of s of (Φ(x̃) − s)² / σ_S²  −  λ · mean over tokens of log(σ_i / bound)

with ``mean_square`` normalisation (σ_S² = mean of s² over the sentence's elements) or ``std`` (per hidden unit, from
the model's sigma statistics). It deliberately shares no code with ``worker.sigma`` (only the model adapter, i.e. Φ).

    python -m scripts.sigma_reference --out tests/fixtures/sigma/reference_minilm.json [--sentences 20]
        [--iterations 3000] [--layers embeddings layer.1 ...] [--threads 1]

``--replicate I [I ...]`` re-runs fixture runs I with another seed into ``replicates``: how well the original
procedure agrees with itself is the yardstick for how well Lantern can agree with it (σ of near-equal words rank at
random from one seed to the next).

Results are appended sentence by sentence and layer by layer, so a long run can be stopped and resumed (existing
(sentence, layer) entries are skipped). Slow on purpose: ≈ 45 ms per iteration for MiniLM on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import time
from pathlib import Path

import torch

EXAMPLE = "a rare bird has more than enough charm to make it memorable"


def reference_sentences(n: int) -> list[str]:
    """The issue's example first, then Rotten Tomatoes test sentences of 6-18 words, in split order."""
    from worker.data.rt import rt_split

    out = [EXAMPLE]
    for text, _ in rt_split("test"):
        if len(out) >= n:
            break
        if 6 <= len(text.split()) <= 18 and text not in out:
            out.append(text)
    return out[:n]


def layer_state(adapter, x, enc, layer):
    trace = adapter.forward(x, enc, capture=[layer], upto=layer)
    return trace.layers[layer]


def run_one(adapter, text: str, layer: str, lam: float, bound: float, iterations: int, seed: int,
            normalization: str = "mean_square", std: torch.Tensor | None = None, cache_state: bool = False) -> dict:
    """The original procedure on one (sentence, layer). ``cache_state`` computes s once instead of every step, as the
    original does: the same σ bit for bit (s does not depend on the step; test_sigma_reference checks it), faster,
    but then ``seconds`` no longer times the original (the benchmark never caches)."""
    enc = adapter.encode({"text": text})
    x = adapter.embed(enc)[0]  # T×K
    t, k = x.shape
    torch.manual_seed(seed)
    ratio = torch.randn(t, 1).requires_grad_(True)
    optimizer = torch.optim.Adam([ratio], lr=0.01)

    cached = layer_state(adapter, x[None], enc, layer).detach() if cache_state else None

    def loss_fn() -> torch.Tensor:
        sigma = bound * torch.sigmoid(ratio)
        x_tilde = x + sigma * torch.randn(t, k)
        s = cached if cached is not None else layer_state(adapter, x[None], enc, layer)  # the original: every step
        s_tilde = layer_state(adapter, x_tilde[None], enc, layer)
        diff = (s_tilde - s) ** 2
        fit = (diff / std ** 2).mean() if normalization == "std" else diff.mean() / (s ** 2).mean()
        return fit - lam * torch.log(torch.sigmoid(ratio)).mean()

    best, best_ratio = math.inf, ratio.detach().clone()
    t0 = time.perf_counter()
    with torch.enable_grad():
        for _ in range(iterations):
            optimizer.zero_grad()
            loss = loss_fn()
            loss.backward()
            optimizer.step()
            if loss.item() < best:
                best, best_ratio = loss.item(), ratio.detach().clone()
    seconds = time.perf_counter() - t0
    sigma = (bound * torch.sigmoid(best_ratio))[:, 0]
    return {"text": text, "layer": layer, "tokens": enc.tokens[0], "sigma": sigma.tolist(),
            "best_step_loss": best, "iterations": iterations, "seconds": seconds,
            "seconds_per_iteration": seconds / iterations, "seed": seed, "cached_state": cache_state}


def objective_draws(adapter, text: str, layer: str, sigma: list[float], lam: float, bound: float,
                    samples: int = 256, seed: int = 12345, chunk: int = 32) -> torch.Tensor:
    """The objective (the mean-square form above) at fixed σ, per noise draw (`samples` values): the independent
    evaluator that scores both the reference's and Lantern's σ (scripts/sigma_agreement.py). The draws depend only
    on the seed and the shapes, so two σ of one (text, layer) are compared draw by draw (a paired difference)."""
    enc = adapter.encode({"text": text})
    x = adapter.embed(enc)  # 1×T×K
    sig = torch.tensor(sigma, dtype=x.dtype)[None, :, None]
    gen = torch.Generator().manual_seed(seed)
    fits = []
    with torch.no_grad():
        s = layer_state(adapter, x, enc, layer)
        for done in range(0, samples, chunk):
            n = min(chunk, samples - done)
            eps = torch.randn((n, *x.shape[1:]), generator=gen)
            s_tilde = layer_state(adapter, x + sig * eps, enc.repeat(n), layer)
            fits.append(((s_tilde - s) ** 2).mean((1, 2)) / (s ** 2).mean())
    return torch.cat(fits).double() - lam * float(torch.log(torch.tensor(sigma) / bound).mean())


def save(path: Path, change) -> None:
    """Re-read the file, apply `change`, replace atomically, under a lock: a runs writer and a replicates writer
    may share the file."""
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        doc = json.loads(path.read_text())
        change(doc)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(path)


def replicate(adapter, doc: dict, indices: list[int], out: Path) -> None:
    done = {r["run"] for r in doc.get("replicates", [])}
    for i in indices:
        if i in done:
            continue
        run = doc["runs"][i]
        result = run_one(adapter, run["text"], run["layer"], doc["lambda"], doc["bound"], doc["iterations"],
                         run["seed"] + 1000)
        save(out, lambda d, r={**result, "run": i}: d.setdefault("replicates", []).append(r))
        print(f"replicate of run {i}: {result['seconds']:.0f}s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="all-minilm-l6-v2")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sentences", type=int, default=20)
    parser.add_argument("--layers", nargs="*", default=None)
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--lam", type=float, default=0.1)
    parser.add_argument("--bound", type=float, default=None, help="default: 10 × std of the embedding matrix")
    parser.add_argument("--normalization", default="mean_square", choices=("mean_square",))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reverse", action="store_true",
                        help="take the sentences last first (a second runner sharing the file)")
    parser.add_argument("--cache-state", action="store_true",
                        help="compute s once per run, not every step: the same σ, faster; the seconds then do not "
                             "time the original")
    parser.add_argument("--replicate", type=int, nargs="*", default=None,
                        help="re-run these fixture runs with seed + 1000 into 'replicates'")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    from worker.models import load_model

    adapter = load_model(args.model).load()
    weight = adapter.model.get_input_embeddings().weight
    bound = args.bound if args.bound is not None else float(10 * weight.std())
    layers = args.layers or [n for n in adapter.layer_names if n not in ("pool", "output")]
    doc = json.loads(args.out.read_text()) if args.out.exists() else {
        "model": args.model, "revision": adapter.revision, "lambda": args.lam, "bound": bound,
        "normalization": args.normalization, "iterations": args.iterations, "procedure":
        "authors' Interpreter.py: r~N(0,1), sigma=bound*sigmoid(r), one noise draw per step, Adam lr 0.01, "
        "lowest-loss state kept", "torch": torch.__version__, "threads": args.threads, "runs": []}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not args.out.exists():
        args.out.write_text(json.dumps(doc, indent=1))
    if args.replicate is not None:
        return replicate(adapter, doc, args.replicate, args.out)
    sentences = list(enumerate(reference_sentences(args.sentences)))
    for i, text in reversed(sentences) if args.reverse else sentences:
        for layer in layers:
            if (text, layer) in {(r["text"], r["layer"]) for r in json.loads(args.out.read_text())["runs"]}:
                continue  # re-read each time: another runner may have done it
            result = run_one(adapter, text, layer, doc["lambda"], doc["bound"], doc["iterations"], args.seed + i,
                             cache_state=args.cache_state)
            save(args.out, lambda d, r=result: d["runs"].append(r))
            print(f"{i} {layer} {result['seconds']:.0f}s {result['seconds_per_iteration'] * 1e3:.1f} ms/it", flush=True)


if __name__ == "__main__":
    main()
