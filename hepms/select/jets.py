"""Per-event jet helpers in torch: padding and the two leading candidates.

These run inside the candidate models (on flat jets + ``jet_offsets``), so they must be vectorised
and differentiable; the pair mass of two candidates is :func:`hepms.physics.pair_mass`, which
takes torch tensors too.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from hepms.ops import segment_ids

__all__ = ["event_ids", "pad_jets", "Candidates", "leading_two"]


def event_ids(jet_offsets: Tensor, num_jets: int) -> tuple[Tensor, Tensor]:
    """``(event [B], position [B])``: the event of each jet and its index within that event."""
    event = segment_ids(jet_offsets, num_jets)
    position = torch.arange(num_jets, device=jet_offsets.device) - jet_offsets[:-1][event]
    return event, position


def pad_jets(values: Tensor, jet_offsets: Tensor, fill: float = 0.0) -> tuple[Tensor, Tensor]:
    """``values [B, F]`` -> ``(dense [E, J, F], mask [E, J])`` with ``J`` the largest jet count."""
    num_events = jet_offsets.shape[0] - 1
    counts = jet_offsets[1:] - jet_offsets[:-1]
    width = int(counts.max()) if num_events > 0 else 0
    event, position = event_ids(jet_offsets, values.shape[0])
    dense = values.new_full((num_events, max(width, 1), values.shape[1]), fill)
    dense = dense.index_put((event, position), values)
    mask = torch.zeros((num_events, max(width, 1)), dtype=torch.bool, device=values.device)
    mask[event, position] = True
    return dense, mask


class Candidates(NamedTuple):
    """The two leading jets of each event by some score.

    Attributes:
        index: int64 ``[E, 2]`` flat jet indices (0 where ``valid`` is False).
        valid: bool ``[E, 2]``: the event has that many jets.
    """

    index: Tensor
    valid: Tensor

    def gather(self, values: Tensor) -> Tensor:
        """``values [B, F]`` -> ``[E, 2, F]`` of the candidates, zeros for missing ones."""
        picked = values.index_select(0, self.index.reshape(-1)).reshape(*self.index.shape, -1)
        return picked * self.valid.unsqueeze(-1).to(values.dtype)


def leading_two(score: Tensor, jet_offsets: Tensor) -> Candidates:
    """The two jets with the highest ``score`` in each event (ranking is not differentiated)."""
    dense, mask = pad_jets(score.detach().reshape(-1, 1), jet_offsets)
    dense = dense[..., 0].masked_fill(~mask, float("-inf"))
    if dense.shape[1] < 2:
        dense = torch.nn.functional.pad(dense, (0, 2 - dense.shape[1]), value=float("-inf"))
    top, position = torch.topk(dense, 2, dim=1)
    valid = torch.isfinite(top)
    index = jet_offsets[:-1].unsqueeze(1) + position
    index = torch.where(valid, index, torch.zeros_like(index))
    return Candidates(index, valid)
