"""Re-optimisation on / off (MSNAS paper, section 4.4.1, Figs. 2 and 3) on our data.

Two ways to build the chain of one Task-1 and one Task-2 model:

* **with re-optimisation**: both models pre-trained on truth separately (:func:`pretrain`), then
  the connected chain trained on ``v1 L1 + v2 L2`` (:func:`reoptimise`, early stopping on the same
  quantity on validation);
* **without re-optimisation**: the Task-1 model pre-trained on truth, frozen, and a Task-2 model
  trained on its outputs (not on truth) from the same seeded initialisation its pre-training on
  truth starts from (:func:`train_on_upstream_outputs`). It does not depend on ``v1``.

For every seed the candidates are pre-trained once (shared by both ways: exact, and most of the
time). Then, for every (Task-1, Task-2) pair of non-dummy candidates, both chains at ``v1 = 0``
(paper Fig. 2). For the seed's best pair -- by the validation criterion of the settings
(``criterion``: ``loss`` = validation ``L2`` at ``v1 = 0``, or ``auc``) of the chain with
re-optimisation, never by test -- the chain with re-optimisation again at every other ``v1`` of
``study.v1`` (paper Fig. 3: Task-1 MSE, Task-2 AUC, GP validity versus ``v1``; "without" is the
same chain at every ``v1``). Every chain is evaluated once on the test split after it is trained.

Per pair, the paired difference (with - without) of the test Task-2 AUC over seeds
(:func:`hepms.study.compare.paired_difference`) decides the paper's claim "re-optimisation
improves the Task-2 AUC for any model pair" with the rule of :mod:`hepms.study.compare`
(``better``: difference > 0 at >= 2 sigma); the claim as a whole is reproduced when it is for
every pair.

A study grows seed by seed: seeds whose rows are in ``out_dir/results.json`` already, made with
the same settings hash (the configuration without its seed list), the same data (a digest of
the three splits' contents) and hepms version, are taken from there instead of being run again (``reused_seeds``).

Outputs in ``out_dir`` (:func:`run_reoptimisation_study`): ``results.json`` (config, settings
hash, data fingerprint, machine, hepms version, CPU and wall seconds, rows, summary),
``results.csv`` (rows), ``summary.md`` (tables) and the figures ``auc_pairs.png`` (Fig. 2) and
``v1_scan.png`` (Fig. 3).
"""
from __future__ import annotations

import json
import logging
import math
import statistics
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from hepms.atomic import write_text_atomic
from hepms.config_engine import settings_hash
from hepms.select.config import SelectionConfig
from hepms.select.data import SelectionData
from hepms.select.space import Chain, SearchSpace
from hepms.select.study import load_events, prepare_study_data, rows_csv, study_fingerprint
from hepms.select.training import (
    SearchSettings,
    evaluate_chain,
    json_ready,
    pretrain,
    reoptimise,
    score,
    train_on_upstream_outputs,
)
from hepms.select.validity import chain_upstream_outputs, fit_reference, validity_fraction

log = logging.getLogger(__name__)

__all__ = ["run_reoptimisation_study", "summarise", "summary_markdown", "CLAIM", "MODES"]

PathLike = Union[str, Path]

#: The claim of the paper that the study tests (section 4.4.1, Fig. 2).
CLAIM = "re-optimisation after pre-training improves the Task-2 AUC for any model pair (paper section 4.4.1, Fig. 2)"
#: The two ways to build a chain.
MODES = ("with", "without")


def _pair(up: str, down: str) -> str:
    return f"{up}+{down}"


def _evaluate(chain: Chain, prepared_splits: dict, kinematics, v1: float, settings: SearchSettings,
              reference: Optional[tuple], nsigma: float) -> dict[str, float]:
    """Validation and test metrics of a trained chain (``val_*``, ``test_*``, test validity)."""
    out = {f"val_{k}": v for k, v in evaluate_chain(chain, prepared_splits["val"], kinematics, v1,
                                                    settings.eval_batch_size).items()}
    out.update({f"test_{k}": v for k, v in evaluate_chain(chain, prepared_splits["test"], kinematics, v1,
                                                          settings.eval_batch_size).items()})
    if reference is not None:
        gp_mean, gp_sigma, tau_mask = reference
        u = chain_upstream_outputs(chain, prepared_splits["test"], kinematics, settings.eval_batch_size)
        out.update({f"test_{k}": v for k, v in validity_fraction(u, gp_mean, gp_sigma, tau_mask, nsigma).items()})
    return out


def run_reoptimisation_study(
    config: SelectionConfig,
    out_dir: PathLike,
    *,
    prepared: Optional[SelectionData] = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Chains with and without re-optimisation for every seed and non-dummy pair of ``config``,
    and the ``v1`` scan (``study.v1``; ``v1 = 0`` always) of each seed's best pair.

    Args:
        config: the selection configuration (``study.methods`` is not used; ``study.v1`` are the
            scan's task weights, ``study.seeds`` the repetitions).
        out_dir: output folder (created).
        prepared: already prepared data (None: load or generate the events as configured).
        progress: progress bars.

    Returns:
        ``{"config", "settings_hash", "data_fingerprint", "splits_digest", "reused_seeds", "machine",
        "hepms_version", "seconds", "cpu_seconds", "rows", "summary", "files"}`` as written to
        ``results.json`` (``seconds`` and ``cpu_seconds``: this call's, reused seeds not counted).

    Raises:
        ValueError: fewer than one non-dummy candidate per task.
    """
    import hepms
    from hepms._machine import describe

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(int(config.threads))
    started, cpu_started = time.perf_counter(), time.process_time()
    if prepared is None:
        prepared = prepare_study_data(config, load_events(config, out, progress))
    full_space = SearchSpace.create(prepared, config.task, **config.candidates)
    space = full_space.without_dummies()
    skipped = sorted(set(full_space.upstream_names + full_space.downstream_names)
                     - set(space.upstream_names + space.downstream_names))
    if skipped:
        log.info("dummy candidates left out of the re-optimisation study: %s", skipped)
    device = torch.device(config.settings.device)
    kinematics = space.kinematics(device)
    # Training sees train + val; the test split is read by _evaluate after a chain is trained.
    splits = {"train": prepared.train.to(device), "val": prepared.val.to(device), "test": prepared.test.to(device)}

    gp = fit_reference(space.task, prepared.kinematics(), prepared.train, config.validity)
    reference = gp.predict(prepared.test) if gp is not None else None
    nsigma = float(config.validity["nsigma"])
    v1_values = sorted({0.0, *map(float, config.v1)})

    fingerprint = study_fingerprint(config, out)
    digest = _splits_digest(prepared)
    study_hash = _study_hash(config)
    previous = _previous_rows(out / "results.json", study_hash, digest, hepms.__version__)
    reused = sorted({int(s) for s in config.seeds} & set(previous))
    if reused:
        log.info("reusing seeds %s of %s (same settings hash, data and hepms version)", reused, out / "results.json")

    def write(complete: bool) -> dict[str, Any]:
        seeds_done = sorted({int(r["seed"]) for r in rows})
        result = {
            "study": "reoptimisation",
            "claim": CLAIM,
            "complete": complete,
            "seeds_done": seeds_done,
            "config": config.to_dict(),
            "settings_hash": study_hash,
            "data_fingerprint": fingerprint,
            "splits_digest": digest,
            "reused_seeds": reused,
            "events": {"train": len(prepared.train), "val": len(prepared.val), "test": len(prepared.test)},
            "candidates": {"upstream": space.upstream_names, "downstream": space.downstream_names,
                           "dummies_left_out": skipped},
            "machine": describe(config.settings.device),
            "hepms_version": hepms.__version__,
            "seconds": time.perf_counter() - started,
            "cpu_seconds": time.process_time() - cpu_started,
            "rows": rows,
            "summary": summarise(rows, v1_values),
            "files": [],
        }
        caption_config = f"{config.source or 'configuration in results.json'}, task {space.task.name}"
        if complete and config.plots and rows:
            result["files"] = [str(plot_auc_pairs(rows, out / "auc_pairs.png", caption_config)),
                               str(plot_v1_scan(rows, out / "v1_scan.png", caption_config, gp is not None))]
        write_text_atomic(out / "summary.md", summary_markdown(result))
        write_text_atomic(out / "results.csv", rows_csv(rows))
        write_text_atomic(out / "results.json", json.dumps(json_ready(result), indent=1))
        return result

    rows: list[dict] = []
    for seed in config.seeds:
        if int(seed) in previous:
            rows += previous[int(seed)]
            continue
        base = config.settings.replace(seed=int(seed), progress=progress, v1=0.0)
        shared = pretrain(space, splits["train"], splits["val"], base)
        log.info("seed %d: pre-training %.1f s", seed, shared.seconds)
        pre_up, pre_down = space.build(int(seed))
        shared.load_into(pre_up, pre_down)
        # The initialisation pre-training started from: "without" trains Task 2 from it.
        _, fresh_down = space.build(int(seed))

        def record(chain: Chain, mode: str, v1: Optional[float], history: list, seconds: float,
                   phase: str, up: str, down: str) -> dict:
            row = {"seed": int(seed), "pair": _pair(up, down), "upstream": up, "downstream": down,
                   "mode": mode, "v1": v1, "phase": phase,
                   "epochs": len(history), "seconds": seconds, "pretrain_seconds": shared.seconds}
            row.update(_evaluate(chain, splits, kinematics, 0.0 if v1 is None else v1, base, reference, nsigma))
            rows.append(row)
            log.info("seed %d %s %s v1=%s: test AUC %.4f (%d epochs, %.1f s)", seed, row["pair"], mode,
                     v1, row["test_auc_event"], len(history), seconds)
            return row

        with_rows: dict[tuple[str, str], dict] = {}
        for up in space.upstream_names:
            for down in space.downstream_names:
                t0 = time.perf_counter()
                chain = Chain.from_candidates(pre_up[up], pre_down[down], space.task).to(device)
                history = reoptimise(chain, splits["train"], splits["val"], base, kinematics,
                                     tag=f"with/{_pair(up, down)}/v1-0")
                with_rows[(up, down)] = record(chain, "with", 0.0, history, time.perf_counter() - t0,
                                               "pairs", up, down)
                t0 = time.perf_counter()
                chain = Chain.from_candidates(pre_up[up], fresh_down[down], space.task).to(device)
                history = train_on_upstream_outputs(chain, splits["train"], splits["val"], base, kinematics,
                                                    tag=f"without/{_pair(up, down)}")
                record(chain, "without", None, history, time.perf_counter() - t0, "pairs", up, down)
        # The seed's best pair, by validation only.
        best = min(with_rows, key=lambda p: score(
            {k[4:]: v for k, v in with_rows[p].items() if k.startswith("val_")}, base.criterion))
        for row in rows:
            if row["seed"] == int(seed):
                row["best"] = (row["upstream"], row["downstream"]) == best
        for v1 in v1_values:
            if v1 == 0.0:
                continue
            t0 = time.perf_counter()
            settings = base.replace(v1=v1)
            chain = Chain.from_candidates(pre_up[best[0]], pre_down[best[1]], space.task).to(device)
            history = reoptimise(chain, splits["train"], splits["val"], settings, kinematics,
                                 tag=f"with/{_pair(*best)}/v1-{v1:g}")
            record(chain, "with", v1, history, time.perf_counter() - t0, "scan", *best)["best"] = True
        # After every seed: a run stopped later keeps the finished seeds (the next run reuses them).
        write(complete=False)

    return write(complete=True)


def _splits_digest(prepared: SelectionData) -> str:
    """Digest of the three standardised splits' contents (events, features, labels, targets)."""
    from hepms.study.dataset import content_digest

    return settings_hash([content_digest(part) for part in (prepared.train, prepared.val, prepared.test)], 16)


def _study_hash(config: SelectionConfig) -> str:
    """Hash of everything that defines one seed's rows: the configuration without the seed list,
    the figures switch, the file name (a seed's rows do not depend on the other seeds) and
    ``records``, the selection study's record folder, which this study neither reads nor writes
    (leaving it out also keeps the hash of results made before that key existed)."""
    defining = {k: v for k, v in config.to_dict().items() if k not in ("seeds", "plots", "source", "records")}
    return settings_hash({"study": "reoptimisation", "config": defining})


def _previous_rows(path: Path, study_hash: str, digest: str, version: str) -> dict[int, list]:
    """Rows per seed of an earlier ``results.json`` in the same folder, when it was made with the
    same settings hash, the same split contents (:func:`_splits_digest`) and hepms version (then its seeds need not run again:
    a study grows seed by seed); otherwise nothing."""
    if not path.is_file():
        return {}
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        log.warning("ignoring unreadable %s: %s", path, error)
        return {}
    same = (earlier.get("settings_hash"), earlier.get("splits_digest"), earlier.get("hepms_version"))
    if same != (study_hash, digest, version):
        log.info("%s was made with other settings, data or hepms version: not reused", path)
        return {}
    out: dict[int, list] = {}
    for row in earlier.get("rows", []):
        # JSON has no NaN: json_ready wrote None; back to NaN for the statistics and the CSV.
        row = {k: (math.nan if v is None and k.startswith(("val_", "test_")) else v) for k, v in row.items()}
        out.setdefault(int(row["seed"]), []).append(row)
    return out


# ------------------------------------------------------------------------------------------------
# Statistics
# ------------------------------------------------------------------------------------------------
def _mean_sd(values: Sequence[float]) -> dict[str, Any]:
    values = [float(v) for v in values if v is not None and math.isfinite(v)]
    return {"n": len(values), "mean": statistics.fmean(values) if values else None,
            "sd": statistics.stdev(values) if len(values) > 1 else None}


def summarise(rows: Sequence[Mapping], v1_values: Sequence[float] = (0.0,)) -> dict[str, Any]:
    """Per pair: test AUC (and MSE, validity) with / without, mean and s.d. over seeds, the paired
    difference of the AUC (with - without) and the verdict on :data:`CLAIM`; per ``v1``: the
    seeds' best pairs with re-optimisation against the same pairs without."""
    from hepms.study.compare import RULE, paired_difference, verdict

    pairs: list[dict] = []
    names = list(dict.fromkeys(r["pair"] for r in rows if r["phase"] == "pairs"))
    for name in names:
        by_mode = {m: {r["seed"]: r for r in rows if r["phase"] == "pairs" and r["pair"] == name and r["mode"] == m}
                   for m in MODES}
        seeds = sorted(set(by_mode["with"]) & set(by_mode["without"]))
        entry: dict[str, Any] = {"pair": name, "seeds": seeds}
        for metric in ("test_auc_event", "test_mse", "test_validity", "val_auc_event"):
            for mode in MODES:
                entry[f"{mode}_{metric}"] = _mean_sd([by_mode[mode][s].get(metric) for s in seeds])
        a = [by_mode["with"][s]["test_auc_event"] for s in seeds]
        b = [by_mode["without"][s]["test_auc_event"] for s in seeds]
        stats = paired_difference(a, b)
        outcome, reason = verdict("better", stats)
        entry.update({"difference": stats, "verdict": outcome, "reason": reason,
                      "best_in_seeds": sorted(s for s in seeds if by_mode["with"][s].get("best"))})
        pairs.append(entry)
    verdicts = [p["verdict"] for p in pairs]
    overall = ("reproduced" if verdicts and all(v == "reproduced" for v in verdicts)
               else "not reproduced" if verdicts else None)

    scan: list[dict] = []
    seeds = sorted({r["seed"] for r in rows})
    best = {s: next((r["pair"] for r in rows if r["seed"] == s and r.get("best")), None) for s in seeds}
    without = {s: next((r for r in rows if r["seed"] == s and r["pair"] == best[s] and r["mode"] == "without"),
                       None) for s in seeds}
    for v1 in v1_values:
        with_rows = {r["seed"]: r for r in rows if r["mode"] == "with" and r.get("best") and r["v1"] == v1}
        common = sorted(s for s in with_rows if without.get(s) is not None)
        entry = {"v1": float(v1), "seeds": common, "pairs": {s: best[s] for s in common}}
        for metric in ("test_mse", "test_auc_event", "test_validity"):
            entry[f"with_{metric}"] = _mean_sd([with_rows[s].get(metric) for s in common])
            entry[f"without_{metric}"] = _mean_sd([without[s].get(metric) for s in common])
        entry["auc_difference"] = paired_difference([with_rows[s]["test_auc_event"] for s in common],
                                                    [without[s]["test_auc_event"] for s in common])
        scan.append(entry)
    return {"claim": CLAIM, "rule": RULE, "verdict": overall, "pairs": pairs, "scan": scan,
            "best_pair_per_seed": {str(s): best[s] for s in seeds}}


def _pm(stat: Mapping[str, Any], digits: int = 4) -> str:
    if stat["mean"] is None:
        return "—"
    return f"{stat['mean']:.{digits}f}" + ("" if stat["sd"] is None else f" ± {stat['sd']:.{digits}f}")


def _difference(d: Mapping[str, Any]) -> str:
    """``mean ± paired-t error`` of :func:`~hepms.study.compare.paired_difference`'s result."""
    if d["mean"] is None:
        return "—"
    return f"{d['mean']:+.4f}" + ("" if d["error"] is None else f" ± {d['error']:.4f}")


def _sigma(d: Mapping[str, Any]) -> str:
    if d["sigma"] is None or d["mean"] is None:
        return "—"
    return f"{math.copysign(1, d['mean']) * d['sigma']:+.1f} σ" if math.isfinite(d["sigma"]) else "every seed"


def summary_markdown(result: Mapping[str, Any]) -> str:
    """The tables of a re-optimisation study (``results.json``) as Markdown."""
    summary = result["summary"]
    lines = ["### Re-optimisation on / off: Task-2 AUC per pair (test split, v1 = 0)", "",
             f"Claim tested: {summary['claim']}.", "",
             "| pair (Task 1 + Task 2) | seeds | AUC with | AUC without | with − without (± paired-t error) "
             "| significance | MSE with | MSE without | validity with | validity without | best pair in seeds "
             "| reproduced? |",
             "|" + "|".join(" --- " for _ in range(12)) + "|"]
    for p in summary["pairs"]:
        d = p["difference"]
        outcome = "—" if p["verdict"] is None else f"**{p['verdict']}** ({p['reason']})"
        lines.append("| " + " | ".join([
            p["pair"], str(len(p["seeds"])), _pm(p["with_test_auc_event"]), _pm(p["without_test_auc_event"]), _difference(d),
            _sigma(d), _pm(p["with_test_mse"], 5), _pm(p["without_test_mse"], 5), _pm(p["with_test_validity"], 3),
            _pm(p["without_test_validity"], 3), ", ".join(map(str, p["best_in_seeds"])) or "—", outcome]) + " |")
    lines += ["", f"Whole claim (every pair): **{summary['verdict'] or '—'}**. Values: mean ± sample s.d. over "
              f"seeds; rule: {summary['rule']}. MSE: Task-1 calibration MSE on tau jets ((pT/100 GeV)², η², φ² "
              "summed); validity: fraction of Task-1 outputs within the GP's 2σ band.", "",
              "### v1 scan of each seed's best pair (chosen on validation, with re-optimisation at v1 = 0)", "",
              "| v1 | seeds | MSE with | MSE without | AUC with | AUC without | AUC with − without | significance "
              "| validity with | validity without |",
              "|" + "|".join(" --- " for _ in range(10)) + "|"]
    for s in summary["scan"]:
        d = s["auc_difference"]
        lines.append("| " + " | ".join([
            f"{s['v1']:g}", str(len(s["seeds"])), _pm(s["with_test_mse"], 5), _pm(s["without_test_mse"], 5),
            _pm(s["with_test_auc_event"]), _pm(s["without_test_auc_event"]), _difference(d), _sigma(d),
            _pm(s["with_test_validity"], 3), _pm(s["without_test_validity"], 3)]) + " |")
    best = summary["best_pair_per_seed"]
    lines += ["", "Best pair per seed: " + ", ".join(f"seed {k}: {v}" for k, v in best.items()) + ". "
              "\"Without\" does not depend on v1 (the same chains in every row).", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------
_COLOURS = {"with": "tab:blue", "without": "tab:orange"}  # the paper's colours


def _seed_text(rows: Sequence[Mapping]) -> str:
    seeds = sorted({int(r["seed"]) for r in rows})
    return f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({', '.join(map(str, seeds))})"


def plot_auc_pairs(rows: Sequence[Mapping], path: PathLike, configuration: str) -> Path:
    """Paper Fig. 2: test Task-2 AUC per pair with (blue) and without (orange) re-optimisation,
    one box per pair and mode over seeds, each seed a dot."""
    from hepms.select.plots import figure, save_figure
    from hepms.study.plots import place_legend

    pair_rows = [r for r in rows if r["phase"] == "pairs"]
    names = list(dict.fromkeys(r["pair"] for r in pair_rows))
    with figure(1, max(6.0, 1.0 * len(names) + 2), 5.0) as (fig, axes):
        ax = axes[0]
        for k, mode in enumerate(MODES):
            offset = (k - 0.5) * 0.36
            data = [[r["test_auc_event"] for r in pair_rows if r["pair"] == n and r["mode"] == mode
                     and r["test_auc_event"] is not None and math.isfinite(r["test_auc_event"])] for n in names]
            x = np.arange(len(names)) + offset
            ax.boxplot(data, positions=x, widths=0.3, patch_artist=True, showfliers=False,
                       boxprops={"facecolor": _COLOURS[mode], "alpha": 0.35, "edgecolor": _COLOURS[mode]},
                       medianprops={"color": _COLOURS[mode]}, whiskerprops={"color": _COLOURS[mode]},
                       capprops={"color": _COLOURS[mode]})
            for xi, values in zip(x, data):
                ax.plot(np.full(len(values), xi), values, ls="none", marker="o", ms=3.5,
                        color=_COLOURS[mode], label=None)
            ax.plot([], [], ls="none", marker="s", ms=8, alpha=0.6, color=_COLOURS[mode],
                    label=f"{mode} re-optimisation")
        ax.set_xticks(np.arange(len(names)), [n.replace("+", "\n+ ") for n in names])
        ax.set_ylabel("Task-2 AUC (test)")
        ax.set_xlabel("Task-1 model + Task-2 model")
        fig.tight_layout()
        place_legend(ax)
        caption = (f"Task-2 AUC on the test split per model pair, with (blue) and without (orange) "
                   f"re-optimisation at v1 = 0; boxes: quartiles over seeds, whiskers: full range, "
                   f"dots: single seeds; {_seed_text(pair_rows)}; {configuration}")
        return save_figure(fig, path, layout=False, caption=caption)


def plot_v1_scan(rows: Sequence[Mapping], path: PathLike, configuration: str, validity: bool) -> Path:
    """Paper Fig. 3: Task-1 MSE, Task-2 AUC and (with the GP reference) validity versus ``v1``
    for each seed's best pair, with and without re-optimisation; mean and s.d. over seeds."""
    from hepms.select.plots import figure, save_figure
    from hepms.study.plots import place_legend

    best = {s: next(r["pair"] for r in rows if r["seed"] == s and r.get("best"))
            for s in sorted({r["seed"] for r in rows}) if any(r["seed"] == s and r.get("best") for r in rows)}
    with_rows = [r for r in rows if r["mode"] == "with" and r.get("best")]
    without = [r for r in rows if r["mode"] == "without" and best.get(r["seed"]) == r["pair"]]
    v1s = sorted({float(r["v1"]) for r in with_rows})
    panels = [("test_mse", "Task-1 MSE (test)"), ("test_auc_event", "Task-2 AUC (test)")]
    if validity:
        panels.append(("test_validity", r"fraction within GP 2$\sigma$ (test)"))
    with figure(len(panels), 5.0, 4.3) as (fig, axes):
        for ax, (metric, label) in zip(axes, panels):
            def stats(values):
                values = [v for v in values if v is not None and math.isfinite(v)]
                return (np.mean(values) if values else np.nan,
                        np.std(values, ddof=1) if len(values) > 1 else 0.0)

            w = [stats([r.get(metric) for r in with_rows if float(r["v1"]) == v]) for v in v1s]
            ax.errorbar(v1s, [m for m, _ in w], yerr=[s for _, s in w], marker="o", capsize=3,
                        color=_COLOURS["with"], label="with re-optimisation")
            m, s = stats([r.get(metric) for r in without])
            ax.errorbar(v1s, [m] * len(v1s), yerr=[s] * len(v1s), marker="s", capsize=3, ls="--",
                        color=_COLOURS["without"], label="without (no v1)")
            ax.set_xlabel(r"$v_1$ (Task-1 weight)")
            ax.set_ylabel(label)
            if metric == "test_mse":
                ax.set_yscale("log")
        fig.tight_layout()
        for ax in axes:
            place_legend(ax, fontsize=9)
        pairs = ", ".join(f"seed {s}: {p}" for s, p in best.items())
        caption = (f"each seed's best pair (chosen on validation): {pairs}; points: mean over seeds, "
                   f"error bars: sample s.d. over seeds; 'without' does not depend on v1 (same value "
                   f"drawn at every v1); {_seed_text(with_rows)}; {configuration}")
        return save_figure(fig, path, layout=False, caption=caption)
