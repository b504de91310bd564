"""A search space (candidate sets for both tasks + the data context) and a connected chain."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch
from torch import Tensor, nn

from hepms.data import Standardizer
from hepms.features import FeatureSpec
from hepms.select.candidates import (
    SpaceContext,
    build_candidates,
    is_dummy,
    replicate,
    validate_spec,
)
from hepms.select.data import Inputs, JetKinematics, SelectionData
from hepms.select.tasks import UpstreamTask, make_task

__all__ = ["SearchSpace", "Chain", "CHAIN_BUILDER", "chain_config", "chain_from_config"]

#: The builder a model file names for a selected chain (:func:`hepms.model_file.save_model`).
CHAIN_BUILDER = "hepms.select.space:chain_from_config"


@dataclass(frozen=True)
class SearchSpace:
    """Candidate specs for Task 1 (``upstream``) and Task 2 (``downstream``) with their context.

    Attributes:
        upstream: ``name -> spec`` for Task 1 (see :mod:`hepms.select.candidates`).
        downstream: ``name -> spec`` for Task 2.
        context: the Task-1 definition and the data's feature layout.
    """

    upstream: Mapping[str, Mapping[str, Any]]
    downstream: Mapping[str, Mapping[str, Any]]
    context: SpaceContext

    def __post_init__(self) -> None:
        object.__setattr__(self, "upstream", validate_spec(self.upstream, "upstream"))
        object.__setattr__(self, "downstream", validate_spec(self.downstream, "downstream"))

    @classmethod
    def create(
        cls,
        prepared: SelectionData,
        task: str | UpstreamTask,
        upstream: Mapping[str, Mapping[str, Any]],
        downstream: Mapping[str, Mapping[str, Any]],
    ) -> "SearchSpace":
        """A space on ``prepared``'s feature layout for the Task-1 definition ``task``."""
        task_obj = make_task(task) if isinstance(task, str) else task
        ctx = SpaceContext(
            task_obj, prepared.constituent_features, prepared.jet_names, prepared.kinematics()
        )
        return cls(upstream, downstream, ctx)

    @property
    def task(self) -> UpstreamTask:
        return self.context.task

    def kinematics(self, device: torch.device | str = "cpu") -> JetKinematics:
        """A copy of the context's :class:`JetKinematics` on ``device``.

        A copy, because ``nn.Module.to`` moves in place: the shared context must stay put.
        """
        if self.context.kinematics is None:
            raise ValueError("this search space has no jet kinematics: build it with SearchSpace.create")
        return copy.deepcopy(self.context.kinematics).to(device)

    @property
    def upstream_names(self) -> list[str]:
        return list(self.upstream)

    @property
    def downstream_names(self) -> list[str]:
        return list(self.downstream)

    def build(self, seed: int = 0) -> tuple[nn.ModuleDict, nn.ModuleDict]:
        """Fresh candidates for both tasks, seeded per candidate."""
        return (
            build_candidates(self.upstream, self.context, "upstream", seed),
            build_candidates(self.downstream, self.context, "downstream", seed),
        )

    def without_dummies(self) -> "SearchSpace":
        """The same space with the ``zeros`` / ``noise`` candidates removed."""
        up = {k: v for k, v in self.upstream.items() if not is_dummy(v)}
        down = {k: v for k, v in self.downstream.items() if not is_dummy(v)}
        if not up or not down:
            raise ValueError("removing the dummies leaves a task without candidates")
        return SearchSpace(up, down, self.context)

    def restrict(self, upstream: list[str], downstream: list[str]) -> "SearchSpace":
        """The sub-space of the named candidates."""
        return SearchSpace(
            {k: self.upstream[k] for k in upstream},
            {k: self.downstream[k] for k in downstream},
            self.context,
        )

    def replicated(self, copies: int) -> "SearchSpace":
        """``copies`` independently initialised replicas of every candidate (scalability study)."""
        return SearchSpace(
            replicate(self.upstream, copies), replicate(self.downstream, copies), self.context
        )

    def size(self) -> tuple[int, int]:
        return len(self.upstream), len(self.downstream)


class Chain(nn.Module):
    """One Task-1 model connected to one Task-2 model.

    Args:
        upstream: a Task-1 candidate (``inputs -> [B, k]``).
        downstream: a Task-2 candidate (``(inputs, link) -> [E]``).
        task: the Task-1 definition that links the two.
    """

    def __init__(self, upstream: nn.Module, downstream: nn.Module, task: UpstreamTask) -> None:
        super().__init__()
        self.upstream = upstream
        self.downstream = downstream
        self.task = task

    @property
    def names(self) -> tuple[str, str]:
        return (getattr(self.upstream, "name", "?"), getattr(self.downstream, "name", "?"))

    def forward(self, inputs: Inputs) -> tuple[Tensor, Tensor]:
        """``(u [B, k], event_logit [E])``."""
        u = self.upstream(inputs)
        return u, self.downstream(inputs, self.task.link(u, inputs))

    @classmethod
    def from_candidates(
        cls,
        upstream: nn.Module,
        downstream: nn.Module,
        task: UpstreamTask,
        states: Optional[tuple[Mapping, Mapping]] = None,
    ) -> "Chain":
        """A chain of deep copies of the two candidates (optionally loading ``states``)."""
        up, down = copy.deepcopy(upstream), copy.deepcopy(downstream)
        if states is not None:
            up.load_state_dict(states[0])
            down.load_state_dict(states[1])
        return cls(up, down, task)


def chain_config(space: SearchSpace, upstream: str, downstream: str) -> dict[str, Any]:
    """What rebuilds the chain of the candidates ``upstream`` and ``downstream`` of ``space``
    (:func:`chain_from_config`): the Task-1 name and the two candidates' specs."""
    return {
        "task": space.task.name,
        "upstream": {upstream: copy.deepcopy(dict(space.upstream[upstream]))},
        "downstream": {downstream: copy.deepcopy(dict(space.downstream[downstream]))},
    }


def chain_from_config(config: Mapping[str, Any], spec: FeatureSpec, scaler: Standardizer) -> Chain:
    """A freshly built (untrained) :class:`Chain` of :func:`chain_config`, on the feature layout of
    ``spec`` and the standardisation ``scaler``: the network entry of a model file
    (:data:`CHAIN_BUILDER`), whose weights are then loaded."""
    task = make_task(config["task"])
    context = SpaceContext(task, len(spec.constituent_features), spec.jet_features,
                           JetKinematics(scaler, spec.jet_features))
    (up,) = build_candidates(config["upstream"], context, "upstream").values()
    (down,) = build_candidates(config["downstream"], context, "downstream").values()
    return Chain(up, down, task)
