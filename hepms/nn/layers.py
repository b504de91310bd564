"""Building blocks: multilayer perceptrons and set pooling through the hepms segment ops."""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import Tensor, nn

import hepms

__all__ = ["mlp", "Pooling", "POOLING_MODES", "segment_ids"]

POOLING_MODES = ("sum", "mean", "max")
_ACTIVATIONS = {"relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU, "tanh": nn.Tanh}


def _check_sizes(name: str, sizes: Sequence[int]) -> tuple[int, ...]:
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
    sizes = _check_sizes(name, sizes)
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


def segment_ids(offsets: Tensor, num_rows: int) -> Tensor:
    """int64 ``[num_rows]``: the set each row belongs to (``output_size`` avoids a GPU sync)."""
    counts = offsets[1:] - offsets[:-1]
    return torch.repeat_interleave(counts, output_size=num_rows)


class Pooling(nn.Module):
    """Pools each set of rows with one or several of sum / mean / max, concatenated.

    Runs on flat ``values [N, F]`` + ``offsets [B + 1]`` through :func:`hepms.segment_sum`,
    :func:`hepms.segment_mean` and :func:`hepms.segment_max` (empty sets pool to 0).

    Args:
        modes: non-empty sequence of ``"sum"``, ``"mean"``, ``"max"`` (output columns in this
            order: ``[B, F * len(modes)]``).
    """

    def __init__(self, modes: Sequence[str] = ("mean", "max")) -> None:
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

    @property
    def multiplier(self) -> int:
        return len(self.modes)

    def forward(self, values: Tensor, offsets: Tensor) -> Tensor:
        pooled: List[Tensor] = []
        for mode in self.modes:
            if mode == "sum":
                pooled.append(hepms.segment_sum(values, offsets))
            elif mode == "mean":
                pooled.append(hepms.segment_mean(values, offsets))
            else:
                pooled.append(hepms.segment_max(values, offsets)[0])
        if len(pooled) == 1:
            return pooled[0]
        return torch.cat(pooled, dim=1)

    def extra_repr(self) -> str:
        return f"modes={self.modes}"
