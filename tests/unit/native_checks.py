"""Checks every word-level adapter (BiLSTM, CNN, Transformer, seq2seq) must pass; each test module calls them with
its own model."""
from __future__ import annotations

import torch

from worker.models.native import NativeAdapter

TEXTS = ["a rare bird has more than enough charm to make it memorable .",
         "dull .",
         "the plot is thin , but the acting is n't bad at all"]


def padded_equals_alone(adapter: NativeAdapter, inputs: list[dict[str, str]], atol: float = 1e-5) -> None:
    """A padded batch gives, at every real position, what each item gives alone (all layers and attention)."""
    names = adapter.step_order
    batch = adapter.encode(inputs)
    assert len(set(len(t) for t in batch.tokens)) > 1, "the batch must need padding"
    together = adapter.forward(adapter.embed(batch), batch, capture=names)
    for i in range(len(inputs)):
        one = adapter.encode(inputs[i])
        alone = adapter.forward(adapter.embed(one), one, capture=names)
        for name in adapter.layer_names:
            a, b = alone.layers[name][0], together.layers[name][i]
            if a.dim() >= 2:
                real = adapter.layer_mask(name, batch)[i]
                assert not b[~real].any(), f"{name}: padded positions must hold zeros"
                b = b[real]
            torch.testing.assert_close(b, a, atol=atol, rtol=1e-4, msg=f"{name} of item {i}")
        for name in adapter.attention_names:
            a = alone.attention[name][0]
            b = together.attention[name][i][..., : a.shape[-2], : a.shape[-1]]
            torch.testing.assert_close(b, a, atol=atol, rtol=1e-4, msg=f"{name} of item {i}")
            assert not together.attention[name][i][..., a.shape[-1]:].any(), "padded keys get weight 0"
        if adapter.labels is not None:
            torch.testing.assert_close(together.logits[i], alone.logits[0], atol=atol, rtol=1e-4)


def upto_stops_there(adapter: NativeAdapter, text: str, name: str, not_run: torch.nn.Module) -> None:
    """upto=name gives the full run's value of name, and the module `not_run` (deeper than name) never runs."""
    enc = adapter.encode({"text": text})
    x = adapter.embed(enc)
    full = adapter.forward(x, enc, capture=[name])
    calls = []
    handle = not_run.register_forward_hook(lambda *args: calls.append(1))
    try:
        short = adapter.forward(x, enc, capture=[name], upto=name)
    finally:
        handle.remove()
    assert calls == [], f"upto={name} ran a deeper module"
    assert short.logits is None
    assert torch.equal(short.layers[name], full.layers[name])
    full_run = adapter.forward(x, enc, capture=adapter.step_order)
    assert torch.equal(full_run.layers[name], full.layers[name])


def held_out_accuracy(adapter: NativeAdapter, rows: list[tuple[str, str]]) -> float:
    enc = adapter.encode([{"text": text} for text, _ in rows])
    with torch.no_grad():
        predicted = adapter.forward(adapter.embed(enc), enc).logits.argmax(-1)
    return sum(adapter.labels[int(p)] == label for p, (_, label) in zip(predicted, rows, strict=True)) / len(rows)


def gradient_explains(adapter: NativeAdapter, text: str) -> None:
    """The existing gradient method runs unchanged and agrees with autograd through the bare module."""
    from worker.methods import explain

    result = explain(adapter, {"text": text}, ["gradient"]).result
    scores = result["methods"]["gradient"]["scores"]
    enc = adapter.encode({"text": text})
    assert len(scores) == len(enc.tokens[0]) and result["words"] == [[t] for t in range(len(scores))]
    assert "faithfulness" in result["methods"]["gradient"]  # removing a word = <unk> (mask_token_id)
    x = adapter.embed(enc).requires_grad_(True)
    steps = dict(adapter.module.steps(x, **adapter.inputs(enc)))
    predicted = int(steps["output"][0].argmax())
    assert result["prediction"]["label"] == adapter.labels[predicted]
    (grad,) = torch.autograd.grad(steps["output"][0, predicted], x)
    torch.testing.assert_close(torch.tensor(scores), grad[0].abs().mean(-1), atol=1e-6, rtol=1e-4)
