"""Loss balancers: how the task losses ``L_i`` combine into the one loss that is minimised.

All balancers share one interface:

* ``combine(losses: dict[str, Tensor]) -> Tensor``: the total loss (scalar) to back-propagate;
  in training mode (``balancer.train()`` with gradients enabled) adaptive balancers also update
  their state here; in eval mode, or under ``torch.no_grad()``, they only combine.
* ``weights() -> dict[str, float]``: the current weight of each task's loss (the factor in front
  of ``L_i`` in the total), ``weight_vector()`` the same as a detached tensor (no device sync).
* ``epoch_end()``: called by the trainer after every training epoch (used by DWA).
* ``trainable_parameters()``: parameters the model's optimizer must also update (the learned
  log-variances of uncertainty weighting); GradNorm updates its weights itself.
* ``state_dict()`` / ``load_state_dict()`` (they are ``nn.Module``s), for checkpoints.

Implemented: :class:`FixedWeights`, :class:`UncertaintyWeighting` (Kendall, Gal, Cipolla 2018),
:class:`GradNorm` (Chen et al. 2018), :class:`DynamicWeightAverage` (Liu, Johns, Davison 2019).
:func:`make_balancer` builds one by name.
"""
from __future__ import annotations

import copy
import logging
import math
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from hepms.train.optim import make_optimizer

log = logging.getLogger(__name__)

__all__ = [
    "Balancer",
    "FixedWeights",
    "UncertaintyWeighting",
    "GradNorm",
    "DynamicWeightAverage",
    "make_balancer",
    "BALANCERS",
]


class Balancer(nn.Module):
    """Base class: holds the ordered task names and checks the losses passed to ``combine``.

    Args:
        tasks: task names, in the order of :meth:`weight_vector`.
    """

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__()
        tasks = tuple(tasks)
        if not tasks:
            raise ValueError("a balancer needs at least one task")
        if any(not isinstance(t, str) or not t for t in tasks):
            raise ValueError(f"task names must be non-empty strings, got {tasks}")
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"task names repeat: {tasks}")
        self.tasks = tasks

    # -- interface ------------------------------------------------------------------------------
    def combine(self, losses: Mapping[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def weight_vector(self) -> Tensor:
        raise NotImplementedError

    def weights(self) -> dict[str, float]:
        return dict(zip(self.tasks, self.weight_vector().tolist()))

    def epoch_end(self) -> None:
        """Hook called after each training epoch (no-op by default)."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters to add to the model optimizer (none by default)."""
        return []

    def forward(self, losses: Mapping[str, Tensor]) -> Tensor:
        return self.combine(losses)

    # -- helpers --------------------------------------------------------------------------------
    def _stack(self, losses: Mapping[str, Tensor]) -> Tensor:
        missing = [t for t in self.tasks if t not in losses]
        unknown = [t for t in losses if t not in self.tasks]
        if missing or unknown:
            raise ValueError(
                f"{type(self).__name__} balances tasks {list(self.tasks)}; "
                f"missing losses {missing}, unknown losses {unknown}"
            )
        return torch.stack([losses[t].reshape(()) for t in self.tasks])

    def _updating(self, stacked: Tensor) -> bool:
        return self.training and torch.is_grad_enabled() and stacked.requires_grad

    def extra_repr(self) -> str:
        return f"tasks={list(self.tasks)}"


class FixedWeights(Balancer):
    """``L = sum_i w_i L_i`` with constant weights.

    Args:
        weights: ``{task: w_i}``, each finite and >= 0, not all zero (e.g. ``{"tau": 0.0,
            "event": 1.0}`` trains without the upstream loss).
    """

    def __init__(self, weights: Mapping[str, float]) -> None:
        if not isinstance(weights, Mapping) or not weights:
            raise ValueError(f"FixedWeights needs a non-empty {{task: weight}} mapping, got {weights!r}")
        super().__init__(list(weights))
        values = []
        for task, w in weights.items():
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
                raise ValueError(f"weight of task {task!r} must be a finite number, got {w!r}")
            if w < 0:
                raise ValueError(f"weight of task {task!r} must be >= 0, got {w}")
            values.append(float(w))
        if not any(values):
            raise ValueError(f"all loss weights are zero ({dict(weights)}): nothing would train")
        self.register_buffer("fixed", torch.tensor(values, dtype=torch.float64))

    def combine(self, losses: Mapping[str, Tensor]) -> Tensor:
        stacked = self._stack(losses)
        return (self.fixed.to(stacked.dtype) * stacked).sum()

    def weight_vector(self) -> Tensor:
        return self.fixed.detach().clone()


class UncertaintyWeighting(Balancer):
    """Kendall et al.: ``L = sum_i (L_i / (2 sigma_i^2) + log sigma_i)``, ``sigma_i`` learned.

    The learned parameters are ``s_i = log sigma_i^2`` (stable to optimise), so
    ``L = sum_i (0.5 exp(-s_i) L_i + 0.5 s_i)``; the weight of ``L_i`` is ``0.5 exp(-s_i)``. The
    ``s_i`` are trained by the model's optimizer (:meth:`trainable_parameters`). This is the form
    the study uses for both tasks (the same ``1/(2 sigma^2)`` factor for classification and
    regression).

    Args:
        tasks: task names.
        init_log_variance: initial ``s_i`` (0: weights 0.5).
    """

    def __init__(self, tasks: Sequence[str], init_log_variance: float = 0.0) -> None:
        super().__init__(tasks)
        if not math.isfinite(init_log_variance):
            raise ValueError(f"init_log_variance must be finite, got {init_log_variance}")
        self.log_variance = nn.Parameter(
            torch.full((len(self.tasks),), float(init_log_variance), dtype=torch.float32)
        )

    def combine(self, losses: Mapping[str, Tensor]) -> Tensor:
        stacked = self._stack(losses)
        s = self.log_variance.to(stacked.dtype)
        return (0.5 * torch.exp(-s) * stacked + 0.5 * s).sum()

    def weight_vector(self) -> Tensor:
        return (0.5 * torch.exp(-self.log_variance)).detach().clone()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [self.log_variance]


class GradNorm(Balancer):
    """Chen et al. 2018: weights that equalise the tasks' gradient norms on a shared layer.

    At each training step, with ``G_i = ||grad_W (w_i L_i)||`` on the shared parameters ``W``,
    ``r_i = (L_i / L_i(0)) / mean_j(L_j / L_j(0))`` (the relative inverse training rate) and the
    target ``mean_j(G_j) * r_i ** alpha`` (held constant), the weights take one Adam step on
    ``sum_i |G_i - target_i|`` and are renormalised to ``sum_i w_i = T`` (the number of tasks).
    The returned total ``sum_i w_i L_i`` uses the weights from before the update, detached: the
    network never trains the weights.

    Args:
        tasks: task names.
        alpha: restoring force (0: equal gradient norms; larger pulls slow tasks harder).
        lr: Adam learning rate of the weights.
        shared: the shared parameter tensor ``W`` (for the multi-step model: the weight of the
            layer producing the intermediate output, ``model.shared_layer().weight``); may be
            given later with :meth:`bind`.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        alpha: float = 1.5,
        lr: float = 1e-3,
        shared: Optional[Tensor] = None,
    ) -> None:
        super().__init__(tasks)
        if not math.isfinite(alpha) or alpha < 0:
            raise ValueError(f"GradNorm alpha must be a finite number >= 0, got {alpha}")
        if not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"GradNorm lr must be positive, got {lr}")
        self.alpha = float(alpha)
        self.lr = float(lr)
        self.task_weights = nn.Parameter(torch.ones(len(self.tasks)))
        self.register_buffer("initial_losses", torch.zeros(len(self.tasks)))
        self.register_buffer("has_initial", torch.zeros((), dtype=torch.bool))
        self._optimizer = make_optimizer([self.task_weights], self.lr)
        # Stored outside nn.Module's registry: the shared tensor belongs to the model, and must
        # not become a parameter (or state_dict entry) of the balancer.
        object.__setattr__(self, "_shared", None)
        if shared is not None:
            self.bind(shared)
        self.last_grad_norms: Optional[Tensor] = None

    def bind(self, shared: Tensor) -> "GradNorm":
        """Set the shared parameter tensor the gradient norms are measured on."""
        if not isinstance(shared, Tensor) or not shared.requires_grad:
            raise ValueError("GradNorm.bind needs a parameter tensor that requires grad")
        object.__setattr__(self, "_shared", shared)
        return self

    def combine(self, losses: Mapping[str, Tensor]) -> Tensor:
        stacked = self._stack(losses)
        current = self.task_weights.detach().to(stacked.dtype).clone()
        total = (current * stacked).sum()
        if self._updating(stacked):
            self._update(stacked)
        return total

    def _update(self, stacked: Tensor) -> None:
        if self._shared is None:
            raise RuntimeError(
                "GradNorm needs the shared layer: pass shared= or call bind(model.shared_layer()"
                ".weight) (the Trainer does this for a MultiStep model)"
            )
        values = stacked.detach().to(self.initial_losses.dtype)
        if not bool(self.has_initial):
            # L_i(0): the losses at the first step; clamped so a zero loss cannot divide.
            self.initial_losses.copy_(values.clamp_min(1e-12))
            self.has_initial.fill_(True)
        norms = []
        for i in range(len(self.tasks)):
            (grad,) = torch.autograd.grad(
                stacked[i], self._shared, retain_graph=True, allow_unused=True
            )
            norms.append(
                grad.norm().to(self.task_weights.dtype)
                if grad is not None
                else self.task_weights.new_zeros(())
            )
        grad_norms = torch.stack(norms)  # ||grad_W L_i||, detached (no create_graph)
        self.last_grad_norms = grad_norms
        weighted = self.task_weights * grad_norms  # G_i, differentiable in w only
        ratio = values / self.initial_losses
        relative = ratio / ratio.mean().clamp_min(1e-12)
        target = (weighted.mean() * relative.pow(self.alpha)).detach()
        grad_loss = (weighted - target).abs().sum()
        self._optimizer.zero_grad(set_to_none=True)
        (self.task_weights.grad,) = torch.autograd.grad(grad_loss, self.task_weights)
        self._optimizer.step()
        with torch.no_grad():
            # Renormalise to sum T; a small floor keeps every task alive (w -> 0 cannot recover
            # through a multiplicative gradient).
            self.task_weights.clamp_(min=1e-3)
            self.task_weights.mul_(len(self.tasks) / self.task_weights.sum())

    def weight_vector(self) -> Tensor:
        return self.task_weights.detach().clone()

    def get_extra_state(self) -> Any:
        return {"optimizer": self._optimizer.state_dict()}

    def set_extra_state(self, state: Any) -> None:
        self._optimizer = make_optimizer([self.task_weights], self.lr)
        # deepcopy: Adam.load_state_dict keeps the given moment tensors, which an in-memory
        # state_dict shares with the source balancer
        self._optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))

    def _apply(self, fn, recurse=True):  # keep the inner optimizer bound to the moved parameter
        result = super()._apply(fn, recurse)
        state = self._optimizer.state_dict()
        self._optimizer = make_optimizer([self.task_weights], self.lr)
        self._optimizer.load_state_dict(state)
        return result

    def extra_repr(self) -> str:
        return f"tasks={list(self.tasks)}, alpha={self.alpha}, lr={self.lr}"


class DynamicWeightAverage(Balancer):
    """Liu et al. 2019: ``w_i(t) = T_n softmax_i(r_i(t-1) / temperature)``, with
    ``r_i(t-1) = L_i(t-1) / L_i(t-2)`` the ratio of the last two epochs' mean training losses.

    The weights are 1 for the first two epochs. The epoch means are accumulated in ``combine``
    (training mode) and turned into new weights by :meth:`epoch_end`.

    Args:
        tasks: task names (``T_n`` of them).
        temperature: softness ``T`` (large: weights near 1).
    """

    def __init__(self, tasks: Sequence[str], temperature: float = 2.0) -> None:
        super().__init__(tasks)
        if not math.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"DWA temperature must be positive, got {temperature}")
        self.temperature = float(temperature)
        n = len(self.tasks)
        self.register_buffer("current", torch.ones(n, dtype=torch.float64))
        self.register_buffer("sums", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        self.register_buffer("history", torch.zeros(2, n, dtype=torch.float64))
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.int64))

    def combine(self, losses: Mapping[str, Tensor]) -> Tensor:
        stacked = self._stack(losses)
        if self._updating(stacked):
            self.sums += stacked.detach().to(self.sums.dtype)
            self.steps += 1
        return (self.current.to(stacked.dtype) * stacked).sum()

    def epoch_end(self) -> None:
        if int(self.steps) == 0:
            return
        self.end_epoch_with(self.sums / self.steps)
        self.sums.zero_()
        self.steps.zero_()

    def end_epoch_with(self, mean_losses: Tensor) -> None:
        """Record an epoch's mean training losses ``[T]`` and update the weights."""
        mean_losses = torch.as_tensor(mean_losses, dtype=torch.float64).to(self.history.device)
        self.history[0] = self.history[1]
        self.history[1] = mean_losses
        self.epochs_seen += 1
        if int(self.epochs_seen) >= 2:
            ratio = self.history[1] / self.history[0].clamp_min(1e-12)
            self.current.copy_(len(self.tasks) * torch.softmax(ratio / self.temperature, dim=0))

    def weight_vector(self) -> Tensor:
        return self.current.detach().clone()

    def extra_repr(self) -> str:
        return f"tasks={list(self.tasks)}, temperature={self.temperature}"


BALANCERS = {
    "fixed": FixedWeights,
    "uncertainty": UncertaintyWeighting,
    "gradnorm": GradNorm,
    "dwa": DynamicWeightAverage,
}


def make_balancer(name: str, tasks: Sequence[str], **options: Any) -> Balancer:
    """A balancer by name.

    Args:
        name: ``"fixed"`` (option ``weights={task: w}``; default 1 for every task),
            ``"uncertainty"`` (``init_log_variance``), ``"gradnorm"`` (``alpha``, ``lr``,
            ``shared``) or ``"dwa"`` (``temperature``).
        tasks: the task names to balance.
        **options: the balancer's keyword arguments.

    Raises:
        ValueError: unknown name, unknown option, or weights that do not match ``tasks``.
    """
    if name not in BALANCERS:
        raise ValueError(f"unknown balancer {name!r}; choose from {sorted(BALANCERS)}")
    tasks = tuple(tasks)
    if name == "fixed":
        unknown = set(options) - {"weights"}
        if unknown:
            raise ValueError(f"unknown option(s) {sorted(unknown)} for the fixed balancer")
        weights = dict(options.get("weights") or {t: 1.0 for t in tasks})
        missing = [t for t in tasks if t not in weights]
        if missing:
            raise ValueError(f"fixed weights given for {sorted(weights)}, missing {missing}")
        extra = [t for t in weights if t not in tasks]
        if extra:
            raise ValueError(f"fixed weights for unknown task(s) {extra}; the tasks are {list(tasks)}")
        return FixedWeights({t: weights[t] for t in tasks})
    try:
        return BALANCERS[name](tasks, **options)
    except TypeError as error:
        raise ValueError(f"bad option for the {name!r} balancer: {error}") from None
