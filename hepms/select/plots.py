"""Figures of the selection study (matplotlib with the Agg backend, mplhep style).

* :func:`plot_alpha_history`: DARTS architecture weights per epoch, one panel per task
  (paper Fig. 4); :func:`plot_alpha_runs`: the same for several seeds, one line per seed;
* :func:`plot_selected_pairs`: how often each pair is selected versus ``v1``, one panel per
  method (paper Fig. 5);
* :func:`plot_metric_vs_v1`: a metric (AUC, MSE, validity) versus ``v1``, mean and standard
  deviation over seeds, one line per method (paper Figs. 3, 6);
* :func:`plot_scaling`: wall time versus candidates per task, log-log, with the fitted power
  laws (paper Fig. 7).

Every figure says what it shows (method, seeds, what a point and an error bar are) in a caption
under the axes and in the PNG metadata (``Description``); legends are placed where they cover no
data (:func:`hepms.study.plots.place_legend`).
"""
from __future__ import annotations

import contextlib
import logging
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence, Union

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["plot_alpha_history", "plot_alpha_runs", "plot_selected_pairs", "plot_metric_vs_v1", "plot_scaling",
           "plot_scaling_auc", "figure", "save_figure"]

PathLike = Union[str, Path]


@contextlib.contextmanager
def figure(ncols: int = 1, width: float = 6.0, height: float = 4.5) -> Iterator:
    """``(fig, axes)`` of ``ncols`` panels side by side in the style of these figures (Agg
    backend, mplhep ROOT style with moderate font sizes); the figure is closed on exit. Also
    used by the other figure-writing modules of hepms.select (:mod:`hepms.select.reoptimisation`)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    try:
        import mplhep

        style = plt.style.context(mplhep.style.ROOT)
    except Exception:  # pragma: no cover - mplhep is optional for the plots
        style = contextlib.nullcontext()
    # The ROOT style's large labels crowd two-panel figures: moderate sizes.
    sizes = {"axes.labelsize": 14, "axes.titlesize": 13, "xtick.labelsize": 11,
             "ytick.labelsize": 11, "legend.fontsize": 9}
    with style, plt.rc_context(sizes):
        fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
        try:
            yield fig, axes[0]
        finally:
            plt.close(fig)


def _span(counts: Sequence[int]) -> str:
    """``3`` or ``2-3``: how many entries per point, when they differ."""
    c = sorted(set(counts)) or [0]
    return str(c[0]) if len(c) == 1 else f"{c[0]}-{c[-1]}"


def _seeds(rows: Sequence[Mapping]) -> str:
    seeds = sorted({int(r["seed"]) for r in rows if r.get("seed") is not None})
    if not seeds:
        return "seeds unknown"
    return f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({', '.join(map(str, seeds))})"


def save_figure(fig, path: PathLike, layout: bool = True, caption: Optional[str] = None) -> Path:
    """Save ``fig`` to ``path`` (folders made) with ``caption`` under the axes and in the file's
    metadata; ``layout``: apply ``tight_layout`` first. Returns ``path``."""
    from hepms.study.plots import add_caption, figure_metadata

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if layout:
        fig.tight_layout()
    add_caption(fig, caption, fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight",
                metadata=figure_metadata(path.suffix.lstrip(".") or "png", path.stem, caption))
    log.info("wrote %s", path)
    return path


def plot_alpha_history(
    alpha_history: Sequence[Mapping], path: PathLike, title: str = "", caption: Optional[str] = None
) -> Path:
    """Softmax architecture weights per epoch (``SelectionResult.alpha_history``) of one DARTS
    selection; ``caption`` says which (method, ``v1``, seed)."""
    if not alpha_history:
        raise ValueError("alpha_history is empty (not a DARTS result?)")
    return plot_alpha_runs({"": alpha_history}, path, title, caption=caption or f"DARTS softmax(alpha) per epoch "
                           f"{title}; dotted: uniform weight 1/N".strip())


def plot_alpha_runs(
    histories: Mapping[object, Sequence[Mapping]], path: PathLike, title: str = "", caption: Optional[str] = None
) -> Path:
    """DARTS softmax weights per epoch of several selections (e.g. one per seed): one colour per
    candidate, one line per selection (``histories``: label -> ``alpha_history``)."""
    from hepms.study.plots import place_legend

    if not histories or not all(histories.values()):
        raise ValueError("no (or an empty) alpha_history to plot")
    import matplotlib.pyplot as plt

    first = next(iter(histories.values()))
    single = len(histories) == 1
    with figure(2) as (fig, axes):
        for ax, step, label in zip(axes, ("upstream", "downstream"), ("Task 1", "Task 2")):
            names = list(first[0][step])
            colours = dict(zip(names, plt.get_cmap("tab10")(np.arange(len(names)) % 10)))
            for k, history in enumerate(histories.values()):
                epochs = [row["epoch"] for row in history]
                for name in names:
                    ax.plot(epochs, [row[step].get(name, np.nan) for row in history], color=colours[name],
                            marker="." if single else None, lw=1.5 if single else 1.0, alpha=1.0 if single else 0.7,
                            label=name if k == 0 else None)
            ax.axhline(1.0 / len(names), color="grey", lw=0.8, ls=":")
            ax.set_xlabel("epoch")
            ax.set_ylabel(r"softmax($\alpha$)")
            ax.set_title(f"{label} {title}".strip(), fontsize=12)
        fig.tight_layout()
        for ax in axes:
            place_legend(ax, fontsize=9)
        return save_figure(fig, path, layout=False, caption=caption or f"DARTS softmax(alpha) per epoch {title}, "
                     f"{len(histories)} selections; dotted: uniform weight 1/N")


def plot_selected_pairs(rows: Sequence[Mapping], path: PathLike, context: str = "") -> Path:
    """Stacked counts of the selected pairs per ``v1``, one panel per method; ``context`` (the
    configuration) ends the caption."""
    from hepms.select.records import selected_pair

    methods = sorted({r["method"] for r in rows})
    v1s = sorted({r["v1"] for r in rows})
    pairs = sorted({selected_pair(r) for r in rows})
    import matplotlib.pyplot as plt

    colours = dict(zip(pairs, plt.get_cmap("tab20")(np.linspace(0, 1, max(len(pairs), 2)))))
    handles = {}
    with figure(len(methods), width=4.5) as (fig, axes):
        for ax, method in zip(axes, methods):
            counts = {v: Counter(selected_pair(r) for r in rows
                                 if r["method"] == method and r["v1"] == v) for v in v1s}
            x = np.arange(len(v1s))
            bottom = np.zeros(len(v1s))
            for pair in pairs:
                heights = np.array([counts[v][pair] for v in v1s], dtype=float)
                if heights.any():
                    bars = ax.bar(x, heights, bottom=bottom, color=colours[pair], width=0.7)
                    handles.setdefault(pair, bars)
                    bottom += heights
            ax.set_xticks(x, [f"{v:g}" for v in v1s])
            ax.set_xlabel(r"$v_1$")
            ax.set_ylabel("runs")
            ax.set_title(method)
        # One legend for all panels (same colour = same pair everywhere), right of the panels.
        labels = [p.replace("|", " + ") for p in handles]
        fig.legend(list(handles.values()), labels, loc="center right", fontsize=9, frameon=False)
        fig.tight_layout(rect=(0, 0, 0.78, 1))
        counts = [sum(1 for r in rows if r["method"] == m and r["v1"] == v) for m in methods for v in v1s]
        caption = (f"selected (Task 1 + Task 2) pair per v1 and method, {_span([c for c in counts if c])} runs per bar, "
                   f"{_seeds(rows)}; same colour = same pair in every panel"
                   + ("; n/a: Task 2 not selected (no Task-2 loss at v1 = 1)"
                      if any(not r.get("downstream_selected", True) for r in rows) else "")
                   + (f"; {context}" if context else ""))
        return save_figure(fig, path, layout=False, caption=caption)


def plot_metric_vs_v1(
    rows: Sequence[Mapping], metric: str, path: PathLike, ylabel: Optional[str] = None, context: str = ""
) -> Path:
    """Mean +- sample standard deviation over seeds of ``row[metric]`` versus ``v1``, per method;
    ``context`` (the configuration) ends the caption."""
    from hepms.study.plots import place_legend

    grouped: dict[str, dict[float, list]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        value = r.get(metric)
        if value is not None and np.isfinite(value):
            grouped[r["method"]][r["v1"]].append(value)
    with figure() as (fig, axes):
        ax = axes[0]
        # Methods side by side at each v1 (a small x offset), so that their error bars do not hide
        # one another; the offset is a fraction of the smallest v1 spacing.
        values = sorted({v for by_v1 in grouped.values() for v in by_v1})
        spacing = min(np.diff(values)) if len(values) > 1 else 0.1
        for k, (method, by_v1) in enumerate(sorted(grouped.items())):
            v1s = sorted(by_v1)
            mean = [np.mean(by_v1[v]) for v in v1s]
            std = [np.std(by_v1[v], ddof=1) if len(by_v1[v]) > 1 else 0.0 for v in v1s]
            shift = 0.04 * spacing * (k - (len(grouped) - 1) / 2)
            ax.errorbar(np.asarray(v1s) + shift, mean, yerr=std, marker="o", capsize=3, label=method)
        ax.set_xlabel(r"$v_1$ (Task-1 weight)")
        ax.set_ylabel(ylabel or metric)
        # A positive metric spanning more than two decades (the Task-1 MSE at v1 = 0, where Task 1
        # has no loss of its own) would flatten every other point on a linear axis.
        means = [np.mean(vals) for by_v1 in grouped.values() for vals in by_v1.values()]
        log_scale = bool(means) and min(means) > 0 and max(means) / min(means) > 100
        if log_scale:
            ax.set_yscale("log")
        fig.tight_layout()
        if grouped:
            place_legend(ax)
        used = [r for r in rows if r.get(metric) is not None and np.isfinite(r.get(metric))]
        # Selections where the metric does not apply (None: study.mark_not_applicable) are named.
        left_out = [r for r in rows if metric in r and r[metric] is None]
        caption = (f"{ylabel or metric}: points: mean over seeds (methods offset slightly in v1), error bars: "
                   "sample s.d. over seeds" + (" (log scale: the means span more than two decades)" if log_scale else "")
                   + "; "
                   f"{_seeds(used)}"
                   + (f"; not applicable, left out: {len(left_out)} selection(s) "
                      f"({', '.join(sorted({r['method'] + ' v1 ' + format(r['v1'], 'g') for r in left_out}))})"
                      if left_out else "")
                   + (f"; {context}" if context else ""))
        return save_figure(fig, path, layout=False, caption=caption)


def _by_method_and_n(rows: Sequence[Mapping], key: str) -> dict[str, dict[int, list]]:
    """``method -> N -> [row[key], ...]`` over the rows with a finite ``key``."""
    grouped: dict[str, dict[int, list]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        value = r.get(key)
        if value is not None and np.isfinite(value):
            grouped[r["method"]][int(r["n_models"])].append(float(value))
    return grouped


def _mean_std(values_by_n: Mapping[int, list]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = np.array(sorted(values_by_n), dtype=float)
    mean = np.array([np.mean(values_by_n[int(k)]) for k in n])
    std = np.array([np.std(values_by_n[int(k)], ddof=1) if len(values_by_n[int(k)]) > 1 else 0.0 for k in n])
    return n, mean, std


def _n_axis(ax, rows: Sequence[Mapping], ylabel: str, title: str) -> None:
    """Log x axis with plain integers at the measured N (instead of "3 x 10^0" labels)."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.set_xscale("log")
    ax.set_xticks(sorted({int(r["n_models"]) for r in rows}))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("candidate models per task $N$")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)


def plot_scaling(
    rows: Sequence[Mapping], fits: Mapping[str, Mapping], path: PathLike, title: str = "", key: str = "seconds"
) -> Path:
    """Wall time (or ``key``, e.g. ``"cpu_seconds"``) versus candidates per task (log-log) with
    ``C * N^a`` fits per method.

    Args:
        rows: ``{"method", "n_models", key}`` per run.
        fits: per method ``{"C", "a", "a_err"}`` (:func:`hepms.select.scaling.fit_power_law`).
    """
    from hepms.study.plots import place_legend

    what = "CPU time" if key == "cpu_seconds" else "wall time"
    grouped = _by_method_and_n(rows, key)
    with figure() as (fig, axes):
        ax = axes[0]
        for method, by_n in sorted(grouped.items()):
            n, mean, std = _mean_std(by_n)
            line = ax.errorbar(n, mean, yerr=std, marker="o", ls="none", capsize=3, label=method)
            fit = fits.get(method)
            if fit:
                grid = np.geomspace(n.min(), n.max(), 50)
                ax.plot(grid, fit["C"] * grid ** fit["a"], ls="--", color=line[0].get_color(),
                        label=rf"{method} fit: $N^{{{fit['a']:.2f} \pm {fit['a_err']:.2f}}}$")
        ax.set_yscale("log")
        _n_axis(ax, rows, f"{what} [s]", title)
        fig.tight_layout()
        place_legend(ax, fontsize=9)
        repeats = [len(v) for by_n in grouped.values() for v in by_n.values()]
        caption = (f"points: mean {what} over {_span(repeats)} repeat(s), error bars: sample s.d.; "
                   "dashed: fitted C N^a")
        return save_figure(fig, path, layout=False, caption=caption)


def plot_scaling_auc(
    rows: Sequence[Mapping], path: PathLike, key: str = "test_auc_event", ylabel: str = "Task-2 AUC (test)",
    title: str = "", context: str = ""
) -> Path:
    """Task-2 AUC of the selected chain versus candidates per task (paper Fig. 7b): mean and
    sample s.d. over the repeats, one series per method (methods offset slightly in x)."""
    from hepms.study.plots import place_legend

    grouped = _by_method_and_n(rows, key)
    if not grouped:
        raise ValueError(f"no run has {key!r}")
    with figure() as (fig, axes):
        ax = axes[0]
        methods = sorted(grouped)
        for k, method in enumerate(methods):
            n, mean, std = _mean_std(grouped[method])
            shift = 1.0 + 0.03 * (k - (len(methods) - 1) / 2)  # log axis: a multiplicative offset
            ax.errorbar(n * shift, mean, yerr=std, marker="o", capsize=3, label=method)
        _n_axis(ax, rows, ylabel, title)
        fig.tight_layout()
        place_legend(ax, fontsize=9)
        repeats = [len(v) for by_n in grouped.values() for v in by_n.values()]
        caption = (f"{ylabel} of the selected chain: points: mean over {_span(repeats)} repeat(s), error bars: "
                   "sample s.d." + (f"; {context}" if context else ""))
        return save_figure(fig, path, layout=False, caption=caption)
