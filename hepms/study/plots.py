"""Figures of a run or a scan, with hist + mplhep (Agg backend; PDF and PNG).

Every function draws one figure and returns the paths it wrote; :class:`FigureStyle` carries the
experiment label, the mplhep style and the file formats (the ``plot`` section of the configuration).
Every figure states what it shows (configuration, trial(s), what a band or an error bar is) in a
caption under the axes and in the file's metadata (PNG ``Description``, PDF ``Subject``, SVG
``Description``); :attr:`FigureStyle.captions` collects them per file. Legends are placed by
:func:`place_legend` where they cover no drawn data (else outside the axes).

* :func:`roc_figure`: background rejection versus signal efficiency, one curve per model (one trial).
* :func:`roc_band_figure`: the same over trials: mean, a band over trials, a ratio panel to a
  reference configuration (curves on a fixed signal-efficiency grid, ``result.json`` key ``roc``).
* :func:`score_figure`: score distributions of both classes.
* :func:`pt_figures`: tau-ID efficiency (Clopper-Pearson intervals) and light-jet rejection
  (asymmetric intervals, lower limits where no light jet passes) versus jet pT at a working point.
* :func:`weights_figure`: loss weights (and weighted losses) per epoch, mean and a band over trials.
* :func:`boxplot_figure`: AUC over trials versus a setting (the intermediate size k), per
  connection; the downstream AUC and, above it, the upstream (tau-ID) AUC where it applies.
* :func:`latent_figure`: the 2-d shared latent space as 2-D histograms per class, with contours.
"""
from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from hepms.study.plan import output_path

log = logging.getLogger(__name__)

__all__ = [
    "FigureStyle",
    "RocBand",
    "place_legend",
    "add_caption",
    "figure_metadata",
    "plain_text",
    "trials_text",
    "legend_collisions",
    "roc_figure",
    "roc_band_figure",
    "score_figure",
    "efficiency_vs_pt",
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

#: What a band over trials is, in words (legends and captions).
BANDS = {"std": r"mean $\pm$ 1 s.d. over trials", "minmax": "min to max over trials"}


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
        written: every file written so far.
        captions: ``{file name: caption}`` of every file written so far.
    """

    outdir: Path
    formats: Sequence[str] = ("pdf", "png")
    style: str = "CMS"
    exp: str = "hepms"
    llabel: str = "Simulation"
    rlabel: Optional[str] = None
    dpi: int = 120
    written: list = field(default_factory=list)
    captions: dict = field(default_factory=dict)

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
        """``plt.subplots`` in the style, with constrained layout (no label is ever clipped)."""
        plt = _pyplot()
        import mplhep

        if self.style != "default":
            mplhep.style.use(self.style)
        else:
            plt.style.use("default")
        kwargs.setdefault("layout", "constrained")
        return plt.subplots(nrows, ncols, **kwargs)

    def label(self, ax: Any, loc: int = 0, rlabel: bool = True) -> None:
        """The experiment label above ``ax`` (``rlabel=False``: without the right-hand text, for
        narrow panels that put it elsewhere)."""
        import mplhep

        mplhep.label.exp_label(exp=self.exp, llabel=self.llabel, rlabel=self.rlabel if rlabel else "", loc=loc, ax=ax)

    def save(self, fig: Any, stem: str, caption: Optional[str] = None) -> list[Path]:
        """Write ``fig`` in every format; ``caption`` goes under the axes and into the metadata."""
        plt = _pyplot()
        self.outdir.mkdir(parents=True, exist_ok=True)
        add_caption(fig, caption)
        paths = []
        for ext in self.formats:
            path = output_path(self.outdir, stem, f".{ext}")  # stems may hold configuration text
            fig.savefig(path, dpi=self.dpi, bbox_inches="tight", metadata=figure_metadata(ext, stem, caption))
            paths.append(path)
            self.captions[path.name] = plain_text(caption or "")
        plt.close(fig)
        self.written.extend(paths)
        return paths


def add_caption(fig: Any, caption: Optional[str], fontsize: float = 15) -> None:
    """``caption`` as wrapped text under the figure's lower edge (a file saved with
    ``bbox_inches="tight"`` grows to include it; nothing is drawn over the axes)."""
    import textwrap

    if caption:
        width_chars = max(40, int(fig.get_figwidth() * 120 / fontsize))
        fig.text(0.0, 0.0, textwrap.fill(caption, width_chars), ha="left", va="top", fontsize=fontsize, color="0.2")


_TEX = {r"\tau": "τ", r"\pm": "±", r"\to": "→", r"\langle": "⟨", r"\rangle": "⟩", r"\mu": "μ",
        r"\epsilon": "ε", r"\sigma": "σ", r"\alpha": "α", r"\sqrt": "√", "_{T}": "T", "_T": "T"}


def plain_text(text: str) -> str:
    """``$\\tau$ ID, mean $\\pm$ 1 s.d.`` -> ``τ ID, mean ± 1 s.d.``: captions for file metadata
    and JSON, where nothing renders TeX."""
    for tex, char in _TEX.items():
        text = text.replace(tex, char)
    return text.replace("$", "").replace("{", "").replace("}", "")


def figure_metadata(ext: str, stem: str, caption: Optional[str]) -> dict[str, str]:
    """``savefig(metadata=...)`` for the format ``ext``: the title, the caption, the producer."""
    import hepms

    software = f"hepms {hepms.__version__}"
    caption = plain_text(caption or "")
    if ext == "pdf":
        return {"Title": stem, "Subject": caption or "", "Creator": software}
    if ext == "svg":
        return {"Title": stem, "Description": caption or "", "Creator": software}
    return {"Title": stem, "Description": caption or "", "Software": software}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))  # overflow-free


def trials_text(seeds: Sequence[int]) -> str:
    """``trial seed 1000`` / ``3 trials (seeds 1000-1002)`` / ``3 trials (seeds 1000, 1004, 1007)``."""
    s = sorted(int(x) for x in seeds)
    if not s:
        return "no trials"
    if len(s) == 1:
        return f"1 trial (seed {s[0]})"
    span = f"{s[0]}–{s[-1]}" if s == list(range(s[0], s[-1] + 1)) else ", ".join(map(str, s))
    return f"{len(s)} trials (seeds {span})"


# ----------------------------------------------------------------------------------------------
# Legends that cover no data
# ----------------------------------------------------------------------------------------------
_LOCS = ("upper right", "upper left", "lower left", "lower right", "center right", "center left",
         "upper center", "lower center")


def _resample(xy: np.ndarray, step: float) -> np.ndarray:
    """Points every ``step`` pixels along a polyline (its vertices included)."""
    xy = xy[np.isfinite(xy).all(axis=1)]
    if len(xy) < 2:
        return xy
    s = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(xy, axis=0).T))])
    if s[-1] <= step:
        return xy
    t = np.arange(0.0, s[-1], step)
    return np.concatenate([xy, np.column_stack([np.interp(t, s, xy[:, 0]), np.interp(t, s, xy[:, 1])])])


def _occupied(ax: Any, renderer: Any, step: float = 3.0) -> tuple[np.ndarray, list[Any]]:
    """What a legend must not cover, in display coordinates: points along every line, marker,
    error bar and outline, and the areas (bands, boxes, note texts) as paths."""
    from matplotlib.collections import LineCollection, PathCollection, PolyCollection, QuadMesh
    from matplotlib.path import Path as MplPath

    points: list[np.ndarray] = []
    areas: list[Any] = []
    for line in ax.get_lines():
        if not line.get_visible():
            continue
        xy = line.get_transform().transform(np.asarray(line.get_xydata(), dtype=np.float64))
        connected = line.get_linestyle() not in ("None", "none", "", " ")
        points.append(_resample(xy, step) if connected else xy[np.isfinite(xy).all(axis=1)])
    for coll in ax.collections:
        if not coll.get_visible():
            continue
        if isinstance(coll, QuadMesh):  # a 2-D histogram: the centres of its filled cells
            values = np.ma.masked_invalid(coll.get_array())
            c = coll.get_coordinates()
            centres = 0.25 * (c[:-1, :-1] + c[1:, :-1] + c[:-1, 1:] + c[1:, 1:])
            filled = ~np.ma.getmaskarray(values).reshape(centres.shape[:2]) & (values.filled(0).reshape(centres.shape[:2]) != 0)
            points.append(coll.get_transform().transform(centres[filled]))
            continue
        if isinstance(coll, PathCollection):  # scatter: the marker positions
            offsets = np.asarray(coll.get_offsets(), dtype=np.float64)
            if offsets.size:
                points.append(coll.get_offset_transform().transform(offsets))
            continue
        for path in coll.get_paths():
            xy = coll.get_transform().transform(path.vertices)
            points.append(_resample(xy, step))
            if isinstance(coll, PolyCollection) and not isinstance(coll, LineCollection):
                areas.append(MplPath(xy))
    for patch in ax.patches:
        xy = patch.get_transform().transform(patch.get_path().vertices)
        points.append(_resample(xy, step))
        areas.append(MplPath(xy))
    for text in ax.texts:
        if text.get_visible() and text.get_text():
            b = text.get_window_extent(renderer)
            areas.append(MplPath([(b.x0, b.y0), (b.x1, b.y0), (b.x1, b.y1), (b.x0, b.y1)]))
    frame = ax.get_window_extent(renderer)
    pts = np.concatenate(points) if points else np.empty((0, 2))
    inside = (pts[:, 0] >= frame.x0) & (pts[:, 0] <= frame.x1) & (pts[:, 1] >= frame.y0) & (pts[:, 1] <= frame.y1)
    return pts[inside], areas


def _collisions(box: Any, points: np.ndarray, areas: Sequence[Any]) -> int:
    b = box.expanded(1.02, 1.04)
    n = int(((points[:, 0] >= b.x0) & (points[:, 0] <= b.x1) & (points[:, 1] >= b.y0) & (points[:, 1] <= b.y1)).sum())
    xs, ys = np.linspace(b.x0, b.x1, 7), np.linspace(b.y0, b.y1, 5)
    probe = np.array([(x, y) for x in xs for y in ys])
    for area in areas:
        n += int(area.contains_points(probe).sum())
    return n


def legend_collisions(legend: Any) -> int:
    """How many drawn data points (and probe points of bands, boxes and notes) the legend covers."""
    ax = legend.axes
    renderer = ax.figure.canvas.get_renderer()
    points, areas = _occupied(ax, renderer)
    return _collisions(legend.get_window_extent(renderer), points, areas)


def place_legend(ax: Any, *args: Any, locs: Sequence[str] = _LOCS, grow: Sequence[float] = (1.3, 1.7, 2.4),
                 **kwargs: Any) -> Any:
    """``ax.legend(*args, **kwargs)`` where it covers no drawn data: the first of ``locs`` that
    is free; else the y axis is extended upwards (by the factors ``grow`` of its range, in decades
    on a log axis) to make room above the data; else outside the axes on the right.
    Returns the legend."""
    fig = ax.figure
    fig.canvas.draw()  # the layout first: positions are final before they are compared
    renderer = fig.canvas.get_renderer()
    lo, hi = ax.get_ylim()
    log_axis = ax.get_yscale() == "log"
    for factor in (1.0, *grow):
        candidates = locs
        if factor != 1.0:
            ax.set_ylim(lo, hi * (hi / lo) ** (factor - 1.0) if log_axis else lo + (hi - lo) * factor)
            candidates = [loc for loc in locs if loc.startswith("upper")]
        points, areas = _occupied(ax, renderer)
        for loc in candidates:
            legend = ax.legend(*args, loc=loc, **kwargs)
            if _collisions(legend.get_window_extent(renderer), points, areas) == 0:
                return legend
    ax.set_ylim(lo, hi)
    return ax.legend(*args, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **kwargs)


# ----------------------------------------------------------------------------------------------
# ROC and scores
# ----------------------------------------------------------------------------------------------
def roc_figure(
    style: FigureStyle,
    task: str,
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    stem: str,
    caption: Optional[str] = None,
) -> list[Path]:
    """Background rejection ``1 / eps_b`` versus signal efficiency ``eps_s`` of single models,
    AUC in the legend.

    Args:
        task: ``"tau"`` or ``"event"`` (axis labels).
        curves: ``{label: (labels, scores)}``.
        caption: what the curves are (configuration, trial); default: the labels.
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
    style.label(ax)
    place_legend(ax, title=names["title"], fontsize="x-small", title_fontsize="small")
    text = caption or f"{names['title']} ROC: " + "; ".join(curves)
    return style.save(fig, stem, text)


@dataclass
class RocBand:
    """One configuration's ROC curves over trials, on a common signal-efficiency grid.

    Attributes:
        label: the configuration.
        signal_efficiency: the grid, shape ``(G,)``.
        background_efficiency: one row per trial with a curve, shape ``(T, G)``.
        auc: the test AUC of every finished trial (also those without a curve).
        trials: finished trials of the configuration (``T <= trials``).
    """

    label: str
    signal_efficiency: np.ndarray
    background_efficiency: np.ndarray
    auc: Sequence[float] = ()
    trials: int = 0

    def rejections(self) -> np.ndarray:
        eff = np.atleast_2d(np.asarray(self.background_efficiency, dtype=np.float64))
        with np.errstate(divide="ignore"):
            return np.where(eff > 0, 1.0 / eff, np.nan)  # no background left: rejection unbounded


def _band(values: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and band (lower, upper) over the rows of ``values``."""
    mean = values.mean(axis=0)
    if len(values) < 2:
        return mean, mean, mean
    if kind == "minmax":
        return mean, values.min(axis=0), values.max(axis=0)
    std = values.std(axis=0, ddof=1)
    return mean, mean - std, mean + std


def roc_band_figure(
    style: FigureStyle,
    task: str,
    bands: Sequence[RocBand],
    stem: str,
    reference: Optional[str] = None,
    band: str = "std",
    caption: Optional[str] = None,
) -> list[Path]:
    """ROC curves over trials: the mean rejection at each signal efficiency with a band over trials
    (``band``: ``"std"`` mean +- 1 s.d., ``"minmax"``), and below it each trial's rejection divided
    by the mean rejection of ``reference`` (default: the first band), with the same kind of band.

    Grid points where a trial has no background left (rejection unbounded) are left out.
    """
    if band not in BANDS:
        raise ValueError(f"band must be one of {sorted(BANDS)}, got {band!r}")
    bands = [b for b in bands if np.asarray(b.background_efficiency).size]
    if not bands:
        raise ValueError("roc_band_figure needs at least one configuration with ROC curves")
    names = TASK_LABELS[task]
    ref = next((b for b in bands if b.label == reference), bands[0])
    grid = np.asarray(ref.signal_efficiency, dtype=np.float64)
    for b in bands:
        other = np.asarray(b.signal_efficiency, dtype=np.float64)
        if other.shape != grid.shape or not np.allclose(other, grid):
            raise ValueError(f"ROC of {b.label!r} is on another signal-efficiency grid than {ref.label!r}")
        if np.atleast_2d(b.background_efficiency).shape[1] != grid.size:
            raise ValueError(f"ROC of {b.label!r}: {np.shape(b.background_efficiency)} background efficiencies "
                             f"for a grid of {grid.size} signal efficiencies")
    ref_rej = ref.rejections()
    ref_mean = ref_rej.mean(axis=0)
    fig, (top, bottom) = style.figure(2, 1, figsize=(8, 9), sharex=True, height_ratios=(3, 1))
    from matplotlib.patches import Patch

    handles, labels = [], []
    lowest = 1.0
    for i, b in enumerate(bands):
        rej = b.rejections()
        ok = np.isfinite(rej).all(axis=0) & np.isfinite(ref_mean)
        if not ok.any():
            log.warning("no finite rejection for %s", b.label)
            continue
        x = grid[ok]
        lowest = min(lowest, float(x.min()))
        colour = f"C{i}"
        mean, lo, hi = _band(rej[:, ok], band)
        line = top.plot(x, mean, color=colour, lw=2)[0]
        top.fill_between(x, lo, hi, color=colour, alpha=0.25, lw=0)
        rmean, rlo, rhi = _band(rej[:, ok] / ref_mean[ok], band)
        bottom.plot(x, rmean, color=colour, lw=2)
        bottom.fill_between(x, rlo, rhi, color=colour, alpha=0.25, lw=0)
        auc = [a for a in b.auc if a is not None and math.isfinite(a)]
        shown = len(rej)
        text = f"{b.label}{' (ref.)' if b is ref else ''}: "
        if auc:
            text += f"AUC {np.mean(auc):.4f}" + (rf" $\pm$ {np.std(auc, ddof=1):.4f}" if len(auc) > 1 else "")
            text += f" ({len(auc)} trial{'s' if len(auc) != 1 else ''})"
        else:
            text += f"{shown} trial{'s' if shown != 1 else ''}"
        if shown < max(b.trials, len(auc)):
            text += f", curve of {shown}"  # trials without a stored curve still count in the AUC
        handles.append(line)
        labels.append(text)
    handles.append(Patch(color="grey", alpha=0.3, lw=0))
    labels.append(f"bands: {BANDS[band]}")
    top.set_yscale("log")
    top.set_ylabel(names["y"])
    top.set_xlim(lowest, 1.0)
    bottom.axhline(1.0, color="grey", lw=1, ls=":")
    bottom.set_ylabel("ratio to ref.")
    bottom.set_xlabel(names["x"])
    style.label(top)
    place_legend(top, handles, labels, title=names["title"], fontsize="x-small", title_fontsize="small")
    text = caption or (f"{names['title']}: rejection on a grid of signal efficiencies, mean over trials with a "
                       f"band of {BANDS[band]}; ratio panel: each trial's rejection over the mean rejection of "
                       f"{ref.label}, drawn as the mean and band of those ratios")
    return style.save(fig, stem, text)


def score_figure(
    style: FigureStyle, task: str, labels: np.ndarray, logits: np.ndarray, stem: str, caption: Optional[str] = None
) -> list[Path]:
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
    style.label(ax)
    place_legend(ax, fontsize="small")  # (extends the y axis when the peaks leave no room)
    text = (f"{caption}; " if caption else "") + "each class normalised to unit area, error bars: statistical"
    return style.save(fig, stem, text)


# ----------------------------------------------------------------------------------------------
# Efficiency and rejection versus pT
# ----------------------------------------------------------------------------------------------
def efficiency_vs_pt(
    pt: np.ndarray, labels: np.ndarray, logits: np.ndarray, bins: Sequence[float], tau_efficiency: float,
    limit_cl: float = 0.95,
) -> dict[str, np.ndarray]:
    """Per pT bin: tau efficiency and light-jet rejection at the threshold giving ``tau_efficiency``
    over all tau jets.

    Efficiencies carry their Clopper-Pearson 68.3 % interval (``{name}_eff_lo`` / ``_hi``); the
    light-jet rejection carries that interval inverted (``light_rej_lo`` / ``_hi``), and where
    no light jet passes (rejection unbounded) a lower limit at ``limit_cl`` (``light_rej_limit``,
    NaN elsewhere) instead of a value. Bins without jets give NaN.
    """
    import hist

    from hepms import metrics

    labels = np.asarray(labels).astype(bool)
    logits = np.asarray(logits, dtype=np.float64)
    if not labels.any():
        raise ValueError("efficiency_vs_pt needs tau jets (label 1), got none")
    threshold = float(np.quantile(logits[labels], 1.0 - tau_efficiency))
    passed = logits >= threshold
    out: dict[str, np.ndarray] = {"edges": np.asarray(bins, dtype=np.float64), "threshold": np.array(threshold)}
    for name, mask in (("tau", labels), ("light", ~labels)):
        axis = hist.axis.Variable(bins, name="pt")
        total = hist.Hist(axis).fill(pt=pt[mask]).values()
        npass = hist.Hist(axis).fill(pt=pt[mask & passed]).values()
        eff, lo, hi = metrics.clopper_pearson(npass, total)
        out[f"{name}_total"], out[f"{name}_passed"] = total, npass
        out[f"{name}_eff"], out[f"{name}_eff_lo"], out[f"{name}_eff_hi"] = eff, lo, hi
    rej = metrics.rejection_interval(out["light_passed"], out["light_total"], limit_cl=limit_cl)
    out["light_rej"], out["light_rej_lo"], out["light_rej_hi"] = rej["rejection"], rej["lower"], rej["upper"]
    out["light_rej_limit"] = rej["lower_limit"]
    return out


def pt_figures(
    style: FigureStyle,
    pt: np.ndarray,
    labels: np.ndarray,
    logits: np.ndarray,
    bins: Sequence[float],
    tau_efficiency: float,
    stem_prefix: str = "",
    caption: Optional[str] = None,
    limit_cl: float = 0.95,
) -> list[Path]:
    """Tau-ID efficiency and light-jet rejection versus jet pT (two figures), Clopper-Pearson
    intervals, lower limits (upward arrows) for bins where no light jet passes."""
    res = efficiency_vs_pt(pt, labels, logits, bins, tau_efficiency, limit_cl)
    edges = res["edges"]
    centres, half = 0.5 * (edges[1:] + edges[:-1]), 0.5 * np.diff(edges)
    wp = rf"working point: $\epsilon_\tau$ = {tau_efficiency:.0%} overall"
    intervals = "error bars: Clopper-Pearson 68.3% intervals"
    paths: list[Path] = []

    fig, ax = style.figure(figsize=(8, 7))
    y, ok = res["tau_eff"], np.isfinite(res["tau_eff"])
    yerr = np.array([y - res["tau_eff_lo"], res["tau_eff_hi"] - y])[:, ok]
    ax.errorbar(centres[ok], y[ok], xerr=half[ok], yerr=yerr, fmt="o", label=wp)
    ax.set_xlim(edges[0], edges[-1])
    ax.set_ylim(0, 1.35)  # room above efficiency 1 for the legend
    ax.set_xlabel(r"jet $p_{T}$ [GeV]")
    ax.set_ylabel(r"$\tau$-jet efficiency")
    style.label(ax)
    place_legend(ax, fontsize="small")
    text = f"{caption}; {intervals}" if caption else intervals
    paths += style.save(fig, f"{stem_prefix}tau_efficiency_vs_pt", text)

    fig, ax = style.figure(figsize=(8, 7))
    y, ok = res["light_rej"], np.isfinite(res["light_rej"])
    yerr = np.array([y - res["light_rej_lo"], res["light_rej_hi"] - y])[:, ok]
    ax.errorbar(centres[ok], y[ok], xerr=half[ok], yerr=yerr, fmt="o", color="C0", label=wp)
    limit = res["light_rej_limit"]
    lim = np.isfinite(limit)
    if lim.any():
        # A marker at the limit with an arrow pointing up: the rejection is at least this.
        ax.errorbar(centres[lim], limit[lim], xerr=half[lim], yerr=limit[lim] * 1.5, lolims=True, fmt="none",
                    color="C1", label=f"lower limit ({limit_cl:.0%} CL): no light jet passes")
    finite = np.concatenate([y[ok], limit[lim]])
    ax.set_xlim(edges[0], edges[-1])
    ax.set_xlabel(r"jet $p_{T}$ [GeV]")
    ax.set_ylabel("light-jet rejection")
    if np.any(finite > 0):  # (a tiny test part may leave no finite rejection: no log axis then)
        ax.set_yscale("log")  # rejections span orders of magnitude across pT
        top = np.nanmax(np.concatenate([res["light_rej_hi"][ok], limit[lim] * 2.5]))
        bottom = np.nanmin(np.concatenate([res["light_rej_lo"][ok], limit[lim]]))
        ax.set_ylim(max(bottom / 2, 0.5), top * 20)  # a decade above the data for the legend
    style.label(ax)
    place_legend(ax, fontsize="small")
    text = (f"{caption}; " if caption else "") + f"{intervals} of the light-jet efficiency, inverted"
    if lim.any():
        text += f"; arrows: {limit_cl:.0%} CL lower limits where no light jet passes"
    paths += style.save(fig, f"{stem_prefix}light_rejection_vs_pt", text)
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
    band: str = "minmax",
    caption: Optional[str] = None,
) -> list[Path]:
    """Loss weights ``w_i`` (top) and weighted training losses ``w_i L_i`` (bottom) per epoch.

    Lines: the mean over the trials that reached the epoch (trials stop at different epochs);
    bands: ``band`` over those trials (``"minmax"`` or ``"std"``), stated in the legend.
    """
    if band not in BANDS:
        raise ValueError(f"band must be one of {sorted(BANDS)}, got {band!r}")
    from matplotlib.patches import Patch

    fig, (top, bottom) = style.figure(2, 1, figsize=(8, 9), sharex=True)
    names = {"tau": r"$\tau$ ID ($w_1$)", "event": r"H/Z ($w_2$)", "momentum": r"$p_\tau$"}
    handles, labels = [], []
    for task in tasks:
        w = _epoch_matrix(histories, f"weight_{task}", phase)
        loss = _epoch_matrix(histories, f"train_{task}", phase)
        if w.size == 0:
            continue
        epochs = np.arange(1, w.shape[1] + 1)
        for ax, values in ((top, w), (bottom, w * loss)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # epochs no trial reached: NaN
                mean = np.nanmean(values, 0)
                if band == "minmax":
                    lo, hi = np.nanmin(values, 0), np.nanmax(values, 0)
                else:
                    std = np.nan_to_num(np.nanstd(values, 0, ddof=1)) if len(values) > 1 else 0.0 * mean
                    lo, hi = mean - std, mean + std
            line = ax.plot(epochs, mean, marker="o", ms=3)[0]
            ax.fill_between(epochs, lo, hi, color=line.get_color(), alpha=0.25, lw=0)
            if ax is top:
                handles.append(line)
                labels.append(names.get(task, task))
    n = len(histories)
    if n > 1:
        handles.append(Patch(color="grey", alpha=0.3, lw=0))
        labels.append(f"band: {BANDS[band]}")
    top.set_ylabel("loss weight $w_i$")
    bottom.set_ylabel(r"$w_i L_i$ (training)")
    bottom.set_xlabel("epoch")
    style.label(top)
    place_legend(top, handles, labels, title=f"{title} ({n} trial{'' if n == 1 else 's'})", fontsize="x-small",
                 title_fontsize="small")
    text = caption or f"{title}: lines: mean over {n} trial{'' if n == 1 else 's'}" + (
        f"; bands: {BANDS[band]} (later epochs average the trials that reached them)" if n > 1 else "")
    return style.save(fig, stem, text)


# ----------------------------------------------------------------------------------------------
# Box plots and latent space
# ----------------------------------------------------------------------------------------------
BOXES = "boxes: quartiles over trials, line: median, whiskers: 1.5 IQR, dots: single trials"


def _boxes(ax: Any, values: Mapping[str, Mapping[Any, Sequence[float]]], groups: Sequence[str],
           xs: Sequence[Any]) -> dict[str, Any]:
    """Side-by-side boxes per x, one colour per group; returns ``{group: handle}``."""
    width = 0.8 / max(1, len(groups))
    handles = {}
    for i, group in enumerate(groups):
        data, positions = [], []
        for j, x in enumerate(xs):
            v = [float(a) for a in values.get(group, {}).get(x, []) if a is not None and math.isfinite(float(a))]
            if v:
                data.append(v)
                positions.append(j + (i - (len(groups) - 1) / 2) * width)
        if not data:
            continue
        colour = f"C{i}"
        box = ax.boxplot(data, positions=positions, widths=0.9 * width, patch_artist=True, manage_ticks=False,
                         boxprops={"facecolor": colour, "alpha": 0.5}, medianprops={"color": "k"},
                         showfliers=False)  # the dots show every trial, outliers included
        handles[group] = box["boxes"][0]
        for p, v in zip(positions, data):
            ax.plot(np.full(len(v), p), v, ".", color=colour, ms=4)
    return handles


def boxplot_figure(
    style: FigureStyle,
    values: Mapping[str, Mapping[Any, Sequence[float]]],
    xlabel: str,
    ylabel: str,
    stem: str,
    upstream: Optional[Mapping[str, Mapping[Any, Sequence[float]]]] = None,
    upstream_ylabel: str = r"upstream ($\tau$ ID) test AUC",
    not_applicable: Sequence[str] = (),
    caption: Optional[str] = None,
) -> list[Path]:
    """Side-by-side box plots: ``values[group][x] = [one number per trial]``.

    With ``upstream`` (same layout), a second panel above shows it (the slides' k-scan figure:
    tau-ID AUC on top, H/Z AUC below); ``not_applicable`` names the runs left out of it (trained
    with ``w1 = 0``: their tau head gets no gradient), said in its legend and the caption.
    """
    groups = list(values)
    for g in upstream or {}:
        if g not in groups:
            groups.append(g)
    xs = sorted({x for source in (values, upstream or {}) for g in source for x in source[g]},
                key=lambda v: (isinstance(v, str), v))
    if upstream is not None:
        fig, (up, ax) = style.figure(2, 1, figsize=(9, 10), sharex=True)
    else:
        fig, ax = style.figure(figsize=(9, 7))
        up = None
    handles = _boxes(ax, values, groups, xs)
    ax.set_xticks(range(len(xs)))
    ax.set_xticklabels([str(x) for x in xs])
    ax.set_xlim(-0.6, len(xs) - 0.4)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    legend_ax = ax
    extra_handles, extra_labels = [], []
    if up is not None:
        handles = {**_boxes(up, upstream or {}, groups, xs), **handles}
        up.set_ylabel(upstream_ylabel)
        legend_ax = up
        if not_applicable:
            from matplotlib.patches import Patch

            import textwrap

            extra_handles.append(Patch(fill=False, lw=0))
            extra_labels.append("not shown (w1 = 0, tau head untrained):\n"
                                + textwrap.fill(", ".join(not_applicable), 36))
        style.label(up)
    else:
        style.label(ax)
    if handles:
        ordered = [g for g in groups if g in handles]
        place_legend(legend_ax, [handles[g] for g in ordered] + extra_handles, ordered + extra_labels,
                     fontsize="x-small")
    text = caption or BOXES
    if not_applicable:
        text += ("; the upstream panel leaves out " + ", ".join(not_applicable) + ": trained with w1 = 0, their "
                 "tau head gets no gradient (its AUC is that of its initial weights, not a tau-ID AUC)")
    return style.save(fig, stem, text)


def _containment_levels(density: np.ndarray, fractions: Sequence[float]) -> list[float]:
    """Density thresholds whose super-level sets hold ``fractions`` of the entries (ascending)."""
    flat = np.sort(density.ravel())[::-1]
    total = flat.sum()
    if total <= 0:
        return []
    cumulative = np.cumsum(flat) / total
    levels = {float(flat[min(np.searchsorted(cumulative, f), len(flat) - 1)]) for f in fractions}
    return sorted(v for v in levels if v > 0)


def latent_figure(
    style: FigureStyle, intermediate: np.ndarray, labels: np.ndarray, max_points: int, stem: str, seed: int = 0,
    caption: Optional[str] = None, bins: int = 60,
) -> list[Path]:
    """The two intermediate features of the test jets: a 2-D histogram per class (light jets, tau
    jets; unit area, common logarithmic colour scale) and both classes' 68 % / 95 % containment
    contours overlaid. At most ``max_points`` jets (a random subset) enter."""
    import hist
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    labels = np.asarray(labels).astype(bool)
    z = np.asarray(intermediate, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] != 2:
        raise ValueError(f"the latent figure needs k = 2 intermediate features, got shape {z.shape}")
    if len(z) != len(labels):
        raise ValueError(f"{len(z)} latent vectors but {len(labels)} jet labels")
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.permutation(len(z))[:max_points])
    z, labels = z[pick], labels[pick]
    finite = np.isfinite(z).all(axis=1)
    z, labels = z[finite], labels[finite]
    if len(z) == 0:
        raise ValueError("the latent figure got no jet with finite intermediate features")
    # The range holds 99.8 % of the jets per axis: a few outliers must not squeeze the picture.
    lo, hi = np.quantile(z, 0.001, axis=0), np.quantile(z, 0.999, axis=0)
    hi = np.where(hi > lo, hi, lo + 1.0)
    axes_ = (hist.axis.Regular(bins, lo[0], hi[0], name="z1"), hist.axis.Regular(bins, lo[1], hi[1], name="z2"))
    classes = ((~labels, "light jets", "Blues"), (labels, r"$\tau$ jets", "Reds"))
    densities = []
    for mask, *_ in classes:
        h = hist.Hist(*axes_).fill(z1=z[mask, 0], z2=z[mask, 1])
        values = h.values()
        total = max(values.sum(), 1.0)
        area = np.outer(np.diff(axes_[0].edges), np.diff(axes_[1].edges))
        densities.append(values / total / area)
    positive = np.concatenate([d[d > 0] for d in densities]) if any((d > 0).any() for d in densities) else np.array([1.0])
    norm = LogNorm(vmin=positive.min(), vmax=positive.max())
    fig, axes = style.figure(1, 3, figsize=(22, 7.5))
    xe, ye = axes_[0].edges, axes_[1].edges
    mesh = None
    legend_handles: list[Any] = []
    legend_of_panel: list[tuple[Any, Any]] = []
    for ax, density, (mask, name, cmap) in zip(axes[:2], densities, classes):
        mesh = ax.pcolormesh(xe, ye, np.where(density > 0, density, np.nan).T, cmap=cmap, norm=norm, rasterized=True)
        legend_of_panel.append((ax, Patch(color=colormaps[cmap](0.7), label=f"{name} ({int(mask.sum())})")))
    fig.colorbar(mesh, ax=list(axes[:2]), label="jets per unit area (normalised)", pad=0.01)
    # Contours from a coarser binning: containment lines of a sparse class must not fray.
    coarse = (hist.axis.Regular(max(bins // 3, 8), lo[0], hi[0], name="z1"),
              hist.axis.Regular(max(bins // 3, 8), lo[1], hi[1], name="z2"))
    for mask, name, cmap in classes:
        colour = colormaps[cmap](0.8)
        density = hist.Hist(*coarse).fill(z1=z[mask, 0], z2=z[mask, 1]).values()
        levels = _containment_levels(density, (0.68, 0.95))
        if levels:
            axes[2].contour(coarse[0].centers, coarse[1].centers, density.T, levels=levels, colors=[colour],
                            linewidths=(1.2, 2.6)[: len(levels)])
        legend_handles.append(Line2D([], [], color=colour, lw=2, label=f"{name} ({int(mask.sum())})"))
    legend_handles.append(Line2D([], [], color="k", lw=2.6, label="thick: 68%, thin: 95% of the class"))
    for ax in axes:
        ax.set_xlim(xe[0], xe[-1])
        ax.set_ylim(ye[0], ye[-1])
        ax.set_xlabel("shared feature 1")
    axes[0].set_ylabel("shared feature 2")
    style.label(axes[0], rlabel=False)  # a narrow panel: the sample goes above the last one
    if style.rlabel:
        axes[2].set_title(style.rlabel, loc="right", fontsize="medium")
    for ax, handle in legend_of_panel:
        place_legend(ax, handles=[handle], fontsize="small")
    place_legend(axes[2], handles=legend_handles, fontsize="x-small")
    subset = f"{len(z)} test jets" + (f" (random subset of {len(intermediate)})" if len(intermediate) > max_points else "")
    text = (f"{caption}; " if caption else "") + f"{subset}; 2-D histograms normalised per class, range: 0.1-99.9% quantiles"
    return style.save(fig, stem, text)


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
    caption: Optional[str] = None,
) -> list[Path]:
    """ROC and score figures of both tasks, efficiency / rejection versus pT, the loss weights
    per epoch (from ``epochs``) and, for ``k = 2``, the latent space; ``caption`` (default
    ``label``) says which configuration and trial every figure shows."""
    paths: list[Path] = []
    p = predictions
    what = caption or label
    paths += roc_figure(style, "tau", {label: (p["jet_labels"], p["tau_logit"])}, f"{prefix}roc_tau", what)
    paths += roc_figure(style, "event", {label: (p["event_labels"], p["event_logit"])}, f"{prefix}roc_event", what)
    paths += score_figure(style, "tau", p["jet_labels"], p["tau_logit"], f"{prefix}scores_tau", what)
    paths += score_figure(style, "event", p["event_labels"], p["event_logit"], f"{prefix}scores_event", what)
    if "jet_pt" in p:
        paths += pt_figures(style, p["jet_pt"], p["jet_labels"], p["tau_logit"], evaluate["pt_bins"],
                            evaluate["tau_efficiency"], prefix, what)
    if epochs and weight_tasks:
        paths += weights_figure(style, [epochs], weight_tasks, label, f"{prefix}loss_weights", caption=what)
    if p["intermediate"].ndim == 2 and p["intermediate"].shape[1] == 2:
        paths += latent_figure(style, p["intermediate"], p["jet_labels"], max_latent_points, f"{prefix}latent_space",
                               caption=what)
    return paths
