"""Candidate models for each task, declared in configuration.

A candidate set is a mapping ``name -> spec`` where ``spec`` is a dict with a ``kind`` and the
kind's hyper-parameters (YAML-able). The kinds:

**Task 1** (per jet; output ``[B, k]``: ``k = 1`` tau logit or ``k = 3`` calibrated
``(pT/100, eta, phi)``; calibration models output a *residual* added to the uncalibrated jet, as
the study's Task-1 models do):

=============  ====================================================================================
``deepsets``   :class:`hepms.nn.TauID` over the jet's constituents + jet features: ``phi``,
               ``blocks``, ``block_sizes``, ``pool``, ``post_pool``, ``embedding``, ``head``
``mlp``        MLP on jet-level features: ``hidden``, ``features`` (column names; default all)
``sf``         scale factor on the jet 4-vector: tau-ID, a logistic regression on the standardised
               ``(log pT, eta, phi, log m)``; calibration, ``a * x + b`` per component of
               ``(pT/100, eta, phi)`` starting at the identity (the study's 6-parameter Sf)
=============  ====================================================================================

**Task 2** (per event; output ``[E]`` logits; per jet they see ``[jet features, intermediate]``):

=============  ====================================================================================
``deepsets``   :class:`hepms.nn.DeepSets` over the jets: ``phi``, ``blocks``, ``pool``, ``rho``
``mlp2``       MLP on the two tau candidates (features, intermediate, presence flag): ``hidden``
``lstm``       stacked LSTM over the pT-ordered jets, last hidden state -> linear: ``hidden``,
               ``layers``
``mass``       di-tau invariant mass of the two candidates -> MLP: ``hidden`` (for tau-ID the two
               candidates' tau probabilities are appended: the mass of two light jets means
               nothing, and the model must be able to tell)
=============  ====================================================================================

Every ``mlp``/``mlp2``/``deepsets``/``lstm`` also takes ``features``: the jet feature columns it
uses (default all), e.g. ``[phi]`` for a deliberately uninformative model in tests and ablations.
The Task-2 ``deepsets``/``mlp2``/``lstm`` take ``use_intermediate`` (default true): false gives an
event model that ignores Task 1's output (a baseline; ``mlp2`` still picks its two candidates by
the Task-1 rank).

**Dummies** for both tasks: ``zeros`` (output always 0) and ``noise`` (standard normal output, from
the model's own seeded generator). They have no weights; DARTS should learn to weight them down.

:func:`build_candidates` instantiates a set with independent, seeded initialisations;
:func:`replicate` makes ``N`` copies of a set (the scalability study's replicas).
"""
from __future__ import annotations

import copy
import logging
import zlib
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from hepms.nn import DeepSets, TauID, mlp
from hepms.select.data import Inputs, JetKinematics
from hepms.physics import pair_mass
from hepms.select.jets import leading_two, pad_jets
from hepms.select.tasks import Link, UpstreamTask

log = logging.getLogger(__name__)

__all__ = [
    "UPSTREAM_KINDS",
    "DOWNSTREAM_KINDS",
    "DUMMY_KINDS",
    "SpaceContext",
    "build_candidate",
    "build_candidates",
    "replicate",
    "validate_spec",
    "is_dummy",
    "DEFAULT_CANDIDATES",
]

DUMMY_KINDS = ("zeros", "noise")


@dataclass(frozen=True)
class SpaceContext:
    """What the candidate builders need to know about the data and the tasks.

    Attributes:
        task: the Task-1 definition.
        constituent_features: constituent feature columns.
        jet_names: jet feature column names.
        kinematics: recovers the raw jet 4-vector from the standardised features (built from
            the training split's scaler); None only for spaces that are never trained.
    """

    task: UpstreamTask
    constituent_features: int
    jet_names: tuple[str, ...]
    kinematics: Optional[JetKinematics] = None

    def columns(self, features: Optional[Sequence[str]], owner: str) -> list[int]:
        """Indices of the named jet feature columns (all when ``features`` is None)."""
        if features is None:
            return list(range(len(self.jet_names)))
        if isinstance(features, str):
            features = [features]
        unknown = [f for f in features if f not in self.jet_names]
        if unknown or not features:
            raise ValueError(
                f"candidate {owner!r}: unknown or empty jet features {list(features)}; "
                f"available: {list(self.jet_names)}"
            )
        return [self.jet_names.index(f) for f in features]


def _sizes(value: Any, name: str, owner: str) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    try:
        sizes = tuple(int(v) for v in value)
    except TypeError:
        raise ValueError(f"candidate {owner!r}: {name} must be a list of layer sizes, got {value!r}") from None
    if any(s < 1 for s in sizes):
        raise ValueError(f"candidate {owner!r}: {name} sizes must be positive, got {sizes}")
    return sizes


class _Candidate(nn.Module):
    """Common attributes: the candidate's name, kind and whether it is a dummy."""

    kind: str = ""
    dummy: bool = False

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def extra_repr(self) -> str:
        return f"name={self.name!r}, kind={self.kind!r}"


# ------------------------------------------------------------------------------------------------
# Task 1 candidates: forward(inputs) -> [B, k]
# ------------------------------------------------------------------------------------------------
class DeepSetsUpstream(_Candidate):
    kind = "deepsets"

    def __init__(self, name: str, ctx: SpaceContext, **hp: Any) -> None:
        super().__init__(name)
        self.task = ctx.task
        self.register_buffer(
            "columns", torch.tensor(ctx.columns(hp.pop("features", None), name)), persistent=False
        )
        options: dict[str, Any] = {}
        for key in ("phi", "post_pool", "embedding", "head"):
            if key in hp:
                options[key] = _sizes(hp.pop(key), key, name)
        if "block_sizes" in hp:
            a, b = hp.pop("block_sizes")
            options["block_sizes"] = (_sizes(a, "block_sizes", name), _sizes(b, "block_sizes", name))
        for key in ("blocks", "pool", "block_activation"):
            if key in hp:
                options[key] = hp.pop(key)
        _no_leftovers(hp, name, self.kind)
        self.net = TauID(
            ctx.constituent_features, int(self.columns.numel()), outputs=ctx.task.outputs, **options
        )

    def forward(self, inputs: Inputs) -> Tensor:
        out, _ = self.net(
            inputs.constituents,
            inputs.constituent_offsets,
            inputs.jet_features.index_select(1, self.columns),
        )
        return out + self.task.base(inputs) if self.task.residual else out


class MLPUpstream(_Candidate):
    kind = "mlp"

    def __init__(self, name: str, ctx: SpaceContext, hidden: Any = (32, 32, 32), features: Any = None) -> None:
        super().__init__(name)
        self.task = ctx.task
        columns = ctx.columns(features, name)
        self.register_buffer("columns", torch.tensor(columns), persistent=False)
        sizes = _sizes(hidden, "hidden", name) + (ctx.task.outputs,)
        self.net = mlp(len(columns), sizes, "relu", final_activation=False, name=name)

    def forward(self, inputs: Inputs) -> Tensor:
        out = self.net(inputs.jet_features.index_select(1, self.columns))
        return out + self.task.base(inputs) if self.task.residual else out


class ScaleFactorUpstream(_Candidate):
    kind = "sf"

    def __init__(self, name: str, ctx: SpaceContext) -> None:
        super().__init__(name)
        self.task = ctx.task
        if ctx.task.residual:
            # f(x) = a x + b per component, starting at the identity: the uncalibrated jet.
            self.scale = nn.Parameter(torch.ones(ctx.task.outputs))
            self.shift = nn.Parameter(torch.zeros(ctx.task.outputs))
            self.linear = None
        else:
            columns = ctx.columns(("log_pt", "eta", "phi", "log_mass"), name)
            self.register_buffer("columns", torch.tensor(columns), persistent=False)
            self.linear = nn.Linear(len(columns), ctx.task.outputs)

    def forward(self, inputs: Inputs) -> Tensor:
        if self.linear is None:
            return self.task.base(inputs) * self.scale + self.shift
        return self.linear(inputs.jet_features.index_select(1, self.columns))


# ------------------------------------------------------------------------------------------------
# Task 2 candidates: forward(inputs, link) -> [E]
# ------------------------------------------------------------------------------------------------
class _Downstream(_Candidate):
    def __init__(self, name: str, ctx: SpaceContext, features: Any, use_intermediate: bool = True) -> None:
        super().__init__(name)
        columns = ctx.columns(features, name)
        self.register_buffer("columns", torch.tensor(columns), persistent=False)
        self.use_intermediate = bool(use_intermediate)
        self.jet_width = len(columns) + (ctx.task.outputs if self.use_intermediate else 0)

    def jets(self, inputs: Inputs, link: Link) -> Tensor:
        """``[B, F (+ k)]``: the chosen jet features and (unless disabled) the intermediate."""
        x = inputs.jet_features.index_select(1, self.columns)
        if not self.use_intermediate:
            return x
        return torch.cat([x, link.intermediate.to(x.dtype)], dim=1)


class DeepSetsDownstream(_Downstream):
    kind = "deepsets"

    def __init__(
        self,
        name: str,
        ctx: SpaceContext,
        phi: Any = (32, 32, 32),
        blocks: int = 0,
        pool: Any = ("mean", "max"),
        rho: Any = (64, 32),
        features: Any = None,
        use_intermediate: bool = True,
    ) -> None:
        super().__init__(name, ctx, features, use_intermediate)
        self.net = DeepSets(
            self.jet_width,
            phi=_sizes(phi, "phi", name),
            blocks=int(blocks),
            pool=pool,
            rho=_sizes(rho, "rho", name) + (1,),
            rho_final_activation=False,
        )

    def forward(self, inputs: Inputs, link: Link) -> Tensor:
        return self.net(self.jets(inputs, link), inputs.jet_offsets)[:, 0]


class MLP2Downstream(_Downstream):
    kind = "mlp2"

    def __init__(
        self,
        name: str,
        ctx: SpaceContext,
        hidden: Any = (32, 32, 32),
        features: Any = None,
        use_intermediate: bool = True,
    ) -> None:
        super().__init__(name, ctx, features, use_intermediate)
        self.net = mlp(
            2 * (self.jet_width + 1), _sizes(hidden, "hidden", name) + (1,), "relu", False, name
        )

    def forward(self, inputs: Inputs, link: Link) -> Tensor:
        candidates = leading_two(link.rank, inputs.jet_offsets)
        per_jet = candidates.gather(self.jets(inputs, link))
        flags = candidates.valid.unsqueeze(-1).to(per_jet.dtype)
        x = torch.cat([per_jet, flags], dim=-1).flatten(1)
        return self.net(x)[:, 0]


class LSTMDownstream(_Downstream):
    kind = "lstm"

    def __init__(
        self,
        name: str,
        ctx: SpaceContext,
        hidden: int = 32,
        layers: int = 3,
        features: Any = None,
        use_intermediate: bool = True,
    ) -> None:
        super().__init__(name, ctx, features, use_intermediate)
        self.lstm = nn.LSTM(self.jet_width, int(hidden), num_layers=int(layers), batch_first=True)
        self.out = nn.Linear(int(hidden), 1)

    def forward(self, inputs: Inputs, link: Link) -> Tensor:
        # pT order inside each event (leading jet first), whatever order the jets came in.
        x = self.jets(inputs, link)
        dense, mask = pad_jets(x, inputs.jet_offsets)
        pt, _ = pad_jets(inputs.jet_p4[:, :1], inputs.jet_offsets)
        order = pt[..., 0].masked_fill(~mask, float("-inf")).argsort(dim=1, descending=True)
        dense = torch.gather(dense, 1, order.unsqueeze(-1).expand_as(dense))
        lengths = mask.sum(1).clamp_min(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(dense, lengths, batch_first=True, enforce_sorted=False)
        _, (h, _) = self.lstm(packed)
        return self.out(h[-1])[:, 0]


class MassDownstream(_Downstream):
    kind = "mass"
    #: the log mass is centred near log(100 GeV) so the MLP starts in a sensible range
    _LOG_MASS_CENTRE = 4.6

    def __init__(self, name: str, ctx: SpaceContext, hidden: Any = (64, 64)) -> None:
        super().__init__(name, ctx, None)
        self.with_probability = ctx.task.outputs == 1
        width = 1 + 1 + (2 if self.with_probability else 0)
        self.net = mlp(width, _sizes(hidden, "hidden", name) + (1,), "relu", False, name)

    def forward(self, inputs: Inputs, link: Link) -> Tensor:
        candidates = leading_two(link.rank, inputs.jet_offsets)
        p4 = candidates.gather(link.p4)
        both = candidates.valid.all(1)
        mass = torch.where(both, pair_mass(p4[:, 0], p4[:, 1]), torch.zeros_like(p4[:, 0, 0]))
        columns = [torch.log(mass + 0.1) - self._LOG_MASS_CENTRE, both.to(mass.dtype)]
        if self.with_probability:
            probability = candidates.gather(link.intermediate)[..., 0]
            columns += [probability[:, 0], probability[:, 1]]
        return self.net(torch.stack(columns, dim=1))[:, 0]


# ------------------------------------------------------------------------------------------------
# Dummies (both tasks)
# ------------------------------------------------------------------------------------------------
class Zeros(_Candidate):
    """Always 0: tau logit 0 (probability 1/2), calibration (0, 0, 0), event logit 0."""

    kind = "zeros"
    dummy = True

    def __init__(self, name: str, ctx: SpaceContext, downstream: bool) -> None:
        super().__init__(name)
        self.downstream = downstream
        self.width = ctx.task.outputs

    def forward(self, inputs: Inputs, link: Optional[Link] = None) -> Tensor:
        if self.downstream:
            return inputs.jet_features.new_zeros(inputs.num_events)
        return inputs.jet_features.new_zeros((inputs.num_jets, self.width))


class Noise(_Candidate):
    """Standard normal output, drawn from the candidate's own seeded generator."""

    kind = "noise"
    dummy = True

    def __init__(self, name: str, ctx: SpaceContext, downstream: bool, seed: int = 0) -> None:
        super().__init__(name)
        self.downstream = downstream
        self.width = ctx.task.outputs
        self.generator = torch.Generator().manual_seed(int(seed))

    def forward(self, inputs: Inputs, link: Optional[Link] = None) -> Tensor:
        shape = (inputs.num_events,) if self.downstream else (inputs.num_jets, self.width)
        x = torch.randn(shape, generator=self.generator, dtype=inputs.jet_features.dtype)
        return x.to(inputs.jet_features.device)


UPSTREAM_KINDS: dict[str, type] = {
    "deepsets": DeepSetsUpstream,
    "mlp": MLPUpstream,
    "sf": ScaleFactorUpstream,
    "zeros": Zeros,
    "noise": Noise,
}
DOWNSTREAM_KINDS: dict[str, type] = {
    "deepsets": DeepSetsDownstream,
    "mlp2": MLP2Downstream,
    "lstm": LSTMDownstream,
    "mass": MassDownstream,
    "zeros": Zeros,
    "noise": Noise,
}


def _no_leftovers(hp: Mapping[str, Any], name: str, kind: str) -> None:
    if hp:
        raise ValueError(f"candidate {name!r} ({kind}): unknown hyper-parameter(s) {sorted(hp)}")


def is_dummy(spec: Mapping[str, Any]) -> bool:
    """True for the ``zeros`` and ``noise`` kinds."""
    return spec.get("kind") in DUMMY_KINDS


def validate_spec(spec: Mapping[str, Mapping[str, Any]], step: str) -> dict[str, dict[str, Any]]:
    """Check a candidate set (``name -> {kind, ...}``) for ``step`` (``"upstream"``/``"downstream"``).

    Returns:
        A plain-dict copy.

    Raises:
        ValueError: not a mapping, empty, a spec without a known ``kind``.
    """
    kinds = UPSTREAM_KINDS if step == "upstream" else DOWNSTREAM_KINDS
    if step not in ("upstream", "downstream"):
        raise ValueError(f"step must be 'upstream' or 'downstream', got {step!r}")
    if not isinstance(spec, Mapping) or not spec:
        raise ValueError(f"{step} candidates must be a non-empty mapping name -> spec, got {spec!r}")
    out: dict[str, dict[str, Any]] = {}
    for name, item in spec.items():
        if not isinstance(item, Mapping) or "kind" not in item:
            raise ValueError(f"{step} candidate {name!r} needs a 'kind' (got {item!r})")
        if item["kind"] not in kinds:
            raise ValueError(
                f"{step} candidate {name!r}: unknown kind {item['kind']!r}; choose from {sorted(kinds)}"
            )
        out[str(name)] = copy.deepcopy(dict(item))
    return out


def _candidate_seed(seed: int, step: str, name: str) -> int:
    # Independent streams per candidate: replicas ("mlp#2") differ from their original.
    return (int(seed) * 1_000_003 + zlib.crc32(f"{step}/{name}".encode())) % (2**63 - 1)


def build_candidate(
    name: str, spec: Mapping[str, Any], ctx: SpaceContext, step: str, seed: int = 0
) -> nn.Module:
    """Instantiate one candidate with a seeded initialisation (the global RNG is left untouched)."""
    kinds = UPSTREAM_KINDS if step == "upstream" else DOWNSTREAM_KINDS
    hp = {k: copy.deepcopy(v) for k, v in spec.items() if k != "kind"}
    kind = spec["kind"]
    cls = kinds[kind]
    cseed = _candidate_seed(seed, step, name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cseed)
        if kind == "zeros":
            _no_leftovers(hp, name, kind)
            return cls(name, ctx, step == "downstream")
        if kind == "noise":
            _no_leftovers(hp, name, kind)
            return cls(name, ctx, step == "downstream", seed=cseed)
        try:
            return cls(name, ctx, **hp)
        except TypeError as error:
            raise ValueError(f"candidate {name!r} ({kind}): bad hyper-parameters {hp}: {error}") from None


def build_candidates(
    spec: Mapping[str, Mapping[str, Any]], ctx: SpaceContext, step: str, seed: int = 0
) -> nn.ModuleDict:
    """All candidates of a set, in declaration order, as an ``nn.ModuleDict``."""
    spec = validate_spec(spec, step)
    # ModuleDict keys cannot contain "."; replica names use "#".
    bad = [n for n in spec if "." in n]
    if bad:
        raise ValueError(f"candidate names must not contain '.': {bad}")
    return nn.ModuleDict({name: build_candidate(name, s, ctx, step, seed) for name, s in spec.items()})


def replicate(spec: Mapping[str, Mapping[str, Any]], copies: int) -> dict[str, dict[str, Any]]:
    """``copies`` replicas of every candidate (``name``, ``name#2``, ...), independently initialised."""
    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    out: dict[str, dict[str, Any]] = {}
    for r in range(copies):
        for name, item in spec.items():
            out[name if r == 0 else f"{name}#{r + 1}"] = copy.deepcopy(dict(item))
    return out


#: A small default search space per Task-1 definition (the study's models, scaled down).
DEFAULT_CANDIDATES: dict[str, dict[str, dict[str, Any]]] = {
    "upstream": {
        "deepsets_small": {"kind": "deepsets", "phi": [16, 16], "blocks": 0, "pool": ["mean"],
                          "post_pool": [16], "embedding": [32, 16], "head": [16]},
        "deepsets_large": {"kind": "deepsets", "phi": [32, 32], "blocks": 1, "pool": ["mean", "max"],
                         "post_pool": [24], "embedding": [64, 16], "head": [32]},
        "mlp": {"kind": "mlp", "hidden": [32, 32]},
        "sf": {"kind": "sf"},
        "zeros": {"kind": "zeros"},
        "noise": {"kind": "noise"},
    },
    "downstream": {
        "deepsets": {"kind": "deepsets", "phi": [32, 32], "rho": [32]},
        "mlp2": {"kind": "mlp2", "hidden": [32, 32, 32]},
        "lstm": {"kind": "lstm", "hidden": 16, "layers": 2},
        "mass": {"kind": "mass", "hidden": [64, 64]},
        "zeros": {"kind": "zeros"},
        "noise": {"kind": "noise"},
    },
}
