"""The BERT family's forward pass written with :class:`worker.models.relevance.Ops`, so that LRP can run it under
AttnLRP's rules (Achtibat et al. 2024) with the Hugging Face model's own weights: embeddings (word + position +
token type → LayerNorm), every ``BertLayer`` (Q, K, V → softmax(QKᵀ/√d + mask) → A·V → dense + residual →
LayerNorm → intermediate + activation → dense + residual → LayerNorm), then the head: Lantern's mean-pool head or
BERT's own pooler (tanh of a dense layer on [CLS]) and classifier.

With :data:`~worker.models.relevance.PLAIN` it computes the model's logits (a test holds it to the model's own
forward); it is used only with :class:`~worker.models.relevance.Rules`. Position and token-type embeddings, the
embedding LayerNorm's bias and every bias take their share of S(y) (``absorbed``).
"""
from __future__ import annotations

import math
from typing import Any

import torch

from worker.models.relevance import Ops

MODEL_TYPES = ("bert",)  # MiniLM, BERT and the checkpoints that load as BertModel


def supports(config: Any) -> bool:
    """Whether the rules cover this encoder (absolute positions, the BertModel layout)."""
    return getattr(config, "model_type", None) in MODEL_TYPES and \
        getattr(config, "position_embedding_type", "absolute") == "absolute"


def encoder_states(encoder: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor, token_types: torch.Tensor | None,
                   ops: Ops) -> torch.Tensor:
    """x B×T×K word embeddings, mask B×T bool -> the last hidden states B×T×H."""
    emb = encoder.embeddings
    length = x.shape[1]
    positions = torch.arange(length, device=x.device).unsqueeze(0)
    types = token_types if token_types is not None else torch.zeros_like(positions)
    h = ops.norm(x + emb.position_embeddings(positions) + emb.token_type_embeddings(types.to(x.device)),
                 emb.LayerNorm)
    blocked = (~mask)[:, None, None, :].to(h.dtype) * torch.finfo(h.dtype).min
    for layer in encoder.encoder.layer:
        h = _layer(layer, h, blocked, ops)
    return h


def _layer(layer: torch.nn.Module, h: torch.Tensor, blocked: torch.Tensor, ops: Ops) -> torch.Tensor:
    attention = layer.attention.self
    batch, length, size = h.shape
    heads = attention.num_attention_heads
    head_size = size // heads

    def split(t: torch.Tensor) -> torch.Tensor:  # B×T×H -> B×heads×T×d
        return t.view(batch, length, heads, head_size).transpose(1, 2)

    q = split(ops.linear(attention.query(h)))
    k = split(ops.linear(attention.key(h)))
    v = split(ops.linear(attention.value(h)))
    weights = (ops.matmul(q, k.transpose(-1, -2)) / math.sqrt(head_size) + blocked).softmax(-1)
    context = ops.matmul(weights, v).transpose(1, 2).reshape(batch, length, size)
    out = layer.attention.output
    h = ops.norm(ops.linear(out.dense(context)) + h, out.LayerNorm)
    inner = ops.act(layer.intermediate.intermediate_act_fn, ops.linear(layer.intermediate.dense(h)))
    return ops.norm(ops.linear(layer.output.dense(inner)) + h, layer.output.LayerNorm)


def mean_pool_logits(head: torch.nn.Module, states: torch.Tensor, mask: torch.Tensor, ops: Ops) -> torch.Tensor:
    """Lantern's :class:`~worker.models.hf.MeanPoolHead` on the last hidden states (the standardisation is an
    elementwise affine map: a linear layer for the rules)."""
    real = mask.unsqueeze(-1).to(states.dtype)
    pooled = (states * real).sum(1) / real.sum(1).clamp_min(1.0)
    z = ops.linear((pooled - head.mean) / head.std)
    if head.hidden_size:
        return head.fc2(ops.act(torch.nn.functional.gelu, ops.linear(head.fc1(z))))
    return head.fc(z)


def classifier_logits(model: torch.nn.Module, states: torch.Tensor, ops: Ops) -> torch.Tensor:
    """BertForSequenceClassification's pooler (tanh of a dense layer on [CLS]) and classifier."""
    pooler = model.base_model.pooler
    pooled = ops.act(torch.tanh, ops.linear(pooler.dense(states[:, 0])))
    return model.classifier(pooled)
