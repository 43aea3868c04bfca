"""Long inputs: over the model's token limit is refused with a clear message; the largest allowed input runs the
gradient family, attention and faithfulness with memory bounded (checked in a child process's peak RSS)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from worker.models import InputError

WORDS = "the film is a quiet , moving study of grief and memory that earns every one of its small moments".split()


def text_of(tokens: int, adapter) -> str:
    """A text that encodes to exactly `tokens` tokens ([CLS] and [SEP] included)."""
    words = []
    while adapter.count_tokens({"text": " ".join(words + [WORDS[len(words) % len(WORDS)]])}) <= tokens:
        words.append(WORDS[len(words) % len(WORDS)])
    text = " ".join(words)
    assert adapter.count_tokens({"text": text}) == tokens
    return text


def test_over_the_limit_is_refused_clearly(minilm_rt):
    assert minilm_rt.max_tokens == 512
    with pytest.raises(InputError, match="513 tokens; minilm-rt takes at most 512"):
        minilm_rt.encode({"text": text_of(513, minilm_rt)})


@pytest.mark.slow
def test_largest_input_runs_with_bounded_memory(minilm_rt):
    text = text_of(512, minilm_rt)
    script = textwrap.dedent(f"""
        import json, resource, torch
        torch.set_num_threads(2)
        from worker.models import load_model
        from worker.methods import explain
        adapter = load_model("minilm-rt").load()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        ex = explain(adapter, {{"text": {text!r}}}, ["gradient", "integrated_gradients", "attention_rollout"],
                     params={{"integrated_gradients": {{"steps": 8, "internal_batch_size": 8}}}})
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        faith = ex.result["methods"]["gradient"]["faithfulness"]
        print(json.dumps({{"tokens": len(ex.result["tokens"]), "grown_mb": (after - before) / 1024,
                          "k": faith["k"]}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["tokens"] == 512 and out["k"] == [6, 26, 51, 102, 255]
    assert out["grown_mb"] < 2048, out  # 8 rows × 512 tokens of MiniLM activations + 21 faithfulness rows
