"""Paired comparisons between configurations: do our trials reproduce the reference study's claims?

Every trial of a scan has the seed ``scan.seed + t`` whatever its configuration, so two
configurations' trials pair up by seed: same initialisation seed, same batch order, same data.
For each comparison of ``scan.comparisons`` (:func:`hepms.config.comparison_specs`) and each
grid column, the differences ``d_i = A_i - B_i`` of the metric over the seeds both have give

* the mean difference and its paired-t error ``s_d / sqrt(n)``;
* ``t = mean / error`` and its two-sided p-value from Student's t with ``n - 1`` degrees of freedom,
  stated as a Gaussian significance in sigma (the ``z`` with the same two-sided p-value);
* a bootstrap interval (percentiles of the mean over resampled pairs; fixed seed: reproducible).

Where ``b`` lists several runs (e.g. the fixed weights), B is the best of them by mean metric in
our own trials: the comparison then asks "A versus the best fixed choice", as the slides do. The
selection uses the same trials, which favours B.

A claim of the reference study (``claim.expect``) is marked **reproduced** when (rule
:data:`RULE`): ``better`` -- the mean difference is positive and at least :data:`SIGNIFICANCE`
sigma; ``not_worse`` -- it is not negative at :data:`SIGNIFICANCE` sigma or more. Otherwise
**not reproduced**, with the reason (opposite sign, or not significant).
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from hepms.config import comparison_specs
from hepms.study.plan import PlannedRun

__all__ = ["SIGNIFICANCE", "RULE", "paired_difference", "verdict", "compare", "comparisons_markdown",
           "write_comparisons"]

#: Significance (sigma) at which a difference counts as resolved.
SIGNIFICANCE = 2.0
RULE = (f"reproduced: 'better' claims need A - B > 0 at >= {SIGNIFICANCE:g} sigma; 'not_worse' claims are "
        f"reproduced unless A - B < 0 at >= {SIGNIFICANCE:g} sigma (paired over trials with the same seed; "
        "sigma: the Gaussian z with the two-sided p-value of the paired t-test)")
_BOOTSTRAP_SAMPLES = 10_000
_BOOTSTRAP_SEED = 20220427  # the talk's date: any fixed seed, so that the tables are reproducible


def paired_difference(a: Sequence[float], b: Sequence[float], bootstrap: int = _BOOTSTRAP_SAMPLES) -> dict[str, Any]:
    """Statistics of the paired differences ``a[i] - b[i]``.

    Returns:
        ``n``, ``mean``, ``std`` (sample, n - 1), ``error`` (paired-t: std / sqrt(n)), ``t``,
        ``p_value`` (two-sided, Student's t with n - 1 degrees of freedom), ``sigma`` (Gaussian z
        with that p-value, >= 0), ``bootstrap_68`` and ``bootstrap_95`` (percentile intervals of
        the mean). Entries that need more pairs (or a non-zero spread) are None.

    Raises:
        ValueError: ``a`` and ``b`` of different lengths, or non-finite values.
    """
    import numpy as np
    from scipy import stats

    if len(a) != len(b):
        raise ValueError(f"paired_difference: {len(a)} values of A but {len(b)} of B")
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if not np.all(np.isfinite(d)):
        raise ValueError("paired_difference: non-finite values")
    n = len(d)
    out: dict[str, Any] = {"n": n, "mean": None, "std": None, "error": None, "t": None, "p_value": None,
                           "sigma": None, "bootstrap_68": None, "bootstrap_95": None}
    if n == 0:
        return out
    out["mean"] = float(d.mean())
    if n < 2:
        return out
    out["std"] = float(d.std(ddof=1))
    out["error"] = out["std"] / math.sqrt(n)
    if out["error"] > 0:
        out["t"] = out["mean"] / out["error"]
        out["p_value"] = float(2.0 * stats.t.sf(abs(out["t"]), df=n - 1))
        out["sigma"] = float(stats.norm.isf(out["p_value"] / 2.0)) if out["p_value"] > 0 else math.inf
    rng = np.random.default_rng(_BOOTSTRAP_SEED)
    means = d[rng.integers(0, n, size=(bootstrap, n))].mean(axis=1)
    out["bootstrap_68"] = [float(x) for x in np.percentile(means, [15.865, 84.135])]
    out["bootstrap_95"] = [float(x) for x in np.percentile(means, [2.5, 97.5])]
    return out


def verdict(expect: Optional[str], stats: Mapping[str, Any]) -> tuple[Optional[str], str]:
    """``("reproduced" | "not reproduced" | None, reason)`` for a claim ``expect`` (see :data:`RULE`)."""
    if expect is None:
        return None, "no claim"
    if stats["n"] < 2 or stats["mean"] is None:
        return None, f"{stats['n']} pair(s): too few to test"
    mean, sigma = stats["mean"], stats["sigma"]
    if sigma is None:  # no spread: every pair the same difference
        sigma = 0.0 if mean == 0 else math.inf
    significant = sigma >= SIGNIFICANCE
    where = f"{sigma:.1f} sigma" if math.isfinite(sigma) else "every pair"
    if expect == "better":
        if mean > 0 and significant:
            return "reproduced", f"A > B at {where}"
        if mean < 0 and significant:
            return "not reproduced", f"opposite: A < B at {where}"
        return "not reproduced", f"not resolved: {where} < {SIGNIFICANCE:g} sigma"
    if expect == "not_worse":
        if mean < 0 and significant:
            return "not reproduced", f"A < B at {where}"
        return "reproduced", f"A not worse than B: {'+' if mean >= 0 else '-'}{where}"
    raise ValueError(f"unknown claim {expect!r}")


def _values(results: Sequence[Mapping[str, Any]], metric: str) -> dict[int, float]:
    out = {}
    for res in results:
        value = (res.get("metrics") or {}).get(metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[int(res["seed"])] = float(value)
    return out


def _claim_text(claim: Optional[Mapping[str, Any]], column: str) -> Optional[str]:
    if not claim or claim.get("study") is None:
        return None
    text = claim["study"]
    if isinstance(text, Mapping):
        text = text.get(column)
    return None if text is None else str(text)


def compare(
    cfg: Mapping[str, Any],
    planned: Sequence[PlannedRun],
    results: Mapping[str, Sequence[Mapping[str, Any]]],
) -> list[dict[str, Any]]:
    """One row per comparison of ``scan.comparisons`` and grid column, from the finished
    ``results`` (per run key, as :func:`hepms.study.scan.collect_results`)."""
    rows = []
    for spec in comparison_specs(cfg, planned):
        a_runs = [r for r in planned if r.ref == spec["a"]]
        columns = spec["columns"] if spec["columns"] is not None else [r.column for r in a_runs]
        for column in columns:
            run_a = next(r for r in a_runs if r.column == column)
            candidates = []
            for ref in spec["b"]:
                runs_b = [r for r in planned if r.ref == ref]
                match = [r for r in runs_b if r.column == column] or (runs_b if len(runs_b) == 1 else [])
                candidates += match[:1]
            metric = spec["metric"]
            a_values = _values(results.get(run_a.key, []), metric)
            means = {}
            for run in candidates:
                v = _values(results.get(run.key, []), metric)
                if v:  # a run without results cannot be the best one
                    means[run.ref] = (statistics.fmean(v.values()), run, v)
            if len(candidates) == 1 and not means:
                means[candidates[0].ref] = (math.nan, candidates[0], {})
            best_ref = max(means, key=lambda ref: means[ref][0]) if means else None
            b_values = means[best_ref][2] if best_ref else {}
            seeds = sorted(set(a_values) & set(b_values))
            stats = paired_difference([a_values[s] for s in seeds], [b_values[s] for s in seeds])
            claim = spec["claim"]
            outcome, reason = verdict(claim.get("expect") if claim else None, stats)
            rows.append({
                "name": spec["name"], "title": spec["title"], "column": column, "metric": metric,
                "a": run_a.label, "b": None if best_ref is None else means[best_ref][1].label,
                "b_candidates": [r.label for r in candidates],
                "b_selected_as_best": len(candidates) > 1,
                "seeds": seeds,
                "mean_a": statistics.fmean(a_values[s] for s in seeds) if seeds else None,
                "mean_b": statistics.fmean(b_values[s] for s in seeds) if seeds else None,
                "difference": stats,
                "claim": None if not claim else {"expect": claim.get("expect"), "study": _claim_text(claim, column),
                                                 "source": claim.get("source")},
                "verdict": outcome, "reason": reason,
            })
    return rows


def _signed(x: Optional[float], digits: int = 4) -> str:
    return "—" if x is None else f"{x:+.{digits}f}"


def comparisons_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The comparisons as a Markdown table with the rule and the reference claims as notes."""
    header = ["comparison", "column", "A", "B", "pairs", "A − B (mean ± paired-t error)", "95% bootstrap",
              "significance", "study (A − B)", "expect", "reproduced?"]
    lines = ["### Paired comparisons (trials with the same seed)", "",
             "| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    sources: list[str] = []
    for r in rows:
        d = r["difference"]
        diff = "—" if d["mean"] is None else (_signed(d["mean"]) + ("" if d["error"] is None else f" ± {d['error']:.4f}"))
        boot = "—" if d["bootstrap_95"] is None else f"[{d['bootstrap_95'][0]:+.4f}, {d['bootstrap_95'][1]:+.4f}]"
        sig = "—" if d["sigma"] is None else (f"{math.copysign(1, d['mean']) * d['sigma']:+.1f} σ"
                                             if math.isfinite(d["sigma"]) else "every pair")
        if r["b_selected_as_best"]:
            b = (r["b"] or "—") + " (best of " + ", ".join(r["b_candidates"]) + ")"
        else:
            b = r["b"] or "—"
        claim = r["claim"] or {}
        if claim.get("source") and claim["source"] not in sources:
            sources.append(claim["source"])
        outcome = "—" if r["verdict"] is None else f"**{r['verdict']}** ({r['reason']})"
        lines.append("| " + " | ".join([r["title"], r["column"] or "", r["a"], b, str(d["n"]), diff, boot, sig,
                                        claim.get("study") or "—", claim.get("expect") or "—", outcome]) + " |")
    lines += ["", f"Metric: {', '.join(sorted({r['metric'] for r in rows}))} (test set). Rule: {RULE}. "
              "Where B is the best of several runs, it was chosen by its mean over the same trials (this favours B)."]
    for i, source in enumerate(sources, 1):
        lines.append(f"Claims [{i}]: {source}")
    return "\n".join(lines) + "\n"


def write_comparisons(outdir: Path, rows: Sequence[Mapping[str, Any]]) -> list[Path]:
    """``comparisons.md`` and ``comparisons.json`` in ``outdir`` (nothing without comparisons)."""
    if not rows:
        return []
    from hepms.study.runner import write_json
    from hepms.atomic import write_text_atomic

    outdir.mkdir(parents=True, exist_ok=True)
    md, js = outdir / "comparisons.md", outdir / "comparisons.json"
    write_text_atomic(md, comparisons_markdown(rows))
    write_json(js, {"rule": RULE, "significance_sigma": SIGNIFICANCE, "comparisons": list(rows)})
    return [md, js]
