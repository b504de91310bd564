"""Variable-length DeepSets on flat values + CSR offsets: no padding anywhere.

``DeepSets`` = per-element network ``phi`` -> equivariant blocks -> pooling per set -> optional
``post_pool`` network -> concatenation of per-set global features -> network ``rho``.

An :class:`EquivariantBlock` is ``phi_a`` per element -> pool per set -> broadcast the pooled
vector back to the set's elements -> concatenate with each element -> ``phi_b`` per element. It
lets every element see its set (the study's "x 2" blocks); the output stays one row per element.
The concatenation is never materialised: ``phi_b``'s first linear layer is split into its element
and set parts, the set part is applied once per set and broadcast back with
``torch.ops.hepms.segment_gather`` (whose gradient is a segment sum).

All modules are scriptable with ``torch.jit.script`` and compile with ``torch.compile`` (the
segment ops have TorchScript and fake-tensor support).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hepms.nn.layers import Pooling, mlp, mlp_out_features

__all__ = ["EquivariantBlock", "DeepSets"]


class EquivariantBlock(nn.Module):
    """Permutation-equivariant block: ``phi_b([phi_a(x_i), pool_j(phi_a(x_j))])``.

    Args:
        in_features: width of the element rows.
        sizes_a: layer sizes of ``phi_a`` (per element, before pooling).
        sizes_b: layer sizes of ``phi_b`` (per element, on ``[phi_a(x), pooled]``).
        pool: pooling modes (see :class:`~hepms.nn.layers.Pooling`).
        activation: activation after every layer of both networks; ``None`` (the default, the
            slides' "Linear") for none.
    """

    def __init__(
        self,
        in_features: int,
        sizes_a: Sequence[int] = (32,),
        sizes_b: Sequence[int] = (32,),
        pool: Sequence[str] = ("mean", "max"),
        activation: Optional[str] = None,
    ) -> None:
        super().__init__()
        self.phi_a = mlp(in_features, sizes_a, activation, final_activation=True, name="phi_a")
        width_a = mlp_out_features(self.phi_a, in_features)
        self.pool = Pooling(pool, in_features=width_a)
        self.phi_b = mlp(
            width_a * (1 + self.pool.multiplier), sizes_b, activation, True, name="phi_b"
        )
        self.out_features = mlp_out_features(self.phi_b, width_a * (1 + self.pool.multiplier))

    def forward(self, values: Tensor, offsets: Tensor) -> Tensor:
        """``values [N, F]``, ``offsets [B + 1]`` -> ``[N, F']``."""
        u = self.phi_a(values)
        # Pool first: the segment op validates the offsets (unless disabled).
        pooled = self.pool(u, offsets)
        # phi_b's first layer on [u, broadcast(pooled)] is W_u u + W_p pooled[set] + b: apply
        # W_p once per set and broadcast the result (segment_gather, whose backward is a
        # segment sum) instead of materialising the [N, F_a * (1 + m)] concatenation. Same
        # parameters, same function.
        first = self.phi_b[0]
        width = u.shape[1]
        h = F.linear(u, first.weight[:, :width], first.bias)
        per_set = F.linear(pooled, first.weight[:, width:]).contiguous()
        # The raw op takes int64 only; the pooling wrappers above accept int32 offsets too.
        h = h + torch.ops.hepms.segment_gather(per_set, offsets.long(), values.shape[0], False)
        index = 0
        for layer in self.phi_b:
            if index > 0:
                h = layer(h)
            index += 1
        return h


class DeepSets(nn.Module):
    """DeepSets over variable-length sets given as ``values [N, F]`` + ``offsets [B + 1]``.

    ``out[b] = rho([post_pool(pool(blocks(phi(x_i)) for i in set b)), set_features[b]])``

    Args:
        in_features: width ``F`` of the element rows.
        phi: layer sizes of the per-element network.
        phi_activation: its activation (applied after every layer, the last one included).
        blocks: number of :class:`EquivariantBlock` after ``phi`` (0 for plain DeepSets).
        block_sizes: ``(sizes_a, sizes_b)`` of every block.
        block_activation: activation inside the blocks (``None``: linear, as in the slides).
        pool: pooling modes for the final pooling (and the blocks, unless ``block_pool``).
        block_pool: pooling modes inside the blocks (default: ``pool``).
        post_pool: layer sizes of a network applied to the pooled vector before the global
            features are appended (empty: none).
        post_pool_activation: its activation (``None``: linear).
        set_features: number of per-set global features concatenated after pooling (0: none).
        rho: layer sizes of the network on the pooled (+ global) vector.
        rho_activation: its activation.
        rho_final_activation: apply it after the last layer too (False for logits).
    """

    def __init__(
        self,
        in_features: int,
        phi: Sequence[int] = (32, 32, 32),
        phi_activation: Optional[str] = "relu",
        blocks: int = 2,
        block_sizes: tuple[Sequence[int], Sequence[int]] = ((32,), (32,)),
        block_activation: Optional[str] = None,
        pool: Sequence[str] = ("mean", "max"),
        block_pool: Optional[Sequence[str]] = None,
        post_pool: Sequence[int] = (),
        post_pool_activation: Optional[str] = None,
        set_features: int = 0,
        rho: Sequence[int] = (64, 32, 1),
        rho_activation: Optional[str] = "relu",
        rho_final_activation: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 1:
            raise ValueError(f"DeepSets: in_features must be a positive integer, got {in_features!r}")
        if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 0:
            raise ValueError(f"DeepSets: blocks must be a non-negative integer, got {blocks!r}")
        if isinstance(set_features, bool) or not isinstance(set_features, int) or set_features < 0:
            raise ValueError(
                f"DeepSets: set_features must be a non-negative integer, got {set_features!r}"
            )
        if len(block_sizes) != 2:
            raise ValueError(f"DeepSets: block_sizes must be (sizes_a, sizes_b), got {block_sizes}")
        self.in_features = in_features
        self.set_features = set_features
        self.phi = mlp(in_features, phi, phi_activation, final_activation=True, name="phi")
        width = mlp_out_features(self.phi, in_features)
        block_list = []
        for _ in range(blocks):
            block = EquivariantBlock(
                width,
                block_sizes[0],
                block_sizes[1],
                pool if block_pool is None else block_pool,
                block_activation,
            )
            block_list.append(block)
            width = block.out_features
        self.blocks = nn.ModuleList(block_list)
        self.pool = Pooling(pool, in_features=width)
        width *= self.pool.multiplier
        self.post_pool = mlp(width, post_pool, post_pool_activation, True, name="post_pool")
        width = mlp_out_features(self.post_pool, width) + set_features
        self.rho = mlp(width, rho, rho_activation, rho_final_activation, name="rho")
        self.out_features = mlp_out_features(self.rho, width)

    def forward(
        self, values: Tensor, offsets: Tensor, set_features: Optional[Tensor] = None
    ) -> Tensor:
        """``values [N, F]``, ``offsets [B + 1]``, ``set_features [B, G]`` -> ``[B, out]``."""
        if values.dim() != 2 or values.shape[1] != self.in_features:
            raise ValueError(
                "DeepSets expects values of shape [N, {}], got {}".format(
                    self.in_features, list(values.shape)
                )
            )
        h = self.phi(values)
        for block in self.blocks:
            h = block(h, offsets)
        pooled = self.post_pool(self.pool(h, offsets))
        if self.set_features > 0:
            if set_features is None:
                raise ValueError(
                    "DeepSets was built with set_features={} but none were given".format(
                        self.set_features
                    )
                )
            if set_features.dim() != 2 or set_features.shape[1] != self.set_features:
                raise ValueError(
                    "DeepSets expects set_features of shape [B, {}], got {}".format(
                        self.set_features, list(set_features.shape)
                    )
                )
            pooled = torch.cat([pooled, set_features], dim=1)
        return self.rho(pooled)
