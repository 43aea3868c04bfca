"""LRP as one modified backward pass: the rules of each layer written as forward operations whose value is the
layer's own output and whose gradient carries the rule (the "gradient × input" form of LRP used by zennit and lxt).

Invariant: at every tensor a of the forward pass, the relevance is R_a = a ⊙ g_a, where g_a is the (modified)
gradient of the seeded output. The rules then follow from how each operation passes g back:

- Linear / Conv (ε-rule, Bach et al. 2015): R_j = a_j Σ_k w_jk R_k / stab(z_k). With g_z = R_z / z this is the
  ordinary backward of z = Wa + b once g_z is scaled by z / stab(z): :func:`epsilon`, applied to a pre-activation z.
- Elementwise nonlinearity y = f(z) (identity rule: R_z = R_y): the backward multiplies by f(z) / z instead of
  f'(z): :func:`identity`. ReLU, tanh, GELU, SiLU and the LSTM's tanh all pass relevance this way.
- Multiplicative gates (Arras et al. 2017, "signal takes all"): y = gate ⊙ signal with the gate detached:
  :func:`gated`; the gate gets no relevance.
- Products of two activations (AttnLRP's uniform rule, Achtibat et al. 2024: QKᵀ and A·V): each factor gets half
  of the output's relevance: :func:`bilinear`.
- LayerNorm / RMSNorm (AttnLRP's identity rule for the normalisation): the divisor is treated as a constant:
  :func:`layer_norm`.
- Softmax (AttnLRP's rule R_x = x ⊙ (R_s − s Σ R_s)): exactly the ordinary softmax backward times x, so softmax is
  left as it is.
- Max-pooling: winner takes all, the ordinary backward of a max.

The relevance starts on the target logit with the value S(y) (:func:`seed`), and the input relevance is x ⊙ g_x.
Biases, positional embeddings, ε and the softmax rule are not conservative: what they take is reported as
``absorbed`` = S(y) − Σ R_x by the ``lrp`` method.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from worker.models.protocols import ScoreTarget


def stabilize(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """z + ε·sign(z) with sign(0) = +1 (Captum's stabiliser)."""
    return z + epsilon * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def _with_gradient(value: torch.Tensor, z: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """A tensor equal to `value` whose gradient to z is `factor` ⊙ (incoming gradient)."""
    return value.detach() + (z - z.detach()) * factor.detach()


def epsilon(z: torch.Tensor, eps: float) -> torch.Tensor:
    """The ε-rule on a linear layer's output z (bias included): the same value, backward scaled by z / stab(z)."""
    if eps == 0.0:
        return z
    return _with_gradient(z, z, z.detach() / stabilize(z.detach(), eps))


def identity(f: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    """y = f(z) with the identity rule R_z = R_y: backward multiplies by f(z)/z (at z = 0, where R_y = 0 too, by 0)."""
    y = f(z)
    zd = z.detach()
    ratio = torch.where(zd != 0, y.detach() / torch.where(zd != 0, zd, 1.0), 0.0)
    return _with_gradient(y, z, ratio)


def gated(gate: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
    """gate ⊙ signal with all relevance to the signal (Arras et al. 2017)."""
    return gate.detach() * signal


def bilinear(product: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], a: torch.Tensor, b: torch.Tensor
             ) -> torch.Tensor:
    """product(a, b) (a matmul) with each factor given half of the relevance (AttnLRP's uniform rule)."""
    y = product(a, b)
    return 0.5 * y + 0.5 * y.detach()


def layer_norm(h: torch.Tensor, norm: torch.nn.Module) -> torch.Tensor:
    """A LayerNorm (weight, bias, eps) with its standard deviation treated as a constant (AttnLRP)."""
    centred = h - h.mean(-1, keepdim=True)
    std = torch.sqrt(centred.detach().pow(2).mean(-1, keepdim=True) + norm.eps)
    out = centred / std
    if norm.weight is not None:
        out = out * norm.weight
    if getattr(norm, "bias", None) is not None:
        out = out + norm.bias
    return out


def seed(logits: torch.Tensor, target: ScoreTarget, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(the scalar whose gradient starts the relevance, S(y) per item): the target logit's unit carries S(y),
    passed on with the ε-rule (for ``score: probability | log_probability`` the same rules redistribute S(y))."""
    start = target(logits.detach())
    index = target.index.to(logits.device).view(-1, 1)
    z_y = logits.gather(1, index).squeeze(1)
    return (z_y * (start / stabilize(z_y.detach(), eps))).sum(), start


def input_relevance(x: torch.Tensor, forward: Callable[[torch.Tensor], torch.Tensor], target: ScoreTarget,
                    eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the rule-modified `forward` (x → logits) once and backward once: (R_x = x ⊙ g_x, S(y), logits)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = forward(x)
        total, start = seed(logits, target, eps)
        (grad,) = torch.autograd.grad(total, x)
    return x.detach() * grad, start.detach(), logits.detach()


def reverse_within(t: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """B×T×… with each item's first lengths[b] positions reversed (padding, at the end, stays): its own inverse."""
    positions = torch.arange(t.shape[1], device=t.device).unsqueeze(0)
    lengths = lengths.to(t.device).unsqueeze(1)
    index = torch.where(positions < lengths, lengths - 1 - positions, positions)
    return t.gather(1, index.view(*index.shape, *([1] * (t.dim() - 2))).expand_as(t))


def lstm_direction(lstm: torch.nn.LSTM, layer: int, reverse: bool, x: torch.Tensor, mask: torch.Tensor,
                   eps: float) -> torch.Tensor:
    """One direction of one layer of an ``nn.LSTM`` (gate order i, f, g, o) over the real tokens of each item
    (padding at the end), with the LSTM rules of Arras et al. 2017: ε-rule on the cell input's pre-activation and on
    the cell sum c = f⊙c' + i⊙g, signal-takes-all at the three gates, identity through tanh. B×T×H (zeros at
    padding); the value equals the ``nn.LSTM``'s."""
    suffix = f"_l{layer}" + ("_reverse" if reverse else "")
    w_ih, w_hh = getattr(lstm, "weight_ih" + suffix), getattr(lstm, "weight_hh" + suffix)
    bias = getattr(lstm, "bias_ih" + suffix) + getattr(lstm, "bias_hh" + suffix)
    lengths = mask.sum(1)
    if reverse:
        x, mask = reverse_within(x, lengths), reverse_within(mask, lengths)
    h = x.new_zeros(x.shape[0], w_hh.shape[1])
    c = torch.zeros_like(h)
    inputs = x @ w_ih.T  # the input part of every step's pre-activation, at once
    outputs = []
    for t in range(x.shape[1]):
        z_i, z_f, z_g, z_o = (inputs[:, t] + h @ w_hh.T + bias).chunk(4, -1)
        g = identity(torch.tanh, epsilon(z_g, eps))
        c_new = epsilon(gated(torch.sigmoid(z_f), c) + gated(torch.sigmoid(z_i), g), eps)
        h_new = gated(torch.sigmoid(z_o), identity(torch.tanh, c_new))
        real = mask[:, t : t + 1]
        h, c = torch.where(real, h_new, h), torch.where(real, c_new, c)
        outputs.append(h_new * real)
    out = torch.stack(outputs, 1)
    return reverse_within(out, lengths) if reverse else out


def lstm(module: torch.nn.LSTM, x: torch.Tensor, mask: torch.Tensor, eps: float) -> torch.Tensor:
    """Every layer and direction of an ``nn.LSTM`` (batch_first) under the LSTM rules: B×T×(directions·H)."""
    h = x
    for layer in range(module.num_layers):
        directions = [lstm_direction(module, layer, False, h, mask, eps)]
        if module.bidirectional:
            directions.append(lstm_direction(module, layer, True, h, mask, eps))
        h = torch.cat(directions, -1)
    return h


class Ops:
    """The operations a forward pass is written with, so that one forward serves both the model's own run
    (:data:`PLAIN`) and LRP's rule-modified run (:class:`Rules`): same values, different backward."""

    rules = False

    def linear(self, z: torch.Tensor) -> torch.Tensor:
        """The output of a linear layer (bias included)."""
        return z

    def act(self, f: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor) -> torch.Tensor:
        """An elementwise nonlinearity."""
        return f(z)

    def matmul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """A product of two activations (attention scores, attention-weighted values)."""
        return a @ b

    def mul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """An elementwise product of two activations."""
        return a * b

    def norm(self, h: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
        """A LayerNorm module applied to h."""
        return module(h)


PLAIN = Ops()


class Rules(Ops):
    """The LRP rules of the module docstring, ε for the linear layers."""

    rules = True

    def __init__(self, eps: float) -> None:
        self.eps = eps

    def linear(self, z: torch.Tensor) -> torch.Tensor:
        return epsilon(z, self.eps)

    def act(self, f: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor) -> torch.Tensor:
        return identity(f, z)

    def matmul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return bilinear(torch.matmul, a, b)

    def mul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return bilinear(torch.mul, a, b)

    def norm(self, h: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
        return layer_norm(h, module)
