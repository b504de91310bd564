"""Figures: the counting statistics behind their error bars (Clopper-Pearson efficiencies,
rejections with lower limits), ROC curves on a grid, legends that cover no data, every figure
function writing its files with a caption in the metadata, and the scan's figures from partial
results (ROC bands over the trials that have curves, no upstream AUC where w1 = 0)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hepms import metrics

ONE_SIGMA_TAIL = (1 - metrics.ONE_SIGMA) / 2  # 0.1587: each tail of the central 68.3 % interval


# ----------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------
def test_clopper_pearson_known_values() -> None:
    eff, lo, hi = metrics.clopper_pearson([0, 10, 5, 0], [10, 10, 10, 0])
    # k = 0: [0, 1 - tail^(1/n)]; k = n: [tail^(1/n), 1] (closed forms of the beta quantiles).
    assert (eff[0], lo[0]) == (0.0, 0.0) and hi[0] == pytest.approx(1 - ONE_SIGMA_TAIL ** 0.1)
    assert (eff[1], hi[1]) == (1.0, 1.0) and lo[1] == pytest.approx(ONE_SIGMA_TAIL ** 0.1)
    # k = n / 2 is symmetric about 1/2, wider than the normal approximation sqrt(p q / n) = 0.158.
    assert eff[2] == 0.5 and lo[2] + hi[2] == pytest.approx(1.0) and hi[2] - 0.5 > 0.158
    assert np.isnan([eff[3], lo[3], hi[3]]).all()  # nothing counted: no efficiency
    with pytest.raises(ValueError, match="passed <= total"):
        metrics.clopper_pearson([3], [2])
    with pytest.raises(ValueError, match="same shape"):
        metrics.clopper_pearson([1, 2], [3])


def test_rejection_interval_and_lower_limits() -> None:
    r = metrics.rejection_interval([0, 4, 20, 0], [20, 20, 20, 0])
    # No light jet passes in 20: at 95 % CL the efficiency is below 1 - 0.05^(1/20) = 0.139,
    # so the rejection is above 7.19; no value, no two-sided interval.
    assert r["is_limit"].tolist() == [True, False, False, False]
    assert r["lower_limit"][0] == pytest.approx(1 / (1 - 0.05 ** (1 / 20)))
    assert np.isnan([r["rejection"][0], r["lower"][0], r["upper"][0]]).all()
    # 4 of 20 pass: rejection 5, the inverted Clopper-Pearson interval, asymmetric.
    _, lo, hi = metrics.clopper_pearson([4], [20])
    assert r["rejection"][1] == pytest.approx(5.0)
    assert (r["lower"][1], r["upper"][1]) == pytest.approx((1 / hi[0], 1 / lo[0]))
    assert r["upper"][1] - 5.0 > 5.0 - r["lower"][1] > 0
    assert r["rejection"][2] == 1.0 and r["lower"][2] == 1.0 and np.isnan(r["lower_limit"][1:]).all()
    assert not r["is_limit"][3] and np.isnan(r["rejection"][3])  # an empty bin is no limit


def test_background_efficiencies_on_a_grid() -> None:
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    scores = [0.1, 0.2, 0.6, 0.7, 0.3, 0.8, 0.9, 0.95]
    grid = [0.25, 0.5, 0.75, 1.0]
    # Signal efficiency 3/4 is reached at threshold 0.8: no background above; 4/4 at 0.3: 2 of 4.
    assert metrics.background_efficiencies(labels, scores, grid).tolist() == [0.0, 0.0, 0.0, 0.5]
    for point in grid:
        assert metrics.background_efficiency(labels, scores, point) == \
            metrics.background_efficiencies(labels, scores, [point])[0]
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        metrics.background_efficiencies(labels, scores, [0.0, 0.5])


def test_roc_on_grid_is_the_metric_at_each_point() -> None:
    from hepms.study.runner import roc_on_grid

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    pred = {"jet_labels": y, "tau_logit": rng.normal(2.0 * y, 1.0),
            "event_labels": y[:200], "event_logit": rng.normal(0.5 * y[:200], 1.0)}
    roc = roc_on_grid(pred, points=20)
    assert roc["signal_efficiency"][0] == 0.05 and roc["signal_efficiency"][-1] == 1.0
    assert roc["tau"]["signal"] == int(y.sum()) and roc["tau"]["background"] == int((y == 0).sum())
    eff = roc["event"]["background_efficiency"]
    assert len(eff) == 20 and eff == sorted(eff)
    assert eff[9] == pytest.approx(metrics.background_efficiency(y[:200], pred["event_logit"], 0.5), rel=1e-5)
    json.dumps(roc)  # goes into result.json as it is
    one_class = dict(pred, event_labels=np.ones(200, dtype=int))
    assert "event" not in roc_on_grid(one_class, points=20) and "tau" in roc_on_grid(one_class, points=20)


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def style(tmp_path: Path):
    from hepms.study.plots import FigureStyle

    return FigureStyle(tmp_path / "figures", formats=("png",), rlabel="test")


def _description(path: Path) -> str:
    from PIL import Image

    with Image.open(path) as image:
        return image.info.get("Description", "")


def test_legend_goes_where_no_data_is(style) -> None:
    from hepms.study.plots import legend_collisions, place_legend

    fig, ax = style.figure(figsize=(6, 5))
    x = np.linspace(0, 1, 50)
    ax.plot(x, 0.5 + 0.5 * x, label="rising into the upper right")
    ax.plot(x, np.full_like(x, 0.9), label="along the top")
    ax.set_ylim(0, 1)
    legend = place_legend(ax, fontsize="small")
    assert legend_collisions(legend) == 0
    assert ax.get_ylim()[1] > 1.0 or legend.get_bbox_to_anchor() is not None  # room made above the data
    fig2, ax2 = style.figure(figsize=(6, 5))
    ax2.plot(x, x, label="diagonal")
    free = place_legend(ax2)
    assert legend_collisions(free) == 0 and ax2.get_ylim() == pytest.approx((-0.05, 1.05))  # no room needed
    # A legend drawn over the data is detected.
    assert legend_collisions(ax.legend(loc="center", fontsize="small")) > 0


def test_every_single_run_figure_is_written_with_its_caption(style) -> None:
    from hepms.study import plots

    rng = np.random.default_rng(2)
    n = 600
    y = rng.integers(0, 2, n)
    pred = {"jet_labels": y, "tau_logit": rng.normal(2.5 * y, 1.0), "event_labels": y[:300],
            "event_logit": rng.normal(0.8 * y[:300], 1.0), "intermediate": rng.normal(y[:, None], 1.0, (n, 2)),
            "jet_pt": 20 + rng.exponential(30, n)}
    epochs = [{"phase": "joint", "weight_tau": 0.5 + 0.1 * i, "weight_event": 0.5, "train_tau": 0.5 - 0.05 * i,
               "train_event": 0.69} for i in range(4)]
    caption = "uncertainty weighting [bce], trial 0 (seed 1000)"
    paths = plots.run_figures(style, pred, {"pt_bins": [20, 40, 70, 150, 300], "tau_efficiency": 0.6},
                              "uncertainty weighting", epochs, ["tau", "event"], max_latent_points=400, caption=caption)
    stems = {p.stem for p in paths}
    assert stems == {"roc_tau", "roc_event", "scores_tau", "scores_event", "tau_efficiency_vs_pt",
                     "light_rejection_vs_pt", "loss_weights", "latent_space"}
    for path in paths:
        assert path.stat().st_size > 1000
        assert _description(path).startswith(caption), path.name
        assert style.captions[path.name].startswith(caption)
    assert "Clopper-Pearson" in style.captions["tau_efficiency_vs_pt.png"]
    assert "400 test jets (random subset of 600)" in style.captions["latent_space.png"]
    with pytest.raises(ValueError, match="k = 2"):
        plots.latent_figure(style, np.zeros((5, 3)), np.zeros(5), 10, "latent")


def test_rejection_figure_marks_lower_limits(style) -> None:
    from hepms.study import plots

    rng = np.random.default_rng(3)
    y = np.repeat([1, 0], 300)
    pt = np.concatenate([rng.uniform(20, 100, 300), rng.uniform(20, 100, 300)])
    logit = np.where(y == 1, rng.normal(2, 1, 600), rng.normal(0, 1, 600))
    logit[(y == 0) & (pt > 50)] = -10.0  # no light jet above 50 GeV passes any threshold
    res = plots.efficiency_vs_pt(pt, y, logit, [20, 50, 100], 0.6)
    assert res["tau_passed"].sum() == pytest.approx(0.6 * 300, abs=1)
    assert np.isfinite(res["light_rej"][0]) and np.isnan(res["light_rej"][1])
    n_high = res["light_total"][1]
    assert res["light_rej_limit"][1] == pytest.approx(1 / (1 - 0.05 ** (1 / n_high)))
    paths = plots.pt_figures(style, pt, y, logit, [20, 50, 100], 0.6, caption="synthetic")
    rejection = next(p for p in paths if p.stem == "light_rejection_vs_pt")
    assert "95% CL lower limits where no light jet passes" in _description(rejection)


def test_roc_band_weights_and_box_figures(style) -> None:
    from hepms.study import plots

    grid = np.arange(1, 21) / 20
    rng = np.random.default_rng(4)

    def curves(power: float, trials: int) -> np.ndarray:
        return np.clip(grid[None, :] ** power * (1 + 0.02 * rng.normal(size=(trials, 20))), 0, 1)

    bands = [plots.RocBand("step-by-step", grid, curves(2.0, 3), [0.80, 0.81, 0.80], 3),
             plots.RocBand("uncertainty weighting", grid, curves(2.5, 2), [0.82, 0.83, 0.82], 3)]
    paths = plots.roc_band_figure(style, "event", bands, "roc_event_compare")
    assert "over the mean rejection of step-by-step" in _description(paths[0])
    with pytest.raises(ValueError, match="grid"):
        plots.roc_band_figure(style, "event", [bands[0], plots.RocBand("x", grid[:10], curves(2, 1)[:, :10])], "bad")
    histories = [[{"phase": "joint", "weight_tau": 1.0 + t, "weight_event": 1.0, "train_tau": 0.3,
                   "train_event": 0.6}] * (3 + t) for t in range(3)]
    paths = plots.weights_figure(style, histories, ["tau", "event"], "GradNorm [bce]", "weights", phase="joint")
    assert "bands: min to max over trials" in _description(paths[0])
    down = {"direct connection": {1: [0.75, 0.76], 2: [0.75, 0.751]}, "additional NN": {1: [0.77, 0.771], 2: [0.772]}}
    up = {"direct connection": {1: [0.94, 0.941]}, "additional NN": {1: [0.95, 0.951], 2: [0.952]}}
    paths = plots.boxplot_figure(style, down, "intermediate size k", "downstream AUC", "k_scan_boxplot", upstream=up,
                                 not_applicable=["direct k=2"], caption="k scan, 2 trials")
    assert "leaves out direct k=2" in _description(paths[0])


def test_scan_figures_from_partial_results(tmp_path: Path) -> None:
    """Figures of a scan where one trial lost its ROC and the w1 = 0 run has no tau-ID AUC."""
    from hepms.config import validate
    from hepms.study.plan import expand_studies, unique_runs
    from hepms.study.scan import scan_figures

    fixed = {"trainer.balancer_options": {"weights": {"tau": 1.0, "event": 1.0}}}
    cfg = validate({
        "run_dir": str(tmp_path / "scan"), "plot": {"formats": ["png"]},
        "scan": {"trials": 2, "studies": {
            "ks": {"kind": "boxplot", "x": "model.k", "runs": [
                {"label": "direct k=1", "group": "direct", "set": {"model.connection": "direct", "model.k": 1, **fixed}},
                {"label": "direct k=2", "group": "direct", "set": {"model.k": 2, "trainer.strategy": "w1_zero"}},
                {"label": "additional k=2", "group": "additional NN", "set": {"model.k": 2, **fixed}}]}},
            "figures": {"roc": ["ks/direct k=1", "ks/direct k=2", "ks/additional k=2"],
                        "weights": ["ks/additional k=2"]}},
    })
    planned = expand_studies(cfg)
    from hepms.study.runner import roc_on_grid

    rng = np.random.default_rng(5)
    results = {}
    for i, run in enumerate(unique_runs(planned)):
        found = []
        for t in range(2):
            folder = tmp_path / "scan" / "trials" / run.folder / f"trial_{t:03d}"
            folder.mkdir(parents=True)
            y = rng.integers(0, 2, 300)
            pred = {"jet_labels": y, "tau_logit": rng.normal(y, 1), "event_labels": y,
                    "event_logit": rng.normal((0.5 + 0.1 * i) * y, 1)}
            res = {"seed": 1000 + t, "_folder": str(folder), "metrics": {"auc_tau": 0.9 + 0.01 * t, "auc_event": 0.7},
                   "roc": roc_on_grid(pred, points=20)}
            if i == 0 and t == 1:
                del res["roc"]  # an older result without curves and without predictions.npz
            if run.label == "additional k=2":
                if t == 0:
                    res["epochs"] = [{"phase": "joint", "weight_tau": 1.0, "weight_event": 1.0, "train_tau": 0.4,
                                      "train_event": 0.6}]
                else:
                    del res["_folder"]  # a trial record made on another machine: curves, no history
            found.append(res)
        results[run.key] = found
    paths = scan_figures(cfg, tmp_path / "scan", planned, results, {}, {})
    assert {p.name for p in paths} == {"roc_tau_compare.png", "roc_event_compare.png", "ks_boxplot.png",
                                       "weights_additionalk=2.png"}
    captions = json.loads((tmp_path / "scan" / "figures" / "captions.json").read_text())["captions"]
    assert "direct k=1 (1 of 2 trials)" in captions["roc_event_compare.png"]
    assert "additional k=2 (2 of 2 trials)" in captions["roc_event_compare.png"]
    # The w1 = 0 run's tau head never gets a gradient: no tau ROC and no upstream AUC for it.
    assert "direct k=2 (" not in captions["roc_tau_compare.png"]
    assert "not shown (tau head gets no gradient at w1 = 0): direct k=2" in captions["roc_tau_compare.png"]
    assert "leaves out direct k=2" in captions["ks_boxplot.png"]
    assert "2 trials per configuration (seeds 1000-1001)" in captions["ks_boxplot.png"]
    assert captions["weights_additionalk=2.png"].startswith("additional k=2, 1 trial (seed 1000)")


def test_selection_figures_state_seeds_and_error_bars(tmp_path: Path) -> None:
    from hepms.select import plots as select_plots

    rows = [{"method": m, "v1": v1, "seed": seed, "upstream": "u1", "downstream": "d1" if seed % 2 else "d2",
             "test_auc_event": 0.8 + 0.01 * v1 + 0.001 * seed, "seconds": 10.0 + seed}
            for m in ("grid", "spos") for v1 in (0.1, 1.0) for seed in (1, 2, 3)]
    path = select_plots.plot_metric_vs_v1(rows, "test_auc_event", tmp_path / "auc.png", "Task 2 AUC")
    assert "error bars: sample s.d. over seeds; 3 seeds (1, 2, 3)" in _description(path)
    path = select_plots.plot_selected_pairs(rows, tmp_path / "pairs.png")
    assert "3 runs per bar" in _description(path)
    history = [{"epoch": e, "upstream": {"a": 0.5 + 0.1 * e, "b": 0.5 - 0.1 * e},
                "downstream": {"c": 0.5, "d": 0.5}} for e in range(4)]
    path = select_plots.plot_alpha_history(history, tmp_path / "alpha.png", caption="DARTS, v1 = 1, seed 1")
    assert _description(path) == "DARTS, v1 = 1, seed 1"
    scaling = [{"method": "grid", "n_models": n, "seconds": n * (1 + 0.1 * r)} for n in (2, 3, 4) for r in range(2)]
    path = select_plots.plot_scaling(scaling, {"grid": {"C": 1.0, "a": 1.0, "a_err": 0.1}}, tmp_path / "scaling.png")
    assert "over 2 repeat(s)" in _description(path)
