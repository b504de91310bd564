"""The selection study: methods x task weights ``v1`` x seeds, final numbers on the test split.

For every seed the candidates are pre-trained once on truth (pre-training does not depend on
``v1`` or on the method, so sharing it is exact and saves most of the time); then for every ``v1``
and method the selection runs on the training and validation splits only. Only after a method
has returned its chain is that chain evaluated on the test split, once: Task-1 and Task-2 losses,
Task-2 AUC, the Task-1 metric (MSE or tau AUC) and, for the calibration task, the fraction of
Task-1 outputs within two sigma of the Gaussian-process reference.

Outputs in ``out_dir``: ``results.json`` (config, its settings hash, the sample's fingerprint,
machine, rows), ``results.csv`` (rows),
``runs/<method>_v1-<v1>_seed-<seed>.json`` (each selection's full record),
``runs/<method>_v1-<v1>_seed-<seed>.model.pt`` (the selected, trained chain as a model file:
:func:`hepms.model_file.load_model`) and the plots.

With ``study.records`` (:mod:`hepms.select.records`) every finished selection is also written
there as a small committable record, and a selection whose record matches (settings hash and data
fingerprint) is taken from it instead of being run: its row joins the results and its record is
copied to ``runs/``, without a model file. A seed whose selections are all recorded is not
pre-trained. At the ends of the ``v1`` scan, :func:`mark_not_applicable` marks in each row what
has no meaning there.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch

from hepms.select import select
from hepms.select.config import SelectionConfig
from hepms.select.data import SelectionData, prepare_selection_data
from hepms.atomic import write_text_atomic
from hepms.config_engine import settings_hash
from hepms.model_file import save_model
from hepms.select.space import CHAIN_BUILDER, SearchSpace, chain_config
from hepms.select.training import evaluate_chain, json_ready, pretrain
from hepms.select.validity import chain_upstream_outputs, fit_reference, validity_fraction

log = logging.getLogger(__name__)

__all__ = ["run_study", "mark_not_applicable", "record_content", "load_events", "prepare_study_data", "first_events_per_process", "study_fingerprint", "rows_csv"]

PathLike = Union[str, Path]


def load_events(config: SelectionConfig, out_dir: PathLike, progress: bool = True):
    """The study's awkward events: read ``data.path``, or generate ``data.generate`` into
    ``out_dir/events`` (reused when a previous run generated the same settings there)."""
    from hepms.generate import generate, read_events

    data = config.data
    limit = data.get("max_events")
    if data.get("path"):
        # entry_stop: no file holds more than max_events of one process, so no more is read.
        return first_events_per_process(read_events(
            data["path"], max_jets=data["max_jets"], max_constituents=data["max_constituents"], entry_stop=limit
        ), limit)
    folder = Path(out_dir) / "events"
    settings = dict(data["generate"])
    stamp = folder / "select_generate.json"
    if stamp.is_file() and (folder / "manifest.json").is_file():
        if json.loads(stamp.read_text()) == settings:
            log.info("reusing the events generated in %s", folder)
            return first_events_per_process(
                read_events(folder, max_jets=data["max_jets"], max_constituents=data["max_constituents"]), limit)
    kwargs = dict(settings)
    kwargs.setdefault("workers", 1)
    log.info("generating events into %s: %s", folder, kwargs)
    generate(folder, progress=progress, **kwargs)
    stamp.write_text(json.dumps(settings, sort_keys=True))
    return first_events_per_process(
        read_events(folder, max_jets=data["max_jets"], max_constituents=data["max_constituents"]), limit)


def first_events_per_process(events, max_events: Optional[int]):
    """The first ``max_events`` events of each process (``events.label``: 1 = H, 0 = Z) in file
    order, in their original order (``data.max_events``; None: all). Deterministic, and taken
    before the train/validation/test split, which then applies to the kept events."""
    if max_events is None:
        return events
    if isinstance(max_events, bool) or not isinstance(max_events, int) or max_events < 1:
        raise ValueError(f"data.max_events must be a positive integer or null, got {max_events!r}")
    import numpy as np

    labels = np.asarray(events.label)
    keep = np.zeros(len(labels), dtype=bool)
    for value in np.unique(labels):
        keep[np.flatnonzero(labels == value)[:max_events]] = True
    log.info("data.max_events = %d: keeping %d of %d events", max_events, int(keep.sum()), len(labels))
    return events[keep]


def prepare_study_data(config: SelectionConfig, events) -> SelectionData:
    """Build, split and standardise the events as the config says."""
    data = config.data
    return prepare_selection_data(
        events,
        fractions=tuple(data["fractions"]),
        seed=int(data["split_seed"]),
        max_jets=int(data["max_jets"]),
        max_constituents=int(data["max_constituents"]),
        jet_features=tuple(data["jet_features"]),
    )


def study_fingerprint(config: SelectionConfig, out: PathLike) -> Optional[str]:
    """The fingerprint of the sample the events came from (``data.path``, or the events generated
    into ``out/events``); None when it has no manifest (events passed in by the caller). It hashes
    the sample's arrays: compute it once per study."""
    from hepms.study.dataset import sample_fingerprint

    path = Path(config.data["path"]) if config.data.get("path") else Path(out) / "events"
    return sample_fingerprint(path) if (path / "manifest.json").is_file() else None


def _fmt(v: float) -> str:
    return f"{v:g}"


def run_study(
    config: SelectionConfig,
    out_dir: PathLike,
    *,
    prepared: Optional[SelectionData] = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run every (seed, v1, method) selection of ``config`` and write the results.

    Args:
        config: the study configuration.
        out_dir: output folder (created).
        prepared: already prepared data (None: load or generate events as configured).
        progress: progress bars.

    Returns:
        ``{"config", "machine", "rows", "files"}`` as written to ``results.json``.
    """
    from hepms._machine import describe, git_commit
    from hepms.select.records import load_selection_records, write_selection_record

    out = Path(out_dir)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(int(config.threads))
    started = time.perf_counter()
    cpu_started = time.process_time()
    # The commit of the code that runs, taken once: records written later name it, not whatever
    # the checkout has moved to meanwhile.
    commit = git_commit()
    if prepared is None:
        prepared = prepare_study_data(config, load_events(config, out, progress))
    space = SearchSpace.create(prepared, config.task, **config.candidates)
    kinematics = prepared.kinematics()
    # The splits are named here once: selection gets train + val, the test split is only read
    # by evaluate_chain / the validity check after a selection has returned.
    train, val, test = prepared.train, prepared.val, prepared.test
    fingerprint = study_fingerprint(config, out)
    nsigma = config.validity["nsigma"]

    planned = [(method, float(v1), int(seed)) for seed in config.seeds for v1 in config.v1 for method in config.methods]
    root = Path(config.records) if config.records else None
    if root is not None and fingerprint is None:
        log.warning("study.records is set, but the events have no data fingerprint (no manifest): "
                    "records are neither read nor written")
        root = None
    done = load_selection_records(root, config, fingerprint, planned)
    if root is not None:
        log.info("%d of %d selections recorded in %s", len(done), len(planned), root)

    reference = None
    rows: list[dict] = []
    files: list[str] = []
    counts = {"run": 0, "recorded": 0}
    for seed in config.seeds:
        base = config.settings.replace(seed=int(seed), progress=progress)
        shared = None
        if any((m, v, s) not in done for m, v, s in planned if s == int(seed)):
            # Pre-training only for a seed with work left; the GP reference once, when first needed.
            shared = pretrain(space, train, val, base)
            log.info("seed %d: pre-training %.1f s", seed, shared.seconds)
            if reference is None:
                reference = fit_reference(space.task, kinematics, train, config.validity)
                if reference is not None:
                    gp_mean, gp_sigma, tau_mask = reference.predict(test)
        for v1 in config.v1:
            for method in config.methods:
                stem = f"{method}_v1-{_fmt(v1)}_seed-{seed}"
                recorded = done.get((method, float(v1), int(seed)))
                if recorded is not None:
                    counts["recorded"] += 1
                    rows.append(recorded["row"])
                    write_text_atomic(out / "runs" / f"{stem}.json", json.dumps(json_ready(recorded), indent=1))
                    alpha_history = recorded.get("alpha_history") or []
                    log.info("%s v1=%g seed=%d: recorded in %s", method, v1, seed, recorded["_record"])
                else:
                    counts["run"] += 1
                    settings = base.replace(v1=float(v1))
                    result = select(method, space, train, val, settings, pretrained=shared)
                    evaluation_metrics = evaluate_chain(result.chain, test, kinematics, float(v1),
                                                        settings.eval_batch_size)
                    row: dict[str, Any] = {
                        "method": method,
                        "v1": float(v1),
                        "seed": int(seed),
                        "upstream": result.upstream,
                        "downstream": result.downstream,
                        "seconds": result.timings.get("total", math.nan),
                        "pretrain_seconds": shared.seconds,
                    }
                    row.update({f"val_{k}": v for k, v in result.val_metrics.items()})
                    row.update({f"test_{k}": v for k, v in evaluation_metrics.items()})
                    if reference is not None:
                        u = chain_upstream_outputs(result.chain, test, kinematics, settings.eval_batch_size)
                        row.update({f"test_{k}": v for k, v in
                                    validity_fraction(u, gp_mean, gp_sigma, tau_mask, nsigma).items()})
                    mark_not_applicable(row, space, settings.criterion)
                    rows.append(row)
                    record = {**result.to_dict(), "evaluation_metrics": evaluation_metrics, "row": row}
                    alpha_history = result.alpha_history
                    save_model(
                        out / "runs" / f"{stem}.model.pt", result.chain, prepared.spec, prepared.scaler,
                        builder=CHAIN_BUILDER,
                        config=chain_config(space, result.upstream, result.downstream),
                        data_fingerprint=fingerprint,
                        settings_hash=settings_hash({"config": config.to_dict(), "method": method,
                                                     "v1": float(v1), "seed": int(seed)}),
                        producer="hepms select",
                        extra={"method": method, "v1": float(v1), "seed": int(seed),
                               "upstream": result.upstream, "downstream": result.downstream},
                    )
                    write_text_atomic(out / "runs" / f"{stem}.json", json.dumps(json_ready(record), indent=1))
                    if root is not None:
                        write_selection_record(root, config, fingerprint, record_content(record),
                                               commit=commit, threads=torch.get_num_threads())
                    log.info("%s v1=%g seed=%d: %s | %s, test AUC %s", method, v1, seed,
                             result.upstream, result.downstream, evaluation_metrics["auc_event"])
                if config.plots and method == "darts" and seed == config.seeds[0] and alpha_history:
                    from hepms.select.plots import plot_alpha_history

                    files.append(str(plot_alpha_history(
                        alpha_history, out / f"alpha_v1-{_fmt(v1)}.png", rf"($v_1$ = {v1:g})",
                        caption=f"DARTS softmax(alpha) per epoch, v1 = {v1:g}, seed {seed} (one selection); "
                                "dotted: uniform weight 1/N")))
    if config.plots and rows:
        files += _study_plots(rows, out, space.task.name, reference is not None)
    summary = {
        "config": config.to_dict(),
        # What produced the rows: the configuration's hash and the sample's fingerprint (None for
        # events passed in without a manifest).
        "settings_hash": settings_hash(config.to_dict()),
        "data_fingerprint": fingerprint,
        "machine": describe(config.settings.device),
        "hepms_commit": commit,
        # This invocation's cost: selections found in study.records cost nothing here (their rows
        # carry the seconds of the run that made them).
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu_started,
        "selections": {**counts, "records": str(root) if root is not None else None},
        "rows": rows,
        "files": files,
    }
    write_text_atomic(out / "results.json", json.dumps(json_ready(summary), indent=1))
    if rows:
        write_text_atomic(out / "results.csv", rows_csv(rows))
    return summary


#: Row metrics of the Task-2 model (validation and test).
_TASK2_METRICS = ("val_loss2", "val_auc_event", "test_loss2", "test_auc_event")


def mark_not_applicable(row: dict[str, Any], space: SearchSpace, criterion: str) -> None:
    """Mark in ``row`` what has no meaning at the ends of the ``v1`` scan (in place).

    At ``v1 = 1`` Task 2 gets no loss during the selection: its weights keep their pre-training on
    truth, DARTS's Task-2 architecture weights get no gradient (they stay uniform) and the loss
    criterion of grid search and SPOS cannot tell the Task-2 models apart. The Task-2 model of
    the chain is then no selection (``downstream_selected: False``; with ``criterion: auc`` grid
    search and SPOS do choose it, by its validation AUC). Its metrics stay numbers when it is a
    pre-trained model (a trained model, evaluated on calibrated input), and become None when it is
    a dummy, which was never trained. At ``v1 = 0`` nothing is dropped: Task 1 gets no loss of its
    own, but it was pre-trained on truth and is trained through Task 2's loss, so both its choice
    and its MSE / GP validity (how much of the calibration survives) mean something.
    """
    from hepms.select.candidates import is_dummy

    chosen = not (row["v1"] == 1.0 and (row["method"] == "darts" or criterion != "auc"))
    row["downstream_selected"] = chosen
    dropped = []
    if row["v1"] == 1.0 and is_dummy(space.downstream[row["downstream"]]):
        dropped = [k for k in _TASK2_METRICS if k in row]
        row.update(dict.fromkeys(dropped))
    row["not_applicable"] = ";".join(dropped + ([] if chosen else ["downstream_choice"]))


def record_content(record: Mapping[str, Any]) -> dict[str, Any]:
    """What a selection record keeps of a selection's full record (``runs/<stem>.json``): what the
    summary reads, small enough to commit. The per-epoch history (most of the bytes) becomes the
    epochs per phase; the search settings go (the record carries the settings that determine it)."""
    from hepms.select.summary import phase_epochs

    out = {k: v for k, v in record.items() if k not in ("settings", "history")}
    out["epochs"] = phase_epochs(record.get("history") or [])
    return out


def _study_plots(rows: list[dict], out: Path, task: str, validity: bool) -> list[str]:
    from hepms.select.plots import plot_metric_vs_v1, plot_selected_pairs

    files = [str(plot_selected_pairs(rows, out / "selected_pairs.png"))]
    files.append(str(plot_metric_vs_v1(rows, "test_auc_event", out / "auc_vs_v1.png", "Task 2 AUC (test)")))
    if task == "calibration":
        files.append(str(plot_metric_vs_v1(rows, "test_mse", out / "mse_vs_v1.png", "Task 1 MSE (test)")))
    else:
        files.append(str(plot_metric_vs_v1(rows, "test_auc_tau", out / "tau_auc_vs_v1.png", "Task 1 AUC (test)")))
    if validity:
        files.append(str(plot_metric_vs_v1(
            rows, "test_validity", out / "validity_vs_v1.png", r"fraction within GP 2$\sigma$ (test)"
        )))
    return files


def rows_csv(rows: Sequence[Mapping]) -> str:
    """Result rows as CSV text: one column per key, in the order the keys first appear."""
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
