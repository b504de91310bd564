"""Building blocks: multilayer perceptrons and set pooling through the hepms segment ops."""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import Tensor, nn

from hepms.ops import segment_amax, segment_mean, segment_mean_max, segment_softmax, segment_sum

__all__ = ["mlp", "Pooling", "AttentionPooling", "POOLING_MODES"]

POOLING_MODES = ("sum", "mean", "max", "attention")
_ACTIVATIONS = {"relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU, "tanh": nn.Tanh}


def check_sizes(name: str, sizes: Sequence[int]) -> tuple[int, ...]:
    """``sizes`` (an int or a sequence) as a tuple of layer widths; ``ValueError`` naming ``name`` otherwise."""
    if isinstance(sizes, int):
        sizes = (sizes,)
    sizes = tuple(sizes)
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"{name}: layer sizes must be positive integers, got {sizes}")
    return sizes


def mlp(
    in_features: int,
    sizes: Sequence[int],
    activation: Optional[str] = "relu",
    final_activation: bool = True,
    name: str = "mlp",
) -> nn.Sequential:
    """``Linear -> activation`` for each entry of ``sizes``.

    Args:
        in_features: input width.
        sizes: output width of each layer; empty gives an identity (an empty ``Sequential``).
        activation: ``"relu"``, ``"elu"``, ``"gelu"``, ``"tanh"`` or ``None``/``"linear"`` (no
            activation: the slides' "Linear" layers).
        final_activation: apply the activation after the last layer too (False for logits).
        name: used in error messages.
    """
    if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 1:
        raise ValueError(f"{name}: in_features must be a positive integer, got {in_features!r}")
    sizes = check_sizes(name, sizes)
    if activation in (None, "linear", "none"):
        make = None
    elif activation in _ACTIVATIONS:
        make = _ACTIVATIONS[activation]
    else:
        raise ValueError(
            f"{name}: unknown activation {activation!r}; choose from "
            f"{sorted(_ACTIVATIONS) + ['linear']}"
        )
    layers: List[nn.Module] = []
    width = in_features
    for i, size in enumerate(sizes):
        layers.append(nn.Linear(width, size))
        last = i == len(sizes) - 1
        if make is not None and (final_activation or not last):
            layers.append(make())
        width = size
    return nn.Sequential(*layers)


def mlp_out_features(module: nn.Sequential, in_features: int) -> int:
    """Output width of an :func:`mlp` (``in_features`` for an empty one)."""
    width = in_features
    for layer in module:
        if isinstance(layer, nn.Linear):
            width = layer.out_features
    return width


def last_linear(module: nn.Sequential) -> nn.Linear:
    """The last ``nn.Linear`` of an :func:`mlp`."""
    linears = [layer for layer in module if isinstance(layer, nn.Linear)]
    if not linears:
        raise ValueError("the MLP has no Linear layer")
    return linears[-1]


class AttentionPooling(nn.Module):
    """Attention pooling with learned queries: a weighted sum over each set's rows.

    For head ``h`` (of ``heads``), row ``i`` of a set gets the score
    ``s_ih = <query_h, key(x_i)_h> / sqrt(d)`` (``d = F / heads``); the weights are the softmax of
    the scores over the rows of the set (:func:`hepms.segment_softmax`), and the set's output is
    ``sum_i w_ih value(x_i)_h``, the heads concatenated: ``[B, F]``. ``key`` and ``value`` are
    linear maps ``F -> F``. Empty sets pool to 0. This is the pooling by multi-head attention of
    set transformers and particle transformers' class attention, with one learned query per head.

    Args:
        in_features: width ``F`` of the rows (a multiple of ``heads``).
        heads: number of attention heads.
    """

    def __init__(self, in_features: int, heads: int = 1) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("heads", heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"AttentionPooling: {name} must be a positive integer, got {value!r}")
        if in_features % heads:
            raise ValueError(
                f"AttentionPooling: in_features ({in_features}) must be a multiple of heads ({heads})"
            )
        self.heads = heads
        self.head_features = in_features // heads
        self.key = nn.Linear(in_features, in_features)
        self.value = nn.Linear(in_features, in_features)
        self.query = nn.Parameter(torch.randn(heads, self.head_features) / self.head_features**0.5)

    def forward(self, values: Tensor, offsets: Tensor) -> Tensor:
        rows = values.shape[0]
        keys = self.key(values).view(rows, self.heads, self.head_features)
        scores = (keys * self.query).sum(-1) / self.head_features**0.5  # [N, heads]
        weights = segment_softmax(scores, offsets)
        weighted = self.value(values).view(rows, self.heads, self.head_features) * weights.unsqueeze(-1)
        return segment_sum(weighted.view(rows, self.heads * self.head_features), offsets)

    def extra_repr(self) -> str:
        return f"heads={self.heads}, head_features={self.head_features}"


class Pooling(nn.Module):
    """Pools each set of rows with one or several of sum / mean / max / attention, concatenated.

    Runs on flat ``values [N, F]`` + ``offsets [B + 1]`` through :func:`hepms.segment_sum`,
    :func:`hepms.segment_mean`, :func:`hepms.segment_amax` (the max without its arg-max) and :class:`AttentionPooling` (empty
    sets pool to 0); ``("mean", "max")`` runs as the single op :func:`hepms.segment_mean_max`.

    Args:
        modes: non-empty sequence of ``"sum"``, ``"mean"``, ``"max"``, ``"attention"`` (output
            columns in this order: ``[B, F * len(modes)]``).
        in_features: row width ``F``; needed by ``"attention"``, which has parameters.
        attention_heads: heads of the attention pooling.
    """

    def __init__(
        self,
        modes: Sequence[str] = ("mean", "max"),
        in_features: Optional[int] = None,
        attention_heads: int = 1,
    ) -> None:
        super().__init__()
        if isinstance(modes, str):
            modes = (modes,)
        modes = list(modes)
        if not modes:
            raise ValueError("Pooling needs at least one mode")
        bad = [m for m in modes if m not in POOLING_MODES]
        if bad:
            raise ValueError(f"unknown pooling mode(s) {bad}; choose from {POOLING_MODES}")
        if len(set(modes)) != len(modes):
            raise ValueError(f"pooling modes repeat: {modes}")
        self.modes = modes
        self.attention: Optional[AttentionPooling] = None
        if "attention" in modes:
            if in_features is None:
                raise ValueError("Pooling: mode 'attention' needs in_features (the row width)")
            self.attention = AttentionPooling(in_features, attention_heads)

    @property
    def multiplier(self) -> int:
        return len(self.modes)

    def forward(self, values: Tensor, offsets: Tensor) -> Tensor:
        if self.modes == ["mean", "max"]:
            # The default pooling as one op: the same numbers as mean and max concatenated, and a
            # backward that writes both gradients in one pass (no concatenation, no [N, F] add).
            return segment_mean_max(values, offsets)
        pooled: List[Tensor] = []
        for mode in self.modes:
            if mode == "sum":
                pooled.append(segment_sum(values, offsets))
            elif mode == "mean":
                pooled.append(segment_mean(values, offsets))
            elif mode == "max":
                pooled.append(segment_amax(values, offsets))
            else:
                attention = self.attention
                if attention is not None:
                    pooled.append(attention(values, offsets))
        if len(pooled) == 1:
            return pooled[0]
        return torch.cat(pooled, dim=1)

    def extra_repr(self) -> str:
        return f"modes={self.modes}"
