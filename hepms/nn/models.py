"""The multi-step model: tau identification per jet (upstream) -> H/Z classification per event.

Layer sizes follow the study's slides (Saito et al., "Study of model construction and the
learning for hierarchical models", 2022). The slide diagrams are read as follows (every size is
configurable):

**Tau model** (:class:`TauID`, a DeepSets over the constituents of each jet):

=========================  ==================================================================
slides                     here
=========================  ==================================================================
phi1 = (32, 32, 32) ReLU   ``deepsets.phi``: per constituent
phi2 = (32) Linear         ``deepsets.blocks[i].phi_a``: per constituent, before pooling
phi3 = (32) Linear         ``deepsets.blocks[i].phi_b``: per constituent, on
                           ``[phi2(x), pool(phi2(x)) broadcast back]``; the "x 2" is two such
                           equivariant blocks in a row (own weights each)
phi4 = (24) Linear         ``deepsets.post_pool``: on the pooled constituent vector
phi5 = (128, 128, 16) ReLU ``deepsets.rho``: on ``[phi4 output, jet features]`` -> a 16-d jet
                           embedding
phi6 = (64, 32, 1) ReLU    ``head``: hidden (64, 32) ReLU, then a linear output layer of size 1
                           (the tau logit) or ``k`` (the intermediate features, "additional NN")
=========================  ==================================================================

**Event model** (:class:`EventClassifier`, a DeepSets over the jets of each event, on the jet
features plus the ``k`` intermediate features of each jet): phi1 = (32, 32, 32) ReLU per jet;
phi2 / phi3 = (32) Linear in two equivariant blocks as above; pooling; phi4 = (64, 32, 1): hidden
(64, 32) ReLU and a linear output (the event logit).

The pooling (not given on the slides) is mean and max concatenated, everywhere, by default.

**Connection** (:class:`MultiStep`): ``"direct"`` feeds the tau probability ``sigmoid(logit)``
(``k = 1``) to the event model; ``"additional"`` feeds ``k >= 1`` learned features, and an
auxiliary network (the "additional NN") maps them to the tau logit so that the tau label still
trains the upstream model.
"""
from __future__ import annotations

import contextlib
from typing import Any, Mapping, NamedTuple, Optional, Sequence

import torch
from torch import Tensor, nn

from hepms.nn.deepsets import DeepSets
from hepms.nn.layers import check_sizes, last_linear, mlp

__all__ = ["TauID", "EventClassifier", "MultiStep", "MultiStepOutput", "CONNECTIONS", "run"]

CONNECTIONS = ("direct", "additional")
DEFAULT_POOL = ("mean", "max")


def _positive_int(name: str, value: Any, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


class MultiStepOutput(NamedTuple):
    """What :class:`MultiStep` returns.

    Attributes:
        tau_logit: ``[B]`` tau logit per jet (upstream output).
        intermediate: ``[B, k]`` what the event model received from the upstream model (the tau
            probability for the direct connection, learned features for the additional NN, or
            the truth when pre-training on truth).
        event_logit: ``[E]`` H-vs-Z logit per event.
        momentum: ``[B, R]`` visible tau momentum regression (``R = 0`` when disabled), in units
            of 100 GeV.
    """

    tau_logit: Tensor
    intermediate: Tensor
    event_logit: Tensor
    momentum: Tensor


class TauID(nn.Module):
    """Upstream model: one output row per jet from its constituents and its own features.

    Args:
        constituent_features: columns of the constituent rows.
        jet_features: columns of the per-jet global features.
        outputs: width of the output (1: the tau logit; ``k``: intermediate features).
        regression_outputs: width of an extra regression head on the jet embedding (0: none),
            e.g. 3 for the visible tau momentum.
        phi, blocks, block_sizes, block_activation, pool: the constituent DeepSets (see
            :class:`~hepms.nn.deepsets.DeepSets`); slides' phi1, phi2/phi3 "x 2".
        post_pool: slides' phi4, linear, on the pooled constituents.
        embedding: slides' phi5, ReLU, on ``[phi4, jet features]``.
        head: hidden sizes of slides' phi6 (ReLU), followed by a linear layer of ``outputs``.
    """

    def __init__(
        self,
        constituent_features: int,
        jet_features: int,
        outputs: int = 1,
        regression_outputs: int = 0,
        phi: Sequence[int] = (32, 32, 32),
        blocks: int = 2,
        block_sizes: tuple[Sequence[int], Sequence[int]] = ((32,), (32,)),
        block_activation: Optional[str] = None,
        pool: Sequence[str] = DEFAULT_POOL,
        post_pool: Sequence[int] = (24,),
        embedding: Sequence[int] = (128, 128, 16),
        head: Sequence[int] = (64, 32),
    ) -> None:
        super().__init__()
        self.constituent_features = _positive_int("constituent_features", constituent_features)
        self.jet_features = _positive_int("jet_features", jet_features)
        self.outputs = _positive_int("outputs", outputs)
        self.regression_outputs = _positive_int("regression_outputs", regression_outputs, 0)
        self.deepsets = DeepSets(
            constituent_features,
            phi=phi,
            blocks=blocks,
            block_sizes=block_sizes,
            block_activation=block_activation,
            pool=pool,
            post_pool=post_pool,
            post_pool_activation=None,
            set_features=jet_features,
            rho=embedding,
            rho_activation="relu",
            rho_final_activation=True,
        )
        width = self.deepsets.out_features
        self.embedding_size = width
        self.head = mlp(width, tuple(check_sizes("head", head)) + (outputs,), "relu", False, "head")
        if self.regression_outputs > 0:
            self.regression = mlp(
                width, tuple(check_sizes("head", head)) + (regression_outputs,), "relu", False
            )
        else:
            self.regression = nn.Sequential()

    def forward(
        self, constituents: Tensor, offsets: Tensor, jet_features: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``constituents [N, F_c]``, ``offsets [B + 1]``, ``jet_features [B, F_j]`` ->
        ``(outputs [B, outputs], momentum [B, regression_outputs])``."""
        embedding = self.deepsets(constituents, offsets, jet_features)
        if self.regression_outputs > 0:
            momentum = self.regression(embedding)
        else:
            momentum = embedding.new_zeros((embedding.shape[0], 0))
        return self.head(embedding), momentum


class EventClassifier(nn.Module):
    """Downstream model: an event logit from the jets' features and their intermediate outputs.

    Args:
        jet_features: columns of the per-jet features.
        intermediate_features: ``k``, columns received from the upstream model per jet.
        phi, blocks, block_sizes, block_activation, pool: the jet DeepSets; slides' phi1 and
            phi2/phi3 "x 2".
        rho: hidden sizes of slides' phi4 (ReLU), followed by a linear output of size 1.
    """

    def __init__(
        self,
        jet_features: int,
        intermediate_features: int = 1,
        phi: Sequence[int] = (32, 32, 32),
        blocks: int = 2,
        block_sizes: tuple[Sequence[int], Sequence[int]] = ((32,), (32,)),
        block_activation: Optional[str] = None,
        pool: Sequence[str] = DEFAULT_POOL,
        rho: Sequence[int] = (64, 32),
    ) -> None:
        super().__init__()
        self.jet_features = _positive_int("jet_features", jet_features)
        self.intermediate_features = _positive_int("intermediate_features", intermediate_features)
        self.deepsets = DeepSets(
            jet_features + intermediate_features,
            phi=phi,
            blocks=blocks,
            block_sizes=block_sizes,
            block_activation=block_activation,
            pool=pool,
            post_pool=(),
            set_features=0,
            rho=tuple(check_sizes("rho", rho)) + (1,),
            rho_activation="relu",
            rho_final_activation=False,
        )

    def forward(self, jets: Tensor, jet_offsets: Tensor) -> Tensor:
        """``jets [B, F_j + k]`` (features then intermediate), ``jet_offsets [E + 1]`` -> ``[E]``."""
        return self.deepsets(jets, jet_offsets, None)[:, 0]


class MultiStep(nn.Module):
    """Tau ID (per jet) connected to the event classifier (per event).

    Args:
        constituent_features: columns of the constituent rows (``data.constituents.values``).
        jet_features: columns of ``data.jet_features``.
        connection: ``"direct"`` (the tau probability is the intermediate, ``k = 1``) or
            ``"additional"`` (``k`` learned features plus an auxiliary network to the tau logit).
        k: intermediate size per jet.
        aux: hidden sizes (ReLU) of the auxiliary network ``k -> tau logit`` (additional only).
        regression_outputs: width of a visible-tau-momentum regression head on the tau model
            (0: none; 3 for ``px, py, pz``).
        tau_options: keyword arguments for :class:`TauID` (layer sizes, pooling, ...).
        event_options: keyword arguments for :class:`EventClassifier`.
        seed: seed for the weight initialisation (None: the global torch RNG).

    Raises:
        ValueError: unknown connection, ``k < 1``, ``k != 1`` with the direct connection, or a
            bad layer configuration.

    Example:
        >>> import torch
        >>> from hepms.nn import MultiStep
        >>> model = MultiStep(constituent_features=8, jet_features=4, connection="additional",
        ...                   k=4, seed=1)
        >>> out = model(torch.randn(7, 8), torch.tensor([0, 3, 7, 7]), torch.tensor([0, 2, 3]),
        ...             torch.randn(3, 4))
        >>> out.tau_logit.shape, out.intermediate.shape, out.event_logit.shape
        (torch.Size([3]), torch.Size([3, 4]), torch.Size([2]))
    """

    def __init__(
        self,
        constituent_features: int,
        jet_features: int,
        connection: str = "direct",
        k: int = 1,
        aux: Sequence[int] = (16,),
        regression_outputs: int = 0,
        tau_options: Optional[Mapping[str, Any]] = None,
        event_options: Optional[Mapping[str, Any]] = None,
        seed: Optional[int] = None,
    ) -> None:
        super().__init__()
        if connection not in CONNECTIONS:
            raise ValueError(f"unknown connection {connection!r}; choose from {CONNECTIONS}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"the intermediate size k must be an integer >= 1, got {k!r}")
        if connection == "direct" and k != 1:
            raise ValueError(
                f"the direct connection passes the tau probability, so k must be 1 (got k={k}); "
                "use connection='additional' for k > 1"
            )
        self.connection = connection
        self.additional = connection == "additional"
        self.k = k
        self.config = {
            "constituent_features": constituent_features,
            "jet_features": jet_features,
            "connection": connection,
            "k": k,
            "aux": list(aux),
            "regression_outputs": regression_outputs,
            "tau_options": dict(tau_options or {}),
            "event_options": dict(event_options or {}),
        }
        rng = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
        with rng:
            if seed is not None:
                torch.manual_seed(int(seed))
            self.tau = TauID(
                constituent_features,
                jet_features,
                outputs=k,
                regression_outputs=regression_outputs,
                **dict(tau_options or {}),
            )
            if self.additional:
                self.aux = mlp(k, tuple(check_sizes("aux", aux)) + (1,), "relu", False, "aux")
            else:
                self.aux = nn.Sequential()
            self.event = EventClassifier(jet_features, k, **dict(event_options or {}))

    # -- the two steps --------------------------------------------------------------------------
    @torch.jit.export
    def upstream(
        self, constituents: Tensor, constituent_offsets: Tensor, jet_features: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Tau model alone: ``(tau_logit [B], intermediate [B, k], momentum [B, R])``."""
        out, momentum = self.tau(constituents, constituent_offsets, jet_features)
        if self.additional:
            return self.aux(out)[:, 0], out, momentum
        return out[:, 0], torch.sigmoid(out), momentum

    @torch.jit.export
    def downstream(self, jet_features: Tensor, jet_offsets: Tensor, intermediate: Tensor) -> Tensor:
        """Event model alone: ``[E]`` event logits from jet features and intermediate ``[B, k]``."""
        if intermediate.dim() != 2 or intermediate.shape[1] != self.k:
            raise ValueError(
                "the intermediate input must have shape [B, {}], got {}".format(
                    self.k, list(intermediate.shape)
                )
            )
        return self.event(torch.cat([jet_features, intermediate], dim=1), jet_offsets)

    def forward(
        self,
        constituents: Tensor,
        constituent_offsets: Tensor,
        jet_offsets: Tensor,
        jet_features: Tensor,
        truth_intermediate: Optional[Tensor] = None,
    ) -> MultiStepOutput:
        """Both steps.

        Args:
            constituents: ``[N, F_c]`` constituent features of all jets.
            constituent_offsets: int64 ``[B + 1]``, constituents of each jet.
            jet_offsets: int64 ``[E + 1]``, jets of each event.
            jet_features: ``[B, F_j]``.
            truth_intermediate: ``[B, k]`` fed to the event model instead of the upstream output
                (pre-training on truth); the upstream outputs are still returned.
        """
        tau_logit, intermediate, momentum = self.upstream(
            constituents, constituent_offsets, jet_features
        )
        if truth_intermediate is not None:
            intermediate = truth_intermediate
        event_logit = self.downstream(jet_features, jet_offsets, intermediate)
        return MultiStepOutput(tau_logit, intermediate, event_logit, momentum)

    # -- helpers (eager only) -------------------------------------------------------------------
    def shared_layer(self) -> nn.Linear:
        """The layer producing the intermediate output (tau model's last layer): the shared
        parameters GradNorm measures gradient norms on."""
        return last_linear(self.tau.head)

    def upstream_parameters(self) -> list[nn.Parameter]:
        """Tau model + auxiliary network parameters."""
        return list(self.tau.parameters()) + list(self.aux.parameters())

    def downstream_parameters(self) -> list[nn.Parameter]:
        """Event model parameters."""
        return list(self.event.parameters())

    def truth_intermediate(self, jet_labels: Tensor) -> Tensor:
        """The intermediate a perfect tau tagger gives: the label as probability, ``[B, 1]``.

        Raises:
            ValueError: for the additional-NN connection, whose learned features have no truth.
        """
        if self.additional:
            raise ValueError(
                "pre-training on truth needs an intermediate with a truth value: use "
                "connection='direct' (the tau probability); the additional NN's k learned "
                "features have no label"
            )
        return jet_labels.reshape(-1, 1).to(self.shared_layer().weight.dtype)


def run(model: MultiStep, data: Any, truth: bool = False) -> MultiStepOutput:
    """Apply ``model`` to a :class:`hepms.data.TauEventData` (or a batch of it).

    Args:
        model: the multi-step model (eager, scripted or compiled).
        data: the batch.
        truth: feed the true tau label to the event model (:meth:`MultiStep.truth_intermediate`).
    """
    truth_input = None
    if truth:
        truth_input = model.truth_intermediate(data.jet_labels)
    return model(
        data.constituents.values,
        data.constituents.offsets,
        data.jet_offsets,
        data.jet_features,
        truth_input,
    )
