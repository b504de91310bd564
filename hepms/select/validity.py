"""Validity of the intermediate (Task-1) output against a Gaussian-process reference.

The MSNAS paper (section 4.4.1, "Explainability") trains a Gaussian process on the Task-1 training
data as a robust, controlled reference and reports the fraction of Task-1 outputs that lie within
its two-sigma band, each scalar output separately. Here:

* one exact GP (GPyTorch: constant mean, scaled RBF kernel with one length scale per input,
  Gaussian likelihood) per output component ``pT/100, eta, phi``;
* inputs: the standardised jet features; target: the *residual* ``truth - uncalibrated jet``
  (azimuth wrapped), standardised. Learning the residual keeps the GP's job small and stationary:
  the jet direction is already close to the visible tau's;
* trained on a seeded subsample of the training split's tau jets (exact GPs are ``O(n^3)``);
* the band is the predictive distribution (latent variance + learned noise), since a Task-1
  output is compared with where the truth is expected, not with the GP mean alone.

``validity = fraction of tau jets whose output lies within nsigma * sigma of the GP mean``, per
component and averaged over the three. Only defined for the calibration task (tau-ID outputs are
logits with no physical scale to check).
"""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

from hepms import physics
from hepms.data import TauEventData
from hepms.select.data import JetKinematics, make_batch
from hepms.select.tasks import CalibrationTask, UpstreamTask
from hepms.train.optim import make_optimizer

log = logging.getLogger(__name__)

__all__ = ["GPReference", "validity_fraction", "fit_reference", "COMPONENTS"]

COMPONENTS = ("pt", "eta", "phi")


def _wrap_residual(d: Tensor) -> Tensor:
    return torch.cat([d[:, :2], physics.delta_phi(d[:, 2:3], torch.zeros_like(d[:, 2:3]))], dim=1)


def _exact_gp_class():
    import gpytorch

    class ExactGP(gpytorch.models.ExactGP):
        def __init__(self, x: Tensor, y: Tensor, likelihood) -> None:
            super().__init__(x, y, likelihood)
            self.mean_module = gpytorch.means.ConstantMean()
            self.covar_module = gpytorch.kernels.ScaleKernel(
                gpytorch.kernels.RBFKernel(ard_num_dims=x.shape[1])
            )

        def forward(self, x: Tensor):
            return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))

    return ExactGP


@dataclass
class GPReference:
    """Gaussian-process reference for the calibration outputs.

    Args:
        task: the Task-1 definition (must be calibration).
        kinematics: the data's :class:`JetKinematics`.
        max_points: training tau jets used (seeded subsample).
        iterations: Adam iterations on the exact marginal log-likelihood.
        lr: Adam learning rate.
        seed: subsample and initialisation seed.
    """

    task: UpstreamTask
    kinematics: JetKinematics
    max_points: int = 1000
    iterations: int = 60
    lr: float = 0.1
    seed: int = 0
    models: list = field(default_factory=list, repr=False)
    likelihoods: list = field(default_factory=list, repr=False)
    y_mean: Optional[Tensor] = None
    y_std: Optional[Tensor] = None

    def __post_init__(self) -> None:
        if not isinstance(self.task, CalibrationTask):
            raise ValueError(
                "the Gaussian-process validity check is defined for the calibration task only "
                f"(got task {self.task.name!r})"
            )

    def _inputs(self, data: TauEventData) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        # A CPU copy of the kinematics: .to() on the caller's module would move it in place.
        inputs, targets = make_batch(data.to("cpu"), copy.deepcopy(self.kinematics).to("cpu"))
        mask = targets.jet_labels > 0.5
        base = self.task.base(inputs)
        return inputs.jet_features.double(), base.double(), targets.calibration.double(), mask

    def fit(self, train: TauEventData) -> "GPReference":
        """Train the three GPs on (a subsample of) the training split's tau jets."""
        import gpytorch

        x, base, truth, mask = self._inputs(train)
        x, residual = x[mask], _wrap_residual(truth[mask] - base[mask])
        g = torch.Generator().manual_seed(int(self.seed))
        if x.shape[0] > self.max_points:
            keep = torch.randperm(x.shape[0], generator=g)[: self.max_points]
            x, residual = x[keep], residual[keep]
        if x.shape[0] < 10:
            raise ValueError(f"only {x.shape[0]} training tau jets: too few for the GP reference")
        self.y_mean = residual.mean(0)
        self.y_std = residual.std(0).clamp_min(1e-6)
        y = (residual - self.y_mean) / self.y_std
        ExactGP = _exact_gp_class()
        self.models, self.likelihoods = [], []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.seed))
            for c, name in enumerate(COMPONENTS):
                likelihood = gpytorch.likelihoods.GaussianLikelihood().double()
                model = ExactGP(x, y[:, c].contiguous(), likelihood).double()
                model.train()
                likelihood.train()
                optimizer = make_optimizer(model.parameters(), self.lr)
                mll = gpytorch.mlls.ExactMarginalLogLikelihood(likelihood, model)
                for _ in range(self.iterations):
                    optimizer.zero_grad()
                    loss = -mll(model(x), y[:, c])
                    loss.backward()
                    optimizer.step()
                model.eval()
                likelihood.eval()
                log.info("GP %s: %d points, final -mll %.3f, noise %.3g", name, x.shape[0],
                         loss.item(), likelihood.noise.item())
                self.models.append(model)
                self.likelihoods.append(likelihood)
        return self

    @torch.no_grad()
    def predict(self, data: TauEventData, batch_size: int = 2048) -> tuple[Tensor, Tensor, Tensor]:
        """``(mean [B, 3], sigma [B, 3], tau_mask [B])`` for every jet of ``data``.

        ``mean`` is the uncalibrated jet plus the GP's residual; ``sigma`` the predictive standard
        deviation (latent + noise).
        """
        import gpytorch

        if not self.models:
            raise RuntimeError("GPReference.predict before fit")
        x, base, _, mask = self._inputs(data)
        means, sigmas = [], []
        with gpytorch.settings.fast_pred_var():
            for start in range(0, x.shape[0], batch_size):
                xb = x[start : start + batch_size]
                m_cols, s_cols = [], []
                for model, likelihood in zip(self.models, self.likelihoods):
                    pred = likelihood(model(xb))
                    m_cols.append(pred.mean)
                    s_cols.append(pred.variance.clamp_min(0).sqrt())
                means.append(torch.stack(m_cols, 1))
                sigmas.append(torch.stack(s_cols, 1))
        assert self.y_mean is not None and self.y_std is not None
        mean = base + torch.cat(means) * self.y_std + self.y_mean
        sigma = torch.cat(sigmas) * self.y_std
        mean = torch.cat([mean[:, :2], physics.delta_phi(mean[:, 2:3], torch.zeros_like(mean[:, 2:3]))], 1)
        return mean.float(), sigma.float(), mask


def validity_fraction(
    u: Tensor, gp_mean: Tensor, gp_sigma: Tensor, mask: Tensor, nsigma: float = 2.0
) -> dict[str, float]:
    """Fraction of tau jets (``mask``) whose Task-1 output lies within ``nsigma`` GP sigmas.

    Returns:
        ``{"validity": mean over components, "validity_pt", "validity_eta", "validity_phi"}``.
    """
    if u.shape != gp_mean.shape or u.shape[1] != 3:
        raise ValueError(f"u {tuple(u.shape)} and GP mean {tuple(gp_mean.shape)} must be [B, 3]")
    if not bool(mask.any()):
        return {"validity": math.nan, **{f"validity_{c}": math.nan for c in COMPONENTS}}
    d = _wrap_residual(u.detach().cpu().float() - gp_mean)[mask].abs()
    inside = (d <= nsigma * gp_sigma[mask]).double().mean(0)
    out = {f"validity_{c}": float(v) for c, v in zip(COMPONENTS, inside)}
    out["validity"] = float(inside.mean())
    return out


def chain_upstream_outputs(chain, data: TauEventData, kinematics: JetKinematics, batch_size: int = 4096) -> Tensor:
    """Task-1 outputs ``[B, k]`` of a chain over ``data`` (CPU)."""
    from hepms.select.training import chain_outputs

    u, _ = chain_outputs(chain, data, kinematics, batch_size)
    return u


def fit_reference(task: UpstreamTask, kinematics: JetKinematics, train: TauEventData, options: dict) -> Optional[GPReference]:
    """The GP reference a study's ``study.validity`` section asks for, fitted on ``train``; None
    when it is switched off, or (with a warning) when the task is not the calibration.

    ``options``: ``enabled`` (None: on for the calibration), ``max_points``, ``iterations``, ``lr``,
    ``seed`` (:class:`GPReference`).
    """
    enabled = options.get("enabled")
    if enabled is None:
        enabled = task.name == "calibration"
    if not enabled:
        return None
    if task.name != "calibration":
        log.warning("the GP validity check needs the calibration task; skipped for %s", task.name)
        return None
    return GPReference(task, kinematics, max_points=options["max_points"], iterations=options["iterations"],
                       lr=options["lr"], seed=options["seed"]).fit(train)
