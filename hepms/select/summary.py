"""The answers the MSNAS paper gives, computed from a selection study's results.

Input: the output folder of :func:`hepms.select.study.run_study` (``hepms select``): every
selection's record ``runs/<method>_v1-<v1>_seed-<seed>.json`` (its ``row`` and, for DARTS, the
architecture weights per epoch) and, when the study finished, ``results.json`` (configuration and
machine). The records are read rather than ``results.json`` alone, so a study stopped half-way
still gives its finished selections.

:func:`summarize` answers, per method and ``v1`` (the paper's section 4.4.2, Figs. 4-6):

* ``dummies``: how often a dummy candidate (``zeros`` / ``noise``) was selected, per method
  (paper: never, by grid search or DARTS; SPOS-NAS runs without dummies);
* ``agreement``: for each pair of methods, the fraction of (``v1``, seed) where both selected the
  same (Task 1, Task 2) pair (paper: grid search and SPOS-NAS agree, DARTS less so);
* ``pairs``: the selected pairs' counts and fractions per method and ``v1`` (Fig. 5);
* ``metrics``: test MSE, Task-2 AUC and GP validity, mean and sample s.d. over seeds (Fig. 6);
* ``paired``: method minus grid search per ``v1``, paired by seed (same data, same pre-training),
  with the paired-t error and significance of :func:`hepms.study.compare.paired_difference`;
* ``v1_trend``: per method, each metric at the largest ``v1`` minus at the smallest, paired by seed
  (does the Task-1 weight move MSE, AUC and validity as the paper's Fig. 6 says?);
* ``alpha``: DARTS ``softmax(alpha)`` per epoch of every seed, and its final value, mean and s.d.
  over seeds (Fig. 4);
* ``pair_scores``: grid search's validation score of every pair (after its re-optimisation), mean
  and s.d. over seeds: how far apart the pairs the methods choose between are;
* ``epochs``: how many epochs each kind of training phase ran (did the epoch cap bind?).

``python -m hepms.select.summary RUN_DIR --out DIR [--config CONFIG.yaml]`` writes ``summary.json``,
``summary.md`` and the figures (captioned with the configuration and seeds) to ``DIR``.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from hepms.atomic import json_safe, write_text_atomic
from hepms.select.records import selected_pair

log = logging.getLogger(__name__)

__all__ = ["SUMMARY_METRICS", "load_study", "phase_epochs", "dummy_names", "summarize", "summary_markdown", "write_summary", "main"]

PathLike = Union[str, Path]

#: Row metrics summarised per method and v1: Task-1 MSE, Task-2 AUC, GP validity (test split).
SUMMARY_METRICS: tuple[str, ...] = ("test_mse", "test_auc_event", "test_validity")
#: Candidate names treated as dummies when the configuration is not known.
_DUMMY_NAMES = ("zeros", "noise")


def load_study(run_dir: PathLike) -> tuple[list[dict], list[dict], Optional[dict]]:
    """``(rows, records, results)`` of a study folder: the row of every selection record (sorted by
    method, v1, seed), the records themselves, and ``results.json`` (None while the study runs).

    Raises:
        FileNotFoundError: no ``runs/*.json`` record in ``run_dir``.
        ValueError: a record without its ``row``.
    """
    folder = Path(run_dir)
    paths = sorted((folder / "runs").glob("*.json"))
    if not paths:
        raise FileNotFoundError(f"no selection records (runs/*.json) in {folder}")
    records = []
    for path in paths:
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or "row" not in record:
            raise ValueError(f"{path} is not a selection record (no 'row'): written by hepms select?")
        record["_file"] = path.name
        records.append(record)
    records.sort(key=lambda r: (r["row"]["method"], r["row"]["v1"], r["row"]["seed"]))
    results_path = folder / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else None
    return [r["row"] for r in records], records, results


def dummy_names(config: Optional[Mapping[str, Any]]) -> set[str]:
    """Names of the dummy candidates (kinds ``zeros`` / ``noise``) of a study configuration."""
    from hepms.select.candidates import DUMMY_KINDS

    if not config or "candidates" not in config:
        return set(_DUMMY_NAMES)
    return {name for step in config["candidates"].values() for name, spec in step.items()
            if spec.get("kind") in DUMMY_KINDS}


_pair = selected_pair


def _mean_sd(values: Sequence[float]) -> dict[str, Any]:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    return {"mean": float(v.mean()) if v.size else None,
            "sd": float(v.std(ddof=1)) if v.size > 1 else None, "n": int(v.size)}


def summarize(
    rows: Sequence[Mapping[str, Any]],
    records: Sequence[Mapping[str, Any]] = (),
    *,
    dummies: Iterable[str] = _DUMMY_NAMES,
    metrics: Sequence[str] = SUMMARY_METRICS,
    reference: str = "grid",
) -> dict[str, Any]:
    """The paper's questions answered from the study's rows (see the module docstring).

    Args:
        rows: one dict per selection (``method``, ``v1``, ``seed``, ``upstream``, ``downstream`` and
            the ``test_*`` metrics), as :func:`hepms.select.study.run_study` writes them.
        records: the selection records (for the DARTS ``alpha_history``); optional.
        dummies: candidate names that are dummies.
        metrics: row keys summarised per method and v1.
        reference: the method the others are compared with, paired by (v1, seed).

    Raises:
        ValueError: no rows, or a (method, v1, seed) given twice.
    """
    if not rows:
        raise ValueError("no selections to summarise")
    dummies = set(dummies)
    by_key: dict[tuple[str, float, int], Mapping[str, Any]] = {}
    for r in rows:
        key = (r["method"], float(r["v1"]), int(r["seed"]))
        if key in by_key:
            raise ValueError(f"selection {key} appears twice")
        by_key[key] = r
    methods = sorted({k[0] for k in by_key})
    v1s = sorted({k[1] for k in by_key})
    seeds = sorted({k[2] for k in by_key})

    out: dict[str, Any] = {"selections": len(rows), "methods": methods, "v1": v1s, "seeds": seeds,
                           "dummy_candidates": sorted(dummies)}
    out["dummies"] = {}
    for m in methods:
        mine = [r for k, r in by_key.items() if k[0] == m]
        chosen = [r for r in mine if r["upstream"] in dummies
                  or (r["downstream"] in dummies and r.get("downstream_selected", True))]
        out["dummies"][m] = {"selected": len(chosen), "runs": len(mine),
                             "which": [{"v1": r["v1"], "seed": r["seed"], "pair": _pair(r)} for r in chosen]}

    def chose_both(key: tuple) -> bool:
        return by_key[key].get("downstream_selected", True)

    out["agreement"] = {}
    for a, b in itertools.combinations(methods, 2):
        # Pairs (and Task-2 models) are compared only where both methods chose both models;
        # Task-1 models wherever both ran.
        per_v1 = {}
        for v in v1s:
            common = [s for s in seeds if (a, v, s) in by_key and (b, v, s) in by_key]
            both = [s for s in common if chose_both((a, v, s)) and chose_both((b, v, s))]
            same = [s for s in both if _pair(by_key[(a, v, s)]) == _pair(by_key[(b, v, s)])]
            per_v1[v] = {"agree": len(same), "n": len(both)}
        agree = sum(x["agree"] for x in per_v1.values())
        n = sum(x["n"] for x in per_v1.values())
        # Same upstream / downstream alone: where the methods differ, in which task.
        ran = [(v, s) for v in v1s for s in seeds if (a, v, s) in by_key and (b, v, s) in by_key]
        up = sum(1 for v, s in ran if by_key[(a, v, s)]["upstream"] == by_key[(b, v, s)]["upstream"])
        down = sum(1 for v, s in ran if chose_both((a, v, s)) and chose_both((b, v, s))
                   and by_key[(a, v, s)]["downstream"] == by_key[(b, v, s)]["downstream"])
        out["agreement"][f"{a}|{b}"] = {"agree": agree, "n": n, "fraction": agree / n if n else None,
                                        "same_upstream": up, "n_upstream": len(ran), "same_downstream": down,
                                        "by_v1": per_v1}

    out["pairs"] = {}
    for m in methods:
        out["pairs"][m] = {}
        for v in v1s:
            counts = Counter(_pair(r) for k, r in by_key.items() if k[0] == m and k[1] == v)
            total = sum(counts.values())
            out["pairs"][m][v] = {p: {"count": c, "fraction": c / total} for p, c in counts.most_common()}

    out["metrics"] = {m: {v: {name: _mean_sd([r.get(name) for k, r in by_key.items() if k[0] == m and k[1] == v
                                               and r.get(name) is not None])
                              for name in metrics}
                          for v in v1s}
                      for m in methods}

    out["paired"] = {}
    if reference in methods:
        from hepms.study.compare import paired_difference

        for m in methods:
            if m == reference:
                continue
            table: dict[str, dict] = {}
            for name in metrics:
                table[name] = {}
                for v in v1s:
                    pairs = [(by_key[(m, v, s)].get(name), by_key[(reference, v, s)].get(name)) for s in seeds
                             if (m, v, s) in by_key and (reference, v, s) in by_key]
                    pairs = [(x, y) for x, y in pairs
                             if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
                    table[name][v] = paired_difference([x for x, _ in pairs], [y for _, y in pairs])
            out["paired"][f"{m}-{reference}"] = table

    # The v1 trend (Fig. 6): the largest v1 minus the smallest, paired by seed, per method; and,
    # when the scan reaches an end (v1 = 0 or 1: one task without a loss of its own), the same
    # between the smallest and largest v1 strictly inside (0, 1), where both tasks have a loss.
    def trend(lo: float, hi: float) -> dict[str, Any]:
        from hepms.study.compare import paired_difference

        table: dict[str, Any] = {}
        for m in methods:
            table[m] = {}
            for name in metrics:
                pairs = [(by_key[(m, hi, s)].get(name), by_key[(m, lo, s)].get(name)) for s in seeds
                         if (m, hi, s) in by_key and (m, lo, s) in by_key]
                pairs = [(x, y) for x, y in pairs
                         if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
                table[m][name] = {"v1": [lo, hi], **paired_difference([x for x, _ in pairs], [y for _, y in pairs])}
        return table

    out["v1_trend"] = trend(v1s[0], v1s[-1]) if len(v1s) >= 2 else {}
    inner = [v for v in v1s if 0.0 < v < 1.0]
    out["v1_trend_inner"] = trend(inner[0], inner[-1]) if len(inner) >= 2 and inner != v1s else {}

    out["alpha"] = _alpha_summary(records)
    out["pair_scores"] = _pair_scores(records)
    out["epochs"] = _epochs_run(records)
    out["seconds"] = {m: {v: _mean_sd([r.get("seconds") for k, r in by_key.items() if k[0] == m and k[1] == v])
                          for v in v1s}
                      for m in methods}
    return out


def phase_epochs(history: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Epochs per training phase (``{"pretrain/upstream/mlp": 12, "grid/mlp|lstm": 7, ...}``) of a
    selection's per-epoch ``history``: what the summary needs of it, and what a selection record
    keeps instead of the history."""
    return dict(Counter(str(h.get("phase", "")) for h in history))


def _epochs_run(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """How many epochs each training phase ran (from the records' per-epoch ``history``, or their
    ``epochs`` per phase: :func:`phase_epochs`), per kind
    of phase: ``{"n", "mean", "max", "at_max"}``; ``at_max`` counts the phases that ran the most
    epochs seen (the configured cap, when any phase reached it). Pre-training is shared by the
    selections of a seed, so each seed's pre-training counts once."""
    runs: dict[tuple, int] = {}
    for rec in records:
        row = rec.get("row", {})
        counts = rec["epochs"] if isinstance(rec.get("epochs"), dict) else phase_epochs(rec.get("history") or [])
        for tag, n in counts.items():
            if tag.startswith("pretrain/"):  # the same phase in every record of the seed
                key: tuple = ("pretrain", row.get("seed"), tag)
            elif tag.startswith("grid/"):
                key = ("grid/reoptimise", row.get("v1"), row.get("seed"), tag)
            else:
                key = (tag, row.get("v1"), row.get("seed"))
            runs[key] = n
    kinds: dict[str, list[int]] = defaultdict(list)
    for key, n in runs.items():
        kinds[key[0]].append(n)
    return {kind: {"n": len(v), "mean": float(np.mean(v)), "max": int(max(v)), "at_max": int(sum(x == max(v) for x in v))}
            for kind, v in sorted(kinds.items())}


def _pair_scores(records: Sequence[Mapping[str, Any]], method: str = "grid") -> dict[str, Any]:
    """Grid search scores every pair on validation after re-optimising it: per v1 and pair, the
    validation Task-2 AUC and weighted loss, mean and s.d. over seeds (the ranking of the pairs)."""
    grouped: dict[float, dict[str, dict[str, list]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for rec in records:
        row = rec.get("row", {})
        if row.get("method") != method:
            continue
        for pair, metrics_ in (rec.get("scores") or {}).items():
            for name in ("auc_event", "total"):
                if metrics_.get(name) is not None:
                    grouped[float(row["v1"])][pair][name].append(metrics_[name])
    return {v: {pair: {name: _mean_sd(vals) for name, vals in by_name.items()}
                for pair, by_name in sorted(by_pair.items(), key=lambda kv: -np.mean(kv[1]["auc_event"] or [0]))}
            for v, by_pair in sorted(grouped.items())}


def _alpha_summary(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """DARTS: per v1, every seed's softmax(alpha) per epoch and the final weights over seeds."""
    grouped: dict[float, dict[int, list]] = defaultdict(dict)
    for rec in records:
        history = rec.get("alpha_history") or []
        row = rec.get("row", {})
        if row.get("method") == "darts" and history:
            grouped[float(row["v1"])][int(row["seed"])] = history
    out: dict[str, Any] = {}
    for v, by_seed in sorted(grouped.items()):
        final: dict[str, dict] = {}
        for step in ("upstream", "downstream"):
            names = list(next(iter(by_seed.values()))[-1][step])
            final[step] = {n: _mean_sd([h[-1][step].get(n) for h in by_seed.values()]) for n in names}
        out[v] = {"epochs": {s: len(h) - 1 for s, h in sorted(by_seed.items())},
                  "final": final, "history": {s: h for s, h in sorted(by_seed.items())}}
    return out


# ------------------------------------------------------------------------------------------------
# Markdown
# ------------------------------------------------------------------------------------------------
def _num(x: Optional[float], digits: int = 4) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _ms(stat: Mapping[str, Any], digits: int = 4) -> str:
    if stat.get("mean") is None:
        return "n/a"
    sd = stat.get("sd")
    return f"{stat['mean']:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")


def _paired_cell(d: Mapping[str, Any]) -> str:
    """``+0.0012 ± 0.0004 (3.1σ); n=5`` from :func:`~hepms.study.compare.paired_difference`."""
    if d.get("mean") is None:
        return "n/a"
    text = f"{d['mean']:+.4f}"
    if d.get("error") is not None:
        text += f" ± {d['error']:.4f}"
    sigma = d.get("sigma")
    if sigma is not None:
        text += f" ({sigma:.1f}σ)" if math.isfinite(sigma) else " (every pair)"
    return f"{text}; n={d['n']}"


def _fmt_v1(v: Any) -> str:
    return f"{float(v):g}"


def summary_markdown(summary: Mapping[str, Any], context: str = "") -> str:
    """Tables of :func:`summarize` as Markdown (numbers only from ``summary``)."""
    methods, v1s = summary["methods"], summary["v1"]
    lines = ["# MSNAS selection study: summary", ""]
    if context:
        lines += [context, ""]
    lines += [f"{summary['selections']} selections: methods {', '.join(methods)}; v1 "
              f"{', '.join(_fmt_v1(v) for v in v1s)}; seeds {', '.join(map(str, summary['seeds']))}.", ""]
    prov = summary.get("provenance") or {}
    if prov:
        if not prov.get("complete"):
            lines += ["**The study stopped before it finished**: these are the selections it completed.", ""]
        machine = prov.get("machine") or {}
        lines += [f"Settings hash `{prov.get('settings_hash')}`, data fingerprint `{prov.get('data_fingerprint')}`"
                  + (f", machine {machine.get('cpu')} ({machine.get('cpu_count')} cores, "
                     f"{machine.get('torch_threads')} torch thread(s))" if machine else "") + ".", ""]

    lines += ["## Dummy candidates selected", "",
              f"Dummies: {', '.join(summary['dummy_candidates']) or 'none'}.", "",
              "| method | runs | a dummy selected |", "|---|---|---|"]
    for m in methods:
        d = summary["dummies"][m]
        which = "; ".join(f"v1 {_fmt_v1(w['v1'])} seed {w['seed']}: {w['pair'].replace('|', ' + ')}" for w in d["which"])
        lines.append(f"| {m} | {d['runs']} | {d['selected']}{' (' + which + ')' if which else ''} |")

    lines += ["", "## Agreement between methods (same selected pair at the same v1 and seed)", "",
              "| methods | same pair | fraction | same Task 1 | same Task 2 | per v1 (agree/n) |",
              "|---|---|---|---|---|---|"]
    for key, a in summary["agreement"].items():
        per = ", ".join(f"{_fmt_v1(v)}: {x['agree']}/{x['n']}" for v, x in a["by_v1"].items())
        lines.append(f"| {key.replace('|', ' vs ')} | {a['agree']}/{a['n']} | {_num(a['fraction'], 2)} | "
                     f"{a['same_upstream']}/{a.get('n_upstream', a['n'])} | {a['same_downstream']}/{a['n']} | {per} |")

    lines += ["", "## Selected pairs (Fig. 5): count per method and v1", ""]
    for m in methods:
        lines.append(f"**{m}**: " + "; ".join(
            f"v1 {_fmt_v1(v)}: " + ", ".join(f"{p.replace('|', ' + ')} {c['count']}"
                                            for p, c in summary["pairs"][m][v].items())
            for v in v1s if v in summary["pairs"][m]))
        lines.append("")

    names = {"test_mse": "Task-1 MSE", "test_auc_event": "Task-2 AUC", "test_validity": "GP validity"}
    metrics = list(next(iter(next(iter(summary["metrics"].values())).values())))
    lines += ["## Test metrics versus v1 (Fig. 6): mean ± s.d. over seeds", "",
              "| method | v1 | n | " + " | ".join(names.get(k, k) for k in metrics) + " |",
              "|---|---|---|" + "---|" * len(metrics)]
    for m in methods:
        for v in v1s:
            stats = summary["metrics"][m][v]
            n = max(s["n"] for s in stats.values())
            lines.append(f"| {m} | {_fmt_v1(v)} | {n} | " + " | ".join(_ms(stats[k]) for k in metrics) + " |")

    if summary["paired"]:
        lines += ["", "## Paired differences to the reference method (same v1 and seed)", "",
                  "mean ± paired-t error (significance in sigma); n pairs.", "",
                  "| difference | v1 | " + " | ".join(names.get(k, k) for k in metrics) + " |",
                  "|---|---|" + "---|" * len(metrics)]
        for key, table in summary["paired"].items():
            for v in v1s:
                cells = [_paired_cell(table[k].get(v) or {}) for k in metrics]
                lines.append(f"| {key} | {_fmt_v1(v)} | " + " | ".join(cells) + " |")

    for name, note in (("v1_trend", ""), ("v1_trend_inner", " (inside the scan: both tasks have a loss)")):
        if summary.get(name):
            lo, hi = next(iter(next(iter(summary[name].values())).values()))["v1"]
            lines += ["", f"## The v1 trend{note}: metric at v1 = {_fmt_v1(hi)} minus at v1 = {_fmt_v1(lo)}, "
                      "paired by seed", "",
                      "| method | " + " | ".join(names.get(k, k) for k in metrics) + " |",
                      "|---|" + "---|" * len(metrics)]
            for m, table in summary[name].items():
                lines.append(f"| {m} | " + " | ".join(_paired_cell(table[k]) for k in metrics) + " |")

    if summary.get("epochs"):
        lines += ["", "## Epochs run per training phase (from the records)", "",
                  "| phase | phases | mean epochs | most epochs | phases with the most |", "|---|---|---|---|---|"]
        for kind, e in summary["epochs"].items():
            lines.append(f"| {kind} | {e['n']} | {e['mean']:.1f} | {e['max']} | {e['at_max']} |")
    if summary.get("pair_scores"):
        lines += ["", "## Grid search: every pair's validation score after re-optimisation, mean ± s.d. over seeds", "",
                  "| v1 | pair | validation Task-2 AUC | validation v1 L1 + v2 L2 |", "|---|---|---|---|"]
        for v, by_pair in summary["pair_scores"].items():
            for pair, st in by_pair.items():
                lines.append(f"| {_fmt_v1(v)} | {pair.replace('|', ' + ')} | {_ms(st.get('auc_event', {}))} | "
                             f"{_ms(st.get('total', {}))} |")
    if summary["alpha"]:
        lines += ["", "## DARTS: final softmax(alpha), mean ± s.d. over seeds (Fig. 4)", ""]
        for v, a in summary["alpha"].items():
            epochs = ", ".join(f"seed {s}: {e}" for s, e in a["epochs"].items())
            lines.append(f"v1 {_fmt_v1(v)} (search epochs {epochs})")
            lines.append("")
            for step in ("upstream", "downstream"):
                lines.append(f"* {step}: " + ", ".join(f"{n} {_ms(st, 3)}" for n, st in a["final"][step].items()))
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


# ------------------------------------------------------------------------------------------------
# Files and figures
# ------------------------------------------------------------------------------------------------
def _context(results: Optional[Mapping[str, Any]]) -> str:
    """One line naming the configuration a figure or table comes from."""
    if not results:
        return ""
    cfg = results.get("config", {})
    data, s = cfg.get("data", {}), cfg.get("settings", {})
    events = data.get("max_events")
    return (f"{cfg.get('source') or 'config'}: {data.get('path')}"
            f"{f', first {events} events/process' if events else ''}, task {cfg.get('task')}, "
            f"epochs {s.get('pretrain_epochs')}/{s.get('search_epochs')}/{s.get('posttrain_epochs')} "
            f"(patience {s.get('patience')}/{s.get('search_patience')}), alpha_lr {s.get('alpha_lr')}")


def write_summary(
    run_dir: PathLike, out_dir: PathLike, *, plots: bool = True, config: Optional[PathLike] = None
) -> dict[str, Any]:
    """Summarise the study in ``run_dir`` into ``out_dir``: ``summary.json``, ``summary.md`` and
    (``plots``) the figures. Returns the summary (with the written ``files``).

    ``config``: the study's configuration file, for a study stopped before it wrote
    ``results.json`` (which holds the configuration otherwise); the summary then says it is
    incomplete and which selections it has.
    """
    from hepms.config_engine import settings_hash

    rows, records, results = load_study(run_dir)
    if results is None and config is not None:
        from hepms.select.config import load_selection_config

        results = {"config": json_safe(load_selection_config(config).to_dict()), "partial": True}
    config = (results or {}).get("config")
    summary = summarize(rows, records, dummies=dummy_names(config))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    context = _context(results)
    provenance: dict[str, Any] = {"run_dir": str(run_dir),
                                  "complete": results is not None and not results.get("partial")}
    if results:
        provenance["machine"] = results.get("machine")
        provenance["study_seconds"] = results.get("seconds")
        provenance["settings_hash"] = results.get("settings_hash") or settings_hash(config)
        fingerprint = results.get("data_fingerprint")
        if fingerprint is None and config and config.get("data", {}).get("path"):
            from hepms.study.dataset import sample_fingerprint

            path = Path(config["data"]["path"])
            if (path / "manifest.json").is_file():
                fingerprint = sample_fingerprint(path)
        provenance["data_fingerprint"] = fingerprint
    summary["provenance"] = provenance
    files: list[str] = []
    if plots:
        files += _figures(rows, summary, out, context)
    summary["files"] = [Path(f).name for f in files]
    write_text_atomic(out / "summary.json", json.dumps(json_safe(summary), indent=1))
    write_text_atomic(out / "summary.md", summary_markdown(summary, context))
    return summary


def _figures(rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any], out: Path, context: str) -> list[str]:
    from hepms.select.plots import plot_alpha_runs, plot_metric_vs_v1, plot_selected_pairs

    files = [plot_selected_pairs(rows, out / "selected_pairs.png", context=context)]
    labels = {"test_mse": "Task-1 MSE (test)", "test_auc_event": "Task-2 AUC (test)",
              "test_validity": r"fraction within GP 2$\sigma$ (test)"}
    stems = {"test_mse": "mse_vs_v1", "test_auc_event": "auc_vs_v1", "test_validity": "validity_vs_v1"}
    for metric, label in labels.items():
        if any(r.get(metric) is not None for r in rows):
            files.append(plot_metric_vs_v1(rows, metric, out / f"{stems[metric]}.png", label, context=context))
    for v, a in summary["alpha"].items():
        files.append(plot_alpha_runs(
            a["history"], out / f"alpha_v1-{_fmt_v1(v)}.png", rf"($v_1$ = {_fmt_v1(v)})",
            caption=(f"DARTS softmax(alpha) per search epoch (epoch 0: before the search), v1 = {_fmt_v1(v)}, "
                     f"one line per seed ({', '.join(map(str, a['history']))}); dotted: uniform 1/N. {context}")))
    return [str(f) for f in files]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m hepms.select.summary RUN_DIR --out DIR [--no-plots]``."""
    parser = argparse.ArgumentParser(prog="python -m hepms.select.summary",
                                     description="Summarise a `hepms select` study (the MSNAS paper's questions).")
    parser.add_argument("run_dir", help="output folder of `hepms select`")
    parser.add_argument("--out", help="where to write summary.json / summary.md / figures (default: run_dir)")
    parser.add_argument("--no-plots", action="store_true", help="skip the figures")
    parser.add_argument("--config", help="the study's configuration, when it stopped before writing results.json")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        summary = write_summary(args.run_dir, args.out or args.run_dir, plots=not args.no_plots, config=args.config)
    except (FileNotFoundError, ValueError) as error:
        print(f"hepms.select.summary: {error}", file=sys.stderr)
        return 2
    for m, d in summary["dummies"].items():
        print(f"{m:<6} dummy selected in {d['selected']}/{d['runs']} runs")
    for key, a in summary["agreement"].items():
        print(f"{key.replace('|', ' vs '):<16} same pair in {a['agree']}/{a['n']} (v1, seed)")
    print(f"wrote {Path(args.out or args.run_dir) / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
