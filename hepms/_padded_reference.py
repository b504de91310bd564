"""Padded + masked reference implementation of the :mod:`hepms.nn` models (same modules, same weights).

Not part of the public API: a reference for tests and benchmarks, as :mod:`hepms._reference` is
for the segment ops.

Sets are stored as dense ``[B, L, F]`` tensors with a boolean mask ``[B, L]``, the way
fixed-length pipelines do it (e.g. 8 jets x 50 constituents). The functions here run the *same*
sub-modules of :class:`~hepms.nn.DeepSets`, :class:`~hepms.nn.TauID`,
:class:`~hepms.nn.EventClassifier` and :class:`~hepms.nn.MultiStep` on such tensors, so the two
paths share parameters (and parameter names) by construction. Used in tests to prove the jagged
implementation equivalent, and in ``benchmarks/train.py`` to measure what jagged pooling saves:
the padded path computes every network on every padded slot and pools with masks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from hepms.nn.deepsets import DeepSets, EquivariantBlock
from hepms.nn.layers import AttentionPooling, Pooling
from hepms.ops import segment_ids
from hepms.nn.models import MultiStep, MultiStepOutput

__all__ = [
    "pad",
    "PaddedBatch",
    "pool_padded",
    "block_padded",
    "deepsets_padded",
    "multistep_padded",
]


def pad(values: Tensor, offsets: Tensor, max_len: Optional[int] = None) -> tuple[Tensor, Tensor]:
    """Flat sets -> ``(padded [B, L, F] zeros-filled, mask [B, L])``, vectorised.

    Args:
        values: ``[N, F]``.
        offsets: int64 ``[B + 1]``.
        max_len: ``L``; default the longest set. Sets longer than ``max_len`` raise.
    """
    counts = offsets[1:] - offsets[:-1]
    longest = int(counts.max()) if counts.numel() else 0
    length = longest if max_len is None else int(max_len)
    if longest > length:
        raise ValueError(f"a set has {longest} elements, more than max_len={length}")
    n_sets = counts.shape[0]
    ids = segment_ids(offsets, values.shape[0])
    position = torch.arange(values.shape[0], device=values.device) - offsets[:-1].index_select(0, ids)
    padded = values.new_zeros((n_sets, length, values.shape[1]))
    padded[ids, position] = values
    mask = torch.zeros((n_sets, length), dtype=torch.bool, device=values.device)
    mask[ids, position] = True
    return padded, mask


@dataclass
class PaddedBatch:
    """A :class:`hepms.data.TauEventData` padded to ``max_jets`` x ``max_constituents``.

    Attributes:
        constituents: ``[E, J, C, F_c]``.
        constituent_mask: ``[E, J, C]``.
        jet_features: ``[E, J, F_j]``.
        jet_mask: ``[E, J]``.
        jet_labels: ``[E, J]`` (0 in padded slots).
        event_labels: ``[E]``.
    """

    constituents: Tensor
    constituent_mask: Tensor
    jet_features: Tensor
    jet_mask: Tensor
    jet_labels: Tensor
    event_labels: Tensor

    @classmethod
    def from_data(cls, data, max_jets: int = 8, max_constituents: int = 50) -> "PaddedBatch":
        """Pad every jet to ``max_constituents`` and every event to ``max_jets`` jets."""
        parts, part_mask = pad(data.constituents.values, data.constituents.offsets, max_constituents)
        jet_offsets = data.jet_offsets
        # Pad the per-jet tensors at the event level; the constituent blocks ride along as
        # flattened rows [C * F_c] (and [C] for the mask).
        n_jets = parts.shape[0]
        c, f = parts.shape[1], parts.shape[2]
        stacked = torch.cat(
            [
                parts.reshape(n_jets, c * f),
                part_mask.to(parts.dtype),
                data.jet_features,
                data.jet_labels.reshape(-1, 1).to(parts.dtype),
            ],
            dim=1,
        )
        padded, jet_mask = pad(stacked, jet_offsets, max_jets)
        e, j = padded.shape[0], padded.shape[1]
        cf, cm = c * f, c * f + c
        f_j = data.jet_features.shape[1]
        return cls(
            constituents=padded[:, :, :cf].reshape(e, j, c, f).contiguous(),
            constituent_mask=padded[:, :, cf:cm] > 0.5,
            jet_features=padded[:, :, cm : cm + f_j].contiguous(),
            jet_mask=jet_mask,
            jet_labels=padded[:, :, cm + f_j].contiguous(),
            event_labels=data.event_labels,
        )

    def slice(self, start: int, stop: int) -> "PaddedBatch":
        """Events ``start:stop`` (views)."""
        return PaddedBatch(
            self.constituents[start:stop],
            self.constituent_mask[start:stop],
            self.jet_features[start:stop],
            self.jet_mask[start:stop],
            self.jet_labels[start:stop],
            self.event_labels[start:stop],
        )

    def __len__(self) -> int:
        return self.event_labels.shape[0]

    def to(self, device) -> "PaddedBatch":
        return PaddedBatch(*(t.to(device) for t in (
            self.constituents, self.constituent_mask, self.jet_features, self.jet_mask,
            self.jet_labels, self.event_labels)))


def pool_padded(pool: Pooling, x: Tensor, mask: Tensor) -> Tensor:
    """Masked pooling of ``x [B, L, F]``: the padded twin of :class:`Pooling` (empty sets -> 0)."""
    m = mask.unsqueeze(-1).to(x.dtype)
    counts = m.sum(1)
    outs = []
    for mode in pool.modes:
        if mode == "sum":
            outs.append((x * m).sum(1))
        elif mode == "mean":
            outs.append((x * m).sum(1) / counts.clamp_min(1))
        elif mode == "attention":
            outs.append(attention_padded(pool.attention, x, mask))
        else:
            filled = x.masked_fill(~mask.unsqueeze(-1), float("-inf"))
            best = filled.max(dim=1).values
            outs.append(torch.where(counts > 0, best, torch.zeros_like(best)))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)


def attention_padded(attention: AttentionPooling, x: Tensor, mask: Tensor) -> Tensor:
    """:class:`AttentionPooling` on padded sets: a softmax over the set axis with the padding
    masked to -inf (empty sets -> 0)."""
    sets, length, _ = x.shape
    heads, width = attention.heads, attention.head_features
    keys = attention.key(x).view(sets, length, heads, width)
    scores = (keys * attention.query).sum(-1) / width**0.5  # [B, L, heads]
    scores = scores.masked_fill(~mask.unsqueeze(-1), float("-inf"))
    weights = torch.where(mask.unsqueeze(-1), scores.softmax(1), torch.zeros_like(scores))
    values = attention.value(x).view(sets, length, heads, width)
    return (weights.unsqueeze(-1) * values).sum(1).reshape(sets, heads * width)


def block_padded(block: EquivariantBlock, x: Tensor, mask: Tensor) -> Tensor:
    """:class:`EquivariantBlock` on padded sets."""
    u = block.phi_a(x)
    pooled = pool_padded(block.pool, u, mask)
    # The same decomposition of phi_b's first layer as the jagged block (W_u u + W_p pooled,
    # the per-set term broadcast over the padded length): the comparison measures padding, not
    # a different way to write the layer.
    first = block.phi_b[0]
    width = u.shape[-1]
    h = F.linear(u, first.weight[:, :width], first.bias)
    h = h + F.linear(pooled, first.weight[:, width:]).unsqueeze(1)
    for layer in list(block.phi_b)[1:]:
        h = layer(h)
    return h


def deepsets_padded(
    ds: DeepSets, x: Tensor, mask: Tensor, set_features: Optional[Tensor] = None
) -> Tensor:
    """:class:`DeepSets` on padded sets ``x [..., L, F]`` with ``mask [..., L]``."""
    lead = x.shape[:-2]
    x = x.reshape(-1, x.shape[-2], x.shape[-1])
    mask = mask.reshape(-1, mask.shape[-1])
    h = ds.phi(x)
    for block in ds.blocks:
        h = block_padded(block, h, mask)
    pooled = ds.post_pool(pool_padded(ds.pool, h, mask))
    if ds.set_features > 0:
        assert set_features is not None
        pooled = torch.cat([pooled, set_features.reshape(-1, set_features.shape[-1])], dim=-1)
    out = ds.rho(pooled)
    return out.reshape(*lead, out.shape[-1])


def multistep_padded(
    model: MultiStep, batch: PaddedBatch, truth_intermediate: Optional[Tensor] = None
) -> MultiStepOutput:
    """:class:`MultiStep` on a :class:`PaddedBatch`.

    Returns the same fields as the jagged model but padded: ``tau_logit [E, J]``,
    ``intermediate [E, J, k]``, ``momentum [E, J, R]`` (garbage in padded jet slots: select with
    ``batch.jet_mask``) and ``event_logit [E]``. ``truth_intermediate`` is ``[E, J, k]``.
    """
    tau = model.tau
    embedding = deepsets_padded(
        tau.deepsets, batch.constituents, batch.constituent_mask, batch.jet_features
    )
    out = tau.head(embedding)
    if tau.regression_outputs > 0:
        momentum = tau.regression(embedding)
    else:
        momentum = embedding.new_zeros((*embedding.shape[:-1], 0))
    if model.additional:
        tau_logit, intermediate = model.aux(out)[..., 0], out
    else:
        tau_logit, intermediate = out[..., 0], torch.sigmoid(out)
    if truth_intermediate is not None:
        intermediate = truth_intermediate
    jets = torch.cat([batch.jet_features, intermediate], dim=-1)
    event_logit = deepsets_padded(model.event.deepsets, jets, batch.jet_mask)[:, 0]
    return MultiStepOutput(tau_logit, intermediate, event_logit, momentum)
