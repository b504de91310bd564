"""Result tables of a scan, built from whatever trial results exist (Markdown and JSON).

For a ``table`` study the rows are the runs and the columns the grid points (for the loss-balancing
study: the upstream loss BCE / MSE), each cell the mean +- standard deviation over the finished
trials of the upstream (tau-ID) and downstream (H/Z) test AUC, with the number of trials. A
``boxplot`` study gets one row per run with mean, standard deviation, median and range of the
downstream AUC. Where ``scan.reference`` holds published numbers for a study, a comparison table
puts ours next to them.
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from hepms.atomic import write_text_atomic
from hepms.config_engine import ConfigError
from hepms.study.plan import PlannedRun, output_path, slug

__all__ = ["summarise", "study_tables", "write_tables", "fmt_mean_std", "NOT_APPLICABLE_NOTE"]

METRICS = ("auc_tau", "auc_event")
#: The footnote of an upstream cell marked n/a (see hepms.study.runner.upstream_not_applicable).
NOT_APPLICABLE_NOTE = (
    "n/a: not applicable. The upstream (tau-ID) loss has weight 0 in these runs (the (w1, w2) = (0, 1) row "
    "and the direct connection with k > 1, which cannot use the tau label), so the auxiliary head that "
    "outputs the tau score never receives a gradient: its weights stay at their initialisation and its "
    "AUC is that of a random function of the learned features, not a tau ID. The JSON keeps it as the "
    "probe metric probe_auc_tau_untrained_head."
)


def summarise(values: Sequence[Optional[float]]) -> dict[str, Any]:
    """Mean, sample standard deviation (n - 1), median, min, max and n of the finite values."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return {"n": 0, "mean": None, "std": None, "median": None, "min": None, "max": None, "values": []}
    return {
        "n": len(v),
        "mean": statistics.fmean(v),
        "std": statistics.stdev(v) if len(v) > 1 else None,
        "median": statistics.median(v),
        "min": min(v),
        "max": max(v),
        "values": v,
    }


def fmt_mean_std(s: Optional[Mapping[str, Any]], digits: int = 4) -> str:
    """``0.9750 ± 0.0003`` (``0.9750`` for one trial, ``—`` for none, ``n/a`` for a metric that
    does not apply: None)."""
    if s is None:
        return "n/a"
    if not s or s.get("n", 0) == 0:
        return "—"
    if s["std"] is None:
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def study_tables(
    cfg: Mapping[str, Any],
    planned: Sequence[PlannedRun],
    results: Mapping[str, Sequence[Mapping[str, Any]]],
) -> dict[str, dict[str, Any]]:
    """``{study: {"kind", "title", "columns", "rows": [...]}}`` with per-run summaries.

    Args:
        cfg: the scan's configuration.
        planned: the planned runs.
        results: finished results per run key (:attr:`PlannedRun.key`), one per trial.
    """
    from hepms.study.plan import unique_runs
    from hepms.study.runner import PROBE_AUC_TAU, upstream_not_applicable

    # Shared configurations live in one folder (see hepms.study.scan.config_folder).
    folders = {}
    for u in unique_runs(planned):
        found = results.get(u.key) or []
        folders[u.key] = Path(found[0]["_folder"]).parent.name if found and "_folder" in found[0] else u.folder
    out: dict[str, dict[str, Any]] = {}
    for name, study in cfg["scan"]["studies"].items():
        runs = [r for r in planned if r.study == name]
        columns: list[str] = []
        for r in runs:
            if r.column not in columns:
                columns.append(r.column)
        rows = []
        for r in runs:
            found = results.get(r.key, [])
            row: dict[str, Any] = {
                "label": r.label,
                "group": r.group,
                "column": r.column,
                "grid": r.grid,
                "folder": folders[r.key],
                "seeds": [res["seed"] for res in found],
                "epochs": [res.get("epochs_trained") for res in found],
                "seconds": [res.get("seconds") for res in found],
            }
            if study.get("kind") == "boxplot":
                from hepms.config_engine import get

                row["x"] = get(r.config, study["x"])
            for metric in METRICS:
                row[metric] = summarise([res["metrics"].get(metric) for res in found])
            reason = upstream_not_applicable(r.config)
            if reason:
                # Results made before the metric was marked n/a hold the probe under auc_tau.
                row[PROBE_AUC_TAU] = summarise([res["metrics"].get(PROBE_AUC_TAU, res["metrics"].get("auc_tau"))
                                                for res in found])
                row["auc_tau"] = None
                row["not_applicable"] = {"auc_tau": reason}
            rows.append(row)
        out[name] = {
            "kind": study.get("kind", "table"),
            "title": study.get("title", name),
            "columns": columns,
            "grid_keys": list((study.get("grid") or {}).keys()),
            "x": study.get("x"),
            "rows": rows,
        }
    return out


def _markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def _table_markdown(name: str, table: Mapping[str, Any]) -> str:
    rows, columns = table["rows"], table["columns"]
    labels: list[str] = []
    for r in rows:
        if r["label"] not in labels:
            labels.append(r["label"])
    cell = {(r["label"], r["column"]): r for r in rows}
    title = table["title"]
    text = [f"### {title}", ""]
    if table["kind"] == "boxplot":
        header = ["run", "group", table["x"] or "x", "downstream AUC (mean ± std)", "median", "min – max",
                  "upstream AUC", "trials"]
        body = []
        for r in rows:
            s = r["auc_event"]
            rng = f"{s['min']:.4f} – {s['max']:.4f}" if s["n"] else "—"
            med = f"{s['median']:.4f}" if s["n"] else "—"
            col = f" [{r['column']}]" if r["column"] else ""
            body.append([r["label"] + col, str(r["group"] or ""), str(r.get("x")), fmt_mean_std(s), med, rng,
                         fmt_mean_std(r["auc_tau"]), str(s["n"])])
        text.append(_markdown_table(header, body))
    else:
        header = ["run"]
        for c in columns:
            prefix = f"{c}: " if c else ""
            header += [f"{prefix}upstream AUC", f"{prefix}downstream AUC", f"{prefix}trials"]
        body = []
        for label in labels:
            cells = [label]
            for c in columns:
                r = cell.get((label, c))
                if r is None:
                    cells += ["—", "—", "0"]
                else:
                    cells += [fmt_mean_std(r["auc_tau"]), fmt_mean_std(r["auc_event"]), str(r["auc_event"]["n"])]
            body.append(cells)
        text.append(_markdown_table(header, body))
    if table["grid_keys"]:
        text += ["", f"Columns: {', '.join(table['grid_keys'])}."]
    text += ["", "Test-set AUC, mean ± sample standard deviation over the finished trials."]
    if any(r["auc_tau"] is None for r in rows):
        text += ["", NOT_APPLICABLE_NOTE]
    return "\n".join(text) + "\n"


def _comparison_markdown(table: Mapping[str, Any], reference: Mapping[str, Any]) -> str:
    values = reference.get("values", {}) or {}
    text = [f"### {table['title']}: ours vs the study", ""]
    header = ["run", "column", "upstream AUC (ours)", "upstream AUC (study)", "downstream AUC (ours)",
              "downstream AUC (study)", "trials (ours)"]
    body = []
    for r in table["rows"]:
        ref = (values.get(r["label"]) or {})
        ref = ref.get(r["column"], ref) if r["column"] else ref
        body.append([r["label"], r["column"] or "", fmt_mean_std(r["auc_tau"]), str(ref.get("auc_tau", "—")),
                     fmt_mean_std(r["auc_event"]), str(ref.get("auc_event", "—")), str(r["auc_event"]["n"])])
    text.append(_markdown_table(header, body))
    if reference.get("source"):
        text += ["", f"Study numbers: {reference['source']}"]
    if any(r["auc_tau"] is None for r in table["rows"]):
        text += ["", NOT_APPLICABLE_NOTE + " The study's number in such a row is of the same untrained head."]
    return "\n".join(text) + "\n"


def write_tables(
    outdir: Path, tables: Mapping[str, Mapping[str, Any]], reference: Optional[Mapping[str, Any]] = None
) -> list[Path]:
    """``<study>.md`` + ``<study>.json`` per study, ``<study>_vs_study.md`` where a reference
    exists, and ``tables.json`` with everything. Returns the written paths."""
    from hepms.study.runner import write_json

    outdir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    stems: dict[str, str] = {}
    for name, table in tables.items():
        # Study names come from the configuration: slugged, never a path (see output_path).
        stem = slug(name, "study", 120)
        if stems.setdefault(stem, name) != name:
            raise ConfigError(f"scan.studies: {stems[stem]!r} and {name!r} give the same file name "
                              f"{stem!r}; rename one of them")
        md = output_path(outdir, stem, ".md")
        write_text_atomic(md, _table_markdown(name, table))
        write_json(output_path(outdir, stem, ".json"), table)
        written += [md, output_path(outdir, stem, ".json")]
        if reference and name in reference:
            cmp = output_path(outdir, f"{stem}_vs_study", ".md")
            write_text_atomic(cmp, _comparison_markdown(table, reference[name]))
            written.append(cmp)
    write_json(outdir / "tables.json", tables)
    written.append(outdir / "tables.json")
    return written
