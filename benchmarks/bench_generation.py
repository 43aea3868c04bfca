"""Explaining generation on gpt2-rt: a 32-token greedy generation after a 64-token prompt, every step explained with
gradient and with integrated gradients (32 Gauss–Legendre points, zero baseline).

Ours: worker.methods.generation — the (step, path point) rows of all steps batched, one backward pass per batch,
each row cut to the tokens its step reads. Baseline: the obvious per-step loop written here with plain transformers
(for each step, the prefix it reads through the model and one backward; IG: that step's 32 path points in one
batch, as Captum's ``IntegratedGradients`` would run them). inseq 0.7.1 is not the baseline: it installs only
with ``--no-deps`` (its dependencies pin CUDA wheels), then needs jaxtyping, typeguard 2 and treescope besides, and
on this transformers (5.x) it refuses a BOS-prefixed tokenizer's generations and returns NaN target attributions.

Steps explained per second (median of alternating repeats), the largest relative difference of the two sides'
attributions (the numbers must be the same), and memory: a prompt that fills the context (120 tokens + 8 given) explained
with IG (32 points, faithfulness per step, no figures) in a fresh process per ``internal_batch_size`` (rows per
pass), its peak RSS beside the same process's peak before the job (imports, model load, the prompt).

Peak RSS is the child's own ``VmHWM`` (/proc/self/status), not ``getrusage(RUSAGE_SELF).ru_maxrss``: on Linux a
child's ru_maxrss keeps the parent's RSS at fork time across exec, so a child started by a benchmark process that
had grown to 2.8 GB reported 2.8 GB whatever it did (the 2,843 MiB "for 16 and for 128 rows" measured earlier).
"""
from __future__ import annotations

import json
import subprocess
import sys

import torch

from benchmarks import Row
from benchmarks.bench_gradients import _alternate

PROMPT_TOKENS, NEW_TOKENS, IG_STEPS = 64, 32, 32


def _prompt(adapter, tokens: int) -> str:
    """Test sentences joined until the prompt has exactly `tokens` tokens (BOS included)."""
    from worker.data.rt import rt_split

    text = " ".join(t for t, _ in rt_split("test")[:40])
    ids = adapter.encode({"prompt": text}).input_ids[0, 1:tokens].tolist()
    return adapter.tokenizer.decode(ids)


def loop_gradients(model, ids: list[int], P: int, ig_steps: int | None) -> torch.Tensor:
    """The obvious way: step by step on its prefix; S×T×K (zeros where a step does not read)."""
    import numpy as np

    emb = model.get_input_embeddings()(torch.tensor([ids])).detach()
    S, T, K = len(ids) - P, len(ids), emb.shape[-1]
    out = torch.zeros((S, T, K))
    if ig_steps:
        nodes, weights = np.polynomial.legendre.leggauss(ig_steps)
        alphas = torch.tensor((nodes + 1) / 2, dtype=emb.dtype).view(-1, 1, 1)
        w = torch.tensor(weights / 2, dtype=emb.dtype).view(-1, 1, 1)
    for s in range(S):
        x = emb[:, :P + s]
        points = (alphas * x if ig_steps else x).detach().requires_grad_(True)
        logits = model(inputs_embeds=points).logits[:, -1, ids[P + s]]
        (grad,) = torch.autograd.grad(logits.sum(), points)
        out[s, :P + s] = (x[0] * (w * grad).sum(0)) if ig_steps else grad[0]
    return out


def run(quick: bool = False) -> list[Row]:
    from worker.methods.generation import Steps, integrated_step_gradients, run_gradient
    from worker.models import load_model
    from worker.models.causal_lm import CausalLMAdapter

    adapter = load_model("gpt2-rt", device="cpu")
    assert isinstance(adapter, CausalLMAdapter)
    model = adapter.model
    prompt = _prompt(adapter, PROMPT_TOKENS)
    prompt_enc = adapter.encode({"prompt": prompt})
    ids = prompt_enc.input_ids[0].tolist()
    with torch.no_grad():  # greedy, EOS held back until NEW_TOKENS (the model may end a sentence sooner)
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                             max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
    new = out[0, len(ids):].tolist()
    enc = adapter.extend(prompt_enc, new)
    full, P = ids + new, len(ids)
    steps = Steps(enc, P, torch.tensor(new), None)
    x = adapter.embed(enc).detach()
    ig_params = {"steps": IG_STEPS, "method": "gausslegendre", "internal_batch_size": 256}
    repeats = 1 if quick else 3
    rows = []
    for name, ours, theirs in (
        ("gradient", lambda: run_gradient(adapter, steps, {"aggregate": "mean_abs"}, lambda f: None).tensors["gradient"],
         lambda: loop_gradients(model, full, P, None)),
        (f"integrated_gradients ({IG_STEPS} steps)",
         lambda: integrated_step_gradients(adapter, steps, x, torch.zeros_like(x), ig_params, lambda f: None),
         lambda: loop_gradients(model, full, P, IG_STEPS)),
    ):
        a, b = ours(), theirs()
        diff = float((a - b).abs().max() / b.abs().max())
        t_ours, t_theirs = _alternate(ours, theirs, repeats)
        rows.append(Row(f"generation {name}: {len(new)} steps after {P} tokens, gpt2-rt", "steps/s",
                        len(new) / t_ours, len(new) / t_theirs, "per-step loop",
                        note=f"max rel. diff {diff:.1e}"))
    for batch in (16, 256) if quick else (16, 64, 256):
        rss = _peak_rss(batch)
        rows.append(Row(f"generation IG peak RSS: {rss['tokens']}-token prompt + {rss['new']}, rows/pass {batch}",
                        "MiB", rss["peak_mib"], rss["baseline_mib"], "process after imports + model load",
                        higher_is_better=False,
                        note=f"job +{rss['peak_mib'] - rss['baseline_mib']:.0f} MiB, {rss['seconds']:.1f}s"))
    return rows


CHILD = """
import json, time
from worker.methods import ExplainRequest, explain_request
from worker.models import load_model
from benchmarks.bench_generation import _prompt, _peak_mib
a = load_model("gpt2-rt", device="cpu")
a.model  # loaded now
text = _prompt(a, a.max_tokens + 1)  # the context, filled: 120 prompt tokens, 8 given
ids = a.encode({{"prompt": text}}).input_ids[0, 1:].tolist()
prompt, continuation = a.tokenizer.decode(ids[:119]), a.tokenizer.decode(ids[119:127])
baseline = _peak_mib()
t = time.perf_counter()
r = explain_request(a, ExplainRequest(inputs={{"prompt": prompt, "continuation": continuation}},
    methods=["integrated_gradients"], params={{"integrated_gradients": {{"steps": 32, "internal_batch_size": {batch}}}}}),
    figures=False).result
print(json.dumps({{"tokens": r["prompt_length"], "new": len(r["generation"]["token_ids"]),
    "seconds": time.perf_counter() - t, "baseline_mib": baseline, "peak_mib": _peak_mib()}}))
"""


def _peak_mib() -> float:
    """This process's peak RSS in MiB: VmHWM where /proc has it, else ru_maxrss (which may include the parent's)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_rss(batch: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD.format(batch=batch)], capture_output=True, text=True,
                         check=True, timeout=1800)
    return json.loads(out.stdout.strip().splitlines()[-1])
