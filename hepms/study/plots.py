"""Figures of a run or a scan, with hist + mplhep (Agg backend; PDF and PNG).

Every function draws one figure and returns the paths it wrote; :class:`FigureStyle` carries the
experiment label, the mplhep style and the file formats (the ``plot`` section of the configuration).

* :func:`roc_figure`: background rejection versus signal efficiency, one curve per model.
* :func:`score_figure`: score distributions of both classes.
* :func:`pt_figures`: tau-ID efficiency and light-jet rejection versus jet pT at a working point.
* :func:`weights_figure`: loss weights (and weighted losses) per epoch, mean and spread over trials.
* :func:`boxplot_figure`: downstream AUC over trials versus the intermediate size, per connection.
* :func:`latent_figure`: the 2-d shared latent space coloured by tau / light jet.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from hepms.study.plan import output_path

log = logging.getLogger(__name__)

__all__ = [
    "FigureStyle",
    "roc_figure",
    "score_figure",
    "pt_figures",
    "weights_figure",
    "boxplot_figure",
    "latent_figure",
    "run_figures",
]

TASK_LABELS = {
    "tau": {"signal": r"$\tau$ jets", "background": "light jets", "title": r"$\tau$ identification",
            "x": r"$\tau$-jet efficiency", "y": "light-jet rejection"},
    "event": {"signal": r"H$\to\tau\tau$", "background": r"Z$\to\tau\tau$", "title": "event classification",
              "x": r"H$\to\tau\tau$ efficiency", "y": r"Z$\to\tau\tau$ rejection"},
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


@dataclass
class FigureStyle:
    """How figures look and where they go.

    Attributes:
        outdir: folder for the files.
        formats: file extensions (``pdf``, ``png``, ``svg``).
        style: an mplhep style name (``CMS``, ``ATLAS``, ...) or ``default``.
        exp, llabel, rlabel: the experiment label (``mplhep.label.exp_label``).
        dpi: PNG resolution.
    """

    outdir: Path
    formats: Sequence[str] = ("pdf", "png")
    style: str = "CMS"
    exp: str = "hepms"
    llabel: str = "Simulation"
    rlabel: Optional[str] = None
    dpi: int = 120
    written: list = field(default_factory=list)

    @classmethod
    def from_config(cls, plot: Mapping[str, Any], outdir: Path, info: Optional[Mapping[str, Any]] = None) -> "FigureStyle":
        rlabel = plot["rlabel"]
        if rlabel is None and info:
            parts = []
            if info.get("mu") is not None:
                parts.append(rf"$\langle\mu\rangle$ = {float(info['mu']):g}")
            if info.get("ecm_gev"):
                parts.append(f"{float(info['ecm_gev']) / 1000:g} TeV")
            rlabel = ", ".join(parts) or None
        return cls(Path(outdir), tuple(plot["formats"]), plot["style"], plot["exp"], plot["llabel"], rlabel, plot["dpi"])

    def figure(self, nrows: int = 1, ncols: int = 1, **kwargs: Any):
        plt = _pyplot()
        import mplhep

        if self.style != "default":
            mplhep.style.use(self.style)
        else:
            plt.style.use("default")
        return plt.subplots(nrows, ncols, **kwargs)

    def label(self, ax: Any, loc: int = 0) -> None:
        import mplhep

        mplhep.label.exp_label(exp=self.exp, llabel=self.llabel, rlabel=self.rlabel, loc=loc, ax=ax)

    def save(self, fig: Any, stem: str) -> list[Path]:
        plt = _pyplot()
        self.outdir.mkdir(parents=True, exist_ok=True)
        paths = []
        for ext in self.formats:
            path = output_path(self.outdir, stem, f".{ext}")  # stems may hold configuration text
            fig.savefig(path, dpi=self.dpi, bbox_inches="tight")
            paths.append(path)
        plt.close(fig)
        self.written.extend(paths)
        return paths


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))  # overflow-free


# ----------------------------------------------------------------------------------------------
# ROC and scores
# ----------------------------------------------------------------------------------------------
def roc_figure(
    style: FigureStyle,
    task: str,
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    stem: str,
) -> list[Path]:
    """Background rejection ``1 / eps_b`` versus signal efficiency ``eps_s``, AUC in the legend.

    Args:
        task: ``"tau"`` or ``"event"`` (axis labels).
        curves: ``{label: (labels, scores)}``.
    """
    from hepms import metrics

    names = TASK_LABELS[task]
    fig, ax = style.figure(figsize=(8, 7))
    for label, (y, s) in curves.items():
        try:
            tpr, fpr, _ = metrics.roc_curve(y, s)
            auc = metrics.roc_auc(y, s)
        except ValueError as error:
            log.warning("no ROC for %s: %s", label, error)
            continue
        keep = (fpr > 0) & (tpr > 0)
        ax.plot(tpr[keep], 1.0 / fpr[keep], label=f"{label} (AUC = {auc:.4f})")
    x = np.linspace(0.01, 1.0, 100)
    ax.plot(x, 1.0 / x, ls=":", color="grey", label="random")
    ax.set_yscale("log")
    ax.set_xlim(0, 1)
    ax.set_xlabel(names["x"])
    ax.set_ylabel(names["y"])
    ax.legend(title=names["title"], fontsize="x-small", title_fontsize="small", loc="upper right")
    style.label(ax)
    return style.save(fig, stem)


def score_figure(style: FigureStyle, task: str, labels: np.ndarray, logits: np.ndarray, stem: str) -> list[Path]:
    """Distributions of ``sigmoid(logit)`` for signal and background, normalised to unit area."""
    import hist
    import mplhep

    names = TASK_LABELS[task]
    score = _sigmoid(logits)
    labels = np.asarray(labels).astype(bool)
    fig, ax = style.figure(figsize=(8, 7))
    for mask, name in ((labels, names["signal"]), (~labels, names["background"])):
        h = hist.Hist(hist.axis.Regular(40, 0.0, 1.0, name="score", label="score"), storage=hist.storage.Weight())
        h.fill(score=np.clip(score[mask], 0.0, 1.0 - 1e-9))
        if h.sum().value > 0:
            mplhep.histplot(h, density=True, histtype="step", yerr=True, label=f"{name} ({int(mask.sum())})", ax=ax)
    ax.set_yscale("log")
    ax.set_xlabel(f"{names['title']} score")
    ax.set_ylabel("normalised entries")
    ax.legend(fontsize="small")
    style.label(ax)
    return style.save(fig, stem)


# ----------------------------------------------------------------------------------------------
# Efficiency and rejection versus pT
# ----------------------------------------------------------------------------------------------
def efficiency_vs_pt(
    pt: np.ndarray, labels: np.ndarray, logits: np.ndarray, bins: Sequence[float], tau_efficiency: float
) -> dict[str, np.ndarray]:
    """Per pT bin: tau efficiency and light-jet rejection at the threshold giving ``tau_efficiency``
    over all tau jets, with binomial uncertainties (``sqrt(eps (1 - eps) / n)``, propagated to the
    rejection). Bins without light jets passing give a NaN rejection.
    """
    import hist

    labels = np.asarray(labels).astype(bool)
    logits = np.asarray(logits, dtype=np.float64)
    threshold = float(np.quantile(logits[labels], 1.0 - tau_efficiency))
    passed = logits >= threshold
    out: dict[str, np.ndarray] = {"edges": np.asarray(bins, dtype=np.float64), "threshold": np.array(threshold)}
    for name, mask in (("tau", labels), ("light", ~labels)):
        axis = hist.axis.Variable(bins, name="pt")
        total = hist.Hist(axis).fill(pt=pt[mask]).values()
        npass = hist.Hist(axis).fill(pt=pt[mask & passed]).values()
        with np.errstate(divide="ignore", invalid="ignore"):
            eff = npass / total
            err = np.sqrt(eff * (1 - eff) / total)
        out[f"{name}_total"], out[f"{name}_passed"] = total, npass
        out[f"{name}_eff"], out[f"{name}_eff_err"] = eff, err
    with np.errstate(divide="ignore", invalid="ignore"):
        rej = np.where(out["light_passed"] > 0, 1.0 / out["light_eff"], np.nan)
        # sigma(1/e) = sigma(e) / e^2; with e = k/n the binomial error of e keeps this finite
        out["light_rej"], out["light_rej_err"] = rej, out["light_eff_err"] * rej**2
    return out


def pt_figures(
    style: FigureStyle,
    pt: np.ndarray,
    labels: np.ndarray,
    logits: np.ndarray,
    bins: Sequence[float],
    tau_efficiency: float,
    stem_prefix: str = "",
) -> list[Path]:
    """Tau-ID efficiency and light-jet rejection versus jet pT (two figures)."""
    res = efficiency_vs_pt(pt, labels, logits, bins, tau_efficiency)
    edges = res["edges"]
    centres, half = 0.5 * (edges[1:] + edges[:-1]), 0.5 * np.diff(edges)
    paths: list[Path] = []
    for key, ylabel, stem in (
        ("tau_eff", r"$\tau$-jet efficiency", "tau_efficiency_vs_pt"),
        ("light_rej", "light-jet rejection", "light_rejection_vs_pt"),
    ):
        fig, ax = style.figure(figsize=(8, 7))
        y, yerr = res[key], res[f"{key}_err"]
        ok = np.isfinite(y)
        ax.errorbar(centres[ok], y[ok], xerr=half[ok], yerr=yerr[ok], fmt="o",
                    label=rf"working point: $\epsilon_\tau$ = {tau_efficiency:.0%} overall")
        ax.set_xlim(edges[0], edges[-1])
        ax.set_xlabel(r"jet $p_{T}$ [GeV]")
        ax.set_ylabel(ylabel)
        if key == "tau_eff":
            ax.set_ylim(0, 1.3)
        elif np.any(y[ok] > 0):  # (a tiny test part may leave no finite rejection: no log axis then)
            ax.set_yscale("log")  # rejections span orders of magnitude across pT
        ax.legend(fontsize="small")
        style.label(ax)
        paths += style.save(fig, f"{stem_prefix}{stem}")
    return paths


# ----------------------------------------------------------------------------------------------
# Loss weights per epoch
# ----------------------------------------------------------------------------------------------
def _epoch_matrix(histories: Sequence[Sequence[Mapping[str, Any]]], key: str, phase: Optional[str]) -> np.ndarray:
    rows = []
    for epochs in histories:
        rows.append([e.get(key) for e in epochs if phase is None or e.get("phase") == phase])
    n = max((len(r) for r in rows), default=0)
    matrix = np.full((len(rows), n), np.nan)
    for i, r in enumerate(rows):
        matrix[i, : len(r)] = [np.nan if v is None else float(v) for v in r]
    return matrix


def weights_figure(
    style: FigureStyle,
    histories: Sequence[Sequence[Mapping[str, Any]]],
    tasks: Sequence[str],
    title: str,
    stem: str,
    phase: Optional[str] = None,
) -> list[Path]:
    """Loss weights ``w_i`` (top) and weighted training losses ``w_i L_i`` (bottom) per epoch.

    Lines: the mean over trials; bands: min to max over trials (trials stop at different epochs,
    so later epochs average fewer trials).
    """
    fig, (top, bottom) = style.figure(2, 1, figsize=(8, 9), sharex=True)
    names = {"tau": r"$\tau$ ID ($w_1$)", "event": r"H/Z ($w_2$)", "momentum": r"$p_\tau$"}
    for task in tasks:
        w = _epoch_matrix(histories, f"weight_{task}", phase)
        loss = _epoch_matrix(histories, f"train_{task}", phase)
        if w.size == 0:
            continue
        epochs = np.arange(1, w.shape[1] + 1)
        for ax, values in ((top, w), (bottom, w * loss)):
            with np.errstate(all="ignore"):
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    mean, lo, hi = np.nanmean(values, 0), np.nanmin(values, 0), np.nanmax(values, 0)
            line = ax.plot(epochs, mean, marker="o", ms=3, label=names.get(task, task))[0]
            ax.fill_between(epochs, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    top.set_ylabel("loss weight")
    top.legend(title=f"{title} ({len(histories)} trial{'' if len(histories) == 1 else 's'})", fontsize="x-small", title_fontsize="small")
    bottom.set_ylabel(r"weighted training loss $w_i L_i$")
    bottom.set_xlabel("epoch")
    style.label(top)
    return style.save(fig, stem)


# ----------------------------------------------------------------------------------------------
# Box plot and latent space
# ----------------------------------------------------------------------------------------------
def boxplot_figure(
    style: FigureStyle,
    values: Mapping[str, Mapping[Any, Sequence[float]]],
    xlabel: str,
    ylabel: str,
    stem: str,
) -> list[Path]:
    """Side-by-side box plots: ``values[group][x] = [one number per trial]``."""
    groups = list(values)
    xs = sorted({x for g in groups for x in values[g]}, key=lambda v: (isinstance(v, str), v))
    fig, ax = style.figure(figsize=(9, 7))
    width = 0.8 / max(1, len(groups))
    handles = []
    for i, group in enumerate(groups):
        data, positions = [], []
        for j, x in enumerate(xs):
            v = [float(a) for a in values[group].get(x, []) if a is not None and math.isfinite(float(a))]
            if v:
                data.append(v)
                positions.append(j + (i - (len(groups) - 1) / 2) * width)
        if not data:
            continue
        colour = f"C{i}"
        box = ax.boxplot(data, positions=positions, widths=0.9 * width, patch_artist=True, manage_ticks=False,
                         boxprops={"facecolor": colour, "alpha": 0.5}, medianprops={"color": "k"})
        handles.append((box["boxes"][0], group))
        for p, v in zip(positions, data):
            ax.plot(np.full(len(v), p), v, ".", color=colour, ms=4)
    ax.set_xticks(range(len(xs)))
    ax.set_xticklabels([str(x) for x in xs])
    ax.set_xlim(-0.6, len(xs) - 0.4)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if handles:
        ax.legend([h for h, _ in handles], [g for _, g in handles], fontsize="small")
    style.label(ax)
    return style.save(fig, stem)


def latent_figure(
    style: FigureStyle, intermediate: np.ndarray, labels: np.ndarray, max_points: int, stem: str, seed: int = 0
) -> list[Path]:
    """The two intermediate features of each test jet, tau jets and light jets in two colours."""
    labels = np.asarray(labels).astype(bool)
    z = np.asarray(intermediate, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] != 2:
        raise ValueError(f"the latent figure needs k = 2 intermediate features, got shape {z.shape}")
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(z))[:max_points]  # a random subset keeps the PDF small
    fig, ax = style.figure(figsize=(8, 8))
    for mask, name, colour in ((~labels, "light jets", "C0"), (labels, r"$\tau$ jets", "C3")):
        sel = pick[mask[pick]]
        ax.scatter(z[sel, 0], z[sel, 1], s=3, alpha=0.35, color=colour, label=f"{name} ({int(mask.sum())})",
                   rasterized=True)
    ax.set_xlabel("shared feature 1")
    ax.set_ylabel("shared feature 2")
    ax.legend(markerscale=4, fontsize="small")
    style.label(ax)
    return style.save(fig, stem)


# ----------------------------------------------------------------------------------------------
# The set of figures of one trained model
# ----------------------------------------------------------------------------------------------
def run_figures(
    style: FigureStyle,
    predictions: Mapping[str, np.ndarray],
    evaluate: Mapping[str, Any],
    label: str,
    epochs: Optional[Sequence[Mapping[str, Any]]] = None,
    weight_tasks: Optional[Sequence[str]] = None,
    max_latent_points: int = 20000,
    prefix: str = "",
) -> list[Path]:
    """ROC and score figures of both tasks, efficiency / rejection versus pT, the loss weights
    per epoch (from ``epochs``) and, for ``k = 2``, the latent space."""
    paths: list[Path] = []
    p = predictions
    paths += roc_figure(style, "tau", {label: (p["jet_labels"], p["tau_logit"])}, f"{prefix}roc_tau")
    paths += roc_figure(style, "event", {label: (p["event_labels"], p["event_logit"])}, f"{prefix}roc_event")
    paths += score_figure(style, "tau", p["jet_labels"], p["tau_logit"], f"{prefix}scores_tau")
    paths += score_figure(style, "event", p["event_labels"], p["event_logit"], f"{prefix}scores_event")
    if "jet_pt" in p:
        paths += pt_figures(style, p["jet_pt"], p["jet_labels"], p["tau_logit"], evaluate["pt_bins"],
                            evaluate["tau_efficiency"], prefix)
    if epochs and weight_tasks:
        paths += weights_figure(style, [epochs], weight_tasks, label, f"{prefix}loss_weights")
    if p["intermediate"].ndim == 2 and p["intermediate"].shape[1] == 2:
        paths += latent_figure(style, p["intermediate"], p["jet_labels"], max_latent_points, f"{prefix}latent_space")
    return paths
