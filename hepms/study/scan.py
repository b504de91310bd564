"""Repeated trials over the studies of a configuration, resumable, with tables and figures.

Layout of a scan's run directory::

    config.yaml                     the configuration (after overrides) of the latest invocation
    manifest.json                   versions, machine, data, every invocation and what it did
    cache/dataset-<hash>.pt         the built dataset
    trials/<run>-<hash>/trial_NNN/  checkpoint.pt, metrics.csv/json, predictions.npz, result.json
    tables/                         <study>.md / .json, <study>_vs_study.md, tables.json
    figures/                        PDF + PNG

Trials run trial-major (trial 0 of every configuration, then trial 1, ...), so a scan stopped at
any point has the most configurations covered. A trial folder with a valid ``result.json`` (made
from the same sample) is skipped; one with only a checkpoint continues from it. A lock file keeps
two scans on the same directory from training the same trial at once. With ``scan.trial_records``
a trial whose committed record (:mod:`hepms.study.records`: same settings hash, seed and data
fingerprint) exists is done as well, and every finished trial adds its record there.

With ``dask="tcp://scheduler:8786"`` (``hepms scan --dask ...``) or ``dask="local:N"`` the trials
run as ``dask.distributed`` tasks (:func:`trial_task`): each worker loads the dataset from the
run directory's cache (so the run directory must be on a file system the workers share), takes
the trial's lock, trains into the same folder and releases the lock; the client records the
results, the manifest and the tables. A worker that dies leaves a checkpoint and a lock whose
process is gone: the next attempt (dask's retry, or the next scan) takes it over and resumes.
"""
from __future__ import annotations

import contextlib
import logging
import os
import platform
import socket
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

from hepms._machine import git_commit
from hepms.config_engine import dump_yaml, settings_hash
from hepms.generate.io import UnreadableFileError
from hepms.study.dataset import PreparedData, prepare_data
from hepms.study.plan import PlannedRun, ensure_inside, expand_studies, unique_runs
from hepms.study.records import load_records, records_dir, write_record
from hepms.study.runner import (check_trainer_device, format_metric, load_predictions, read_result, run_trial,
                                upstream_not_applicable, versions, write_json)

log = logging.getLogger(__name__)

__all__ = ["run_scan", "collect_results", "build_outputs", "trial_folder", "config_folder", "update_manifest",
           "exit_on_sigterm", "trial_task", "describe_trial", "dask_client"]


def describe_trial(run: PlannedRun, trial: int, result: Mapping[str, Any]) -> str:
    """One line for a finished trial: ``study/label [column] trial t: AUC tau ..., event ...``."""
    m = result["metrics"]
    return (f"{run.name} trial {trial}: AUC tau {format_metric(m.get('auc_tau'))}, event "
            f"{format_metric(m.get('auc_event'))} ({result.get('epochs_trained')} epochs, "
            f"{result.get('seconds', 0.0):.0f} s)")


def exit_on_sigterm() -> None:
    """Turn SIGTERM (``kill``, a batch system's time limit) into ``SystemExit``, so that a stopped
    scan releases its trial lock and records itself as interrupted; the trial resumes next time."""
    import signal

    def stop(signum: int, frame: Any) -> None:  # noqa: ARG001
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def config_folder(run_dir: Path, run: PlannedRun) -> Path:
    """The folder of ``run``'s configuration: found by its settings hash when it exists (a shared
    configuration keeps the folder it got first, whichever study or label names it now),
    else named after ``run``."""
    trials = Path(run_dir) / "trials"
    existing = sorted(trials.glob(f"*-{run.key[:8]}")) if trials.is_dir() else []
    return ensure_inside(run_dir, existing[0] if existing else trials / run.folder)


def trial_folder(run_dir: Path, run: PlannedRun, trial: int) -> Path:
    return config_folder(run_dir, run) / f"trial_{trial:03d}"


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second (the time stamps of manifests)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def update_manifest(run_dir: Path, kind: str, cfg: Mapping[str, Any], **fields: Any) -> dict[str, Any]:
    """Create or update ``manifest.json``: static facts plus ``fields`` (merged at the top level;
    ``invocation`` entries are appended to ``invocations``). Safe with concurrent processes."""
    from hepms._machine import cpu_model

    path = Path(run_dir) / "manifest.json"
    static = {
        "kind": kind,
        "config_sha256_12": settings_hash(cfg),
        "versions": versions(),
        "machine": {"host": socket.gethostname(), "platform": platform.platform(), "cpu": cpu_model(),
                    "cpu_count": os.cpu_count()},
        "git_commit": git_commit(),
    }
    # Read-modify-write under an exclusive lock: scans sharing the directory would otherwise lose
    # each other's updates. write_json replaces the file atomically.
    with _exclusive(Path(run_dir) / ".manifest.lock"):
        return _update_manifest(path, kind, static, fields)


def _update_manifest(path: Path, kind: str, static: Mapping[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    import json

    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        manifest = None
    except (OSError, ValueError) as error:
        log.warning("%s is unreadable (%s): starting a new manifest", path, error)
        manifest = None
    if not isinstance(manifest, dict):
        manifest = {"format": "hepms.run/1", "kind": kind, "created_utc": utc_now(), "invocations": []}
    manifest.update(static)
    manifest["updated_utc"] = utc_now()
    invocation = fields.pop("invocation", None)
    if invocation is not None:
        invocations = manifest.setdefault("invocations", [])
        for entry in invocations:
            # A scan killed without a chance to record it (SIGKILL, power loss) stays "running":
            # mark it once its process is gone.
            pid = str(entry.get("id", "")).split("-")[0]
            if entry.get("status") == "running" and pid.isdigit() and entry.get("host", socket.gethostname()) \
                    == socket.gethostname() and not _pid_alive(int(pid)):
                entry["status"] = "killed"
        same = [i for i, entry in enumerate(invocations) if entry.get("id") == invocation.get("id")]
        if same:  # several scans may share the directory: update this one's entry in place
            invocations[same[-1]] = invocation
        else:
            invocations.append(invocation)
    manifest.update(fields)
    write_json(path, manifest)
    return manifest


# ----------------------------------------------------------------------------------------------
# Locks
# ----------------------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created, never deleted) for the block. The kernel
    releases it when the process dies, so it can never go stale."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


_LOCK = "lock"
# A lock file is created with its full content (link of a written temporary file); one that
# cannot be parsed comes from elsewhere (an older hepms wrote it in two steps) and is treated as
# stale only once it is this old.
_UNPARSEABLE_STALE_SECONDS = 300.0
# While a trial trains, its lock's modification time is refreshed this often (a heartbeat) ...
_HEARTBEAT_SECONDS = 60.0
# ... so that a lock of another host (a batch node, a dask worker elsewhere: its process cannot be
# checked from here) that has not been refreshed for this long belongs to a process that is gone.
_REMOTE_STALE_SECONDS = 900.0


_OWNERS: dict[int, str] = {}


def _lock_owner() -> str:
    """This process's lock line: host, pid and a random token, so that a recycled pid never
    matches an old lock (keyed by pid: a forked child is another owner)."""
    pid = os.getpid()
    return _OWNERS.setdefault(pid, f"{socket.gethostname()} {pid} {uuid.uuid4().hex[:12]}")


def _lock_is_stale(lock: Path) -> bool:
    """True when ``lock`` belongs to a process of this host that no longer runs (a killed scan), or
    to another host and has had no heartbeat for ``_REMOTE_STALE_SECONDS`` (its process cannot be
    checked from here)."""
    try:
        text = lock.read_text()
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return False  # gone already: the next link attempt decides
    except OSError:
        return False
    parts = text.split()
    if len(parts) < 2 or not parts[1].isdigit():
        return age > _UNPARSEABLE_STALE_SECONDS
    if parts[0] != socket.gethostname():
        return age > _REMOTE_STALE_SECONDS  # no heartbeat for that long: its process is gone
    return not _pid_alive(int(parts[1]))


@contextlib.contextmanager
def _heartbeat(folder: Path) -> Iterator[None]:
    """Refresh ``folder/lock``'s modification time every ``_HEARTBEAT_SECONDS`` during the block
    (a daemon thread), so that scans on other hosts can tell a live lock from a dead one."""
    import threading

    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(_HEARTBEAT_SECONDS):
            try:
                os.utime(folder / _LOCK)
            except OSError:
                return

    thread = threading.Thread(target=beat, name=f"hepms-lock-heartbeat-{folder.name}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _acquire(folder: Path) -> bool:
    """Create ``folder/lock`` for this process; False while another live process holds it.

    The lock appears atomically with its content: the owner line is written to a temporary file
    first and hard-linked to ``lock`` (``link`` fails when ``lock`` exists, so exactly one process
    wins). A stale lock (its process is gone) is taken over under a ``flock`` guard, so two
    processes can never both remove it and both succeed.
    """
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / _LOCK
    me = _lock_owner()
    tmp = folder / f".lock.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    tmp.write_text(me)
    try:
        try:
            os.link(tmp, lock)
            return True
        except FileExistsError:
            pass
        with _exclusive(folder / ".lock.guard"):
            # Only takeovers remove another process's lock, and they are serialised here: a lock
            # found stale cannot turn into a live one before we remove it.
            if not _lock_is_stale(lock):
                return False
            log.info("%s: taking over the lock of a process that no longer runs", folder)
            lock.unlink(missing_ok=True)
            try:
                os.link(tmp, lock)
                return True
            except FileExistsError:
                return False  # a fresh acquirer won between unlink and link: it holds the lock
    finally:
        tmp.unlink(missing_ok=True)


def _release(folder: Path) -> None:
    """Remove ``folder/lock`` if this process holds it (never another process's lock)."""
    lock = folder / _LOCK
    try:
        if lock.read_text() == _lock_owner():
            lock.unlink()
    except FileNotFoundError:
        pass


# ----------------------------------------------------------------------------------------------
# The scan
# ----------------------------------------------------------------------------------------------
def collect_results(
    run_dir: Path,
    planned: Sequence[PlannedRun],
    fingerprint: Optional[str],
    seed: Optional[int] = None,
    records: Optional[Mapping[Any, Mapping[str, Any]]] = None,
) -> dict[str, list[dict[str, Any]]]:
    """Finished results per run key: every ``trial_*`` folder with a valid result of the sample
    ``fingerprint`` (None: any sample) and, when ``seed`` (``scan.seed``) is given, of the seed
    ``seed + trial``, in trial order. ``records`` (:func:`hepms.study.records.load_records`) add
    the trials finished elsewhere (same run key, data fingerprint, and a seed ``>= seed``) that
    have no local result; local results carry ``_folder``, records ``_record``."""
    out: dict[str, list[dict[str, Any]]] = {}
    for run in unique_runs(planned):
        folder = config_folder(run_dir, run)
        found: dict[int, dict[str, Any]] = {}
        for trial_dir in sorted(folder.glob("trial_*")) if folder.is_dir() else []:
            number = trial_dir.name[len("trial_"):]
            trial_seed = seed + int(number) if seed is not None and number.isdigit() else None
            result = read_result(trial_dir, fingerprint, trial_seed)
            if result is not None:
                result["_folder"] = str(trial_dir)
                found[int(result["seed"])] = result
        if records and fingerprint is not None:
            for (key, record_seed, record_fp), record in records.items():
                if key == run.key and record_fp == fingerprint and (seed is None or record_seed >= seed):
                    found.setdefault(record_seed, dict(record))
        out[run.key] = [found[k] for k in sorted(found)]
    return out


def dask_client(spec: str) -> tuple[Any, Any]:
    """``(client, cluster)`` for ``--dask``: ``local:N`` starts a ``LocalCluster`` of N worker
    processes with one thread each and no worker time-to-live (a paused worker is not restarted;
    ``cluster`` is then closed by the caller); anything else is the address of a running
    scheduler, used with its own configuration (``cluster`` is None).

    Raises:
        ConfigError: a malformed ``local:N``, or dask.distributed is not installed.
    """
    from distributed import Client, LocalCluster

    workers = _local_workers(spec)
    # The console policy: other libraries' messages at WARNING (distributed sets its loggers to
    # INFO when imported, and they reach the root handler). hepms -v shows them.
    if not logging.getLogger("hepms").isEnabledFor(logging.DEBUG):
        logging.getLogger("distributed").setLevel(logging.WARNING)
    if workers is not None:
        # Processes, one thread each: torch releases the GIL only partly, and a trial per process
        # keeps each trial's thread count what the configuration says. The dashboard on a free
        # port: several scans may run at once.
        # Without distributed's default MALLOC_TRIM_THRESHOLD_=65536 for the workers: setting it
        # also fixes glibc's mmap threshold at 128 KiB, so every [rows, 32] temporary of a
        # training step (~1 MB) is mapped, page-faulted and unmapped again; on the study's full
        # preset that more than doubled the CPU time of a trial in a worker
        # (benchmarks/train.md, "Study throughput"). None unsets it (distributed's convention).
        # No worker TTL (distributed.scheduler.worker-ttl, 5 minutes by default): a worker that
        # misses heartbeats that long (a paused process, a laptop asleep) would be restarted and
        # its trial's progress since the last checkpoint lost; a local worker that really dies is
        # seen by its nanny. The scheduler reads the setting when it starts (here, in-process);
        # a given scheduler address keeps its own configuration.
        import dask

        with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
                              "distributed.scheduler.worker-ttl": None}):
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address=":0")
        client = Client(cluster)
    else:
        cluster, client = None, Client(spec)
    log.info("dask: scheduler %s, dashboard %s", client.scheduler.address, client.dashboard_link)
    return client, cluster


def _local_workers(spec: str) -> Optional[int]:
    """N of ``local:N`` (None for a scheduler address); checks that dask.distributed exists.

    Raises:
        ConfigError: a malformed ``local:N``, or dask.distributed is not installed.
    """
    import importlib.util

    from hepms.config import ConfigError

    if importlib.util.find_spec("distributed") is None:
        raise ConfigError("--dask: needs dask.distributed (pip install 'hepms[dask]')")
    if not (spec.startswith("local:") or spec == "local"):
        return None
    count = spec.partition(":")[2]
    if not count.isdigit() or int(count) < 1:
        raise ConfigError(f"--dask: {spec!r}; expected local:N with N >= 1 worker processes, or a scheduler address")
    return int(count)


# Per worker process: the prepared data of a run directory's cache, loaded once.
_WORKER_DATA: dict[str, PreparedData] = {}


def _worker_data(cfg: Mapping[str, Any], run_dir: Path, fingerprint: str) -> PreparedData:
    """The data of ``cfg`` in this worker process, prepared once; prepared again when the client
    has other data (a long-lived worker, a sample regenerated since)."""
    key = settings_hash({"data": cfg["data"], "run_dir": str(run_dir)})
    if key not in _WORKER_DATA or _WORKER_DATA[key].fingerprint != fingerprint:
        _WORKER_DATA[key] = prepare_data(cfg, Path(run_dir) / "cache", progress=False)
    return _WORKER_DATA[key]


def _train_locked(
    run_cfg: Mapping[str, Any], data: PreparedData, folder: Path, seed: int, save: bool, progress: bool,
    extra: Mapping[str, Any],
) -> dict[str, Any]:
    """Train one trial under its lock: ``{"status": "trained", "result": ...}``, or ``busy``
    (another process holds the lock) or ``skipped`` (finished meanwhile)."""
    if not _acquire(folder):
        log.info("%s is being trained by another scan: skipped", folder)
        return {"status": "busy"}
    try:
        if read_result(folder, data.fingerprint, seed) is not None:
            return {"status": "skipped"}  # another scan finished it between our first look and the lock
        with _heartbeat(folder):
            result = run_trial(run_cfg, data, folder, seed, save_predictions_file=save, progress=progress,
                               extra=extra)
        return {"status": "trained", "result": result}
    finally:
        _release(folder)


def trial_task(
    cfg: Mapping[str, Any], run_cfg: Mapping[str, Any], run_dir: str, folder: str, seed: int, save: bool,
    extra: Mapping[str, Any], fingerprint: str,
) -> dict[str, Any]:
    """One trial as a ``dask.distributed`` task (module-level, so it pickles by reference).

    Args:
        cfg: the scan's configuration (its ``data`` section and ``threads``), with absolute paths.
        run_cfg: the configuration of the run.
        run_dir, folder: the run directory and the trial's folder (absolute, on a shared file system).
        seed, save, extra: as :func:`~hepms.study.runner.run_trial`.
        fingerprint: the client's data fingerprint; a worker that sees other data refuses to train.

    Returns:
        As ``_train_locked``, plus the worker's host name.
    """
    if cfg.get("threads"):
        import torch

        torch.set_num_threads(int(cfg["threads"]))
    data = _worker_data(cfg, Path(run_dir), fingerprint)
    if data.fingerprint != fingerprint:
        raise RuntimeError(f"worker {socket.gethostname()}: the data at {cfg['data']['path']} has fingerprint "
                           f"{data.fingerprint}, the scan's client has {fingerprint}: the workers must see the "
                           "same sample and run directory as the client")
    out = _train_locked(run_cfg, data, Path(folder), seed, save, False, extra)
    out["host"] = socket.gethostname()
    return out


def run_scan(
    cfg: Mapping[str, Any],
    run_dir: Optional[Path] = None,
    *,
    trials: Optional[int] = None,
    only: Sequence[str] = (),
    max_trials: Optional[int] = None,
    plots: Optional[bool] = None,
    progress: Optional[bool] = None,
    command: Optional[Sequence[str]] = None,
    on_trial: Optional[Callable[[PlannedRun, int, dict], None]] = None,
    dask: Optional[str] = None,
) -> dict[str, Any]:
    """Run the missing trials of every study in ``cfg``, then write tables (and figures).

    Args:
        cfg: a validated configuration with ``scan.studies``.
        run_dir: output folder (default ``cfg["run_dir"]``).
        trials: trials per configuration (default ``scan.trials``).
        only: restrict to these studies (names), runs (``study/label``) or one grid column of a run
            (``study/label [column]``, e.g. ``loss_balancing/step-by-step [bce]``).
        max_trials: train at most this many trials in this call (then build the outputs).
        plots: draw figures (default ``scan.plots``).
        progress: progress bars (default ``cfg["progress"]``; never on dask workers).
        command: the command line, for the manifest.
        on_trial: called after each trained trial with ``(run, trial, result)``.
        dask: run the trials as dask.distributed tasks: a scheduler address, or ``local:N`` (see
            :func:`dask_client`). None: one after the other in this process.

    Returns:
        A summary: ``trained``, ``skipped``, ``busy`` (locked by another scan), ``remaining``,
        ``tables`` and ``figures`` (paths).
    """
    from hepms.config_engine import ConfigError

    for name, value in (("trials", trials), ("max_trials", max_trials)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{name}: {value!r} must be an integer >= 1")
    check_trainer_device(cfg)  # before the data are prepared (possibly generated): fail fast
    if dask:
        _local_workers(dask)  # likewise
    run_dir = Path(run_dir or cfg["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    trials = int(trials if trials is not None else cfg["scan"]["trials"])
    progress = cfg["progress"] if progress is None else progress
    planned = expand_studies(cfg)
    if not planned:
        raise ConfigError("scan.studies: empty, nothing to scan (define at least one study)")
    selected = [r for r in planned if not only or r.study in only or r.ref in only or r.name in only]
    if not selected:
        refs = sorted({r.study for r in planned} | {r.ref for r in planned} | {r.name for r in planned})
        raise ConfigError(f"--only {list(only)} matches no study or run; choose from {refs}")
    # Each configuration once, represented by its first occurrence in the whole plan (not in the
    # selection): its folder name must not depend on --only.
    wanted = {r.key for r in selected}
    todo = [r for r in unique_runs(planned) if r.key in wanted]
    for run in selected:  # a study may set trainer.device: every run's, before the first trial trains
        try:
            check_trainer_device(run.config)
        except ConfigError as error:
            raise ConfigError(f"scan.studies.{run.study} (run {run.label!r}): {error}") from None
    (run_dir / "config.yaml").write_text(dump_yaml(cfg))
    invocation = {"id": f"{os.getpid()}-{time.time():.0f}", "host": socket.gethostname(), "started_utc": utc_now(),
                  "command": list(command or sys.argv), "trials": trials, "only": list(only),
                  "trained": 0, "skipped": 0, "status": "running"}
    if dask:
        invocation["dask"] = dask
    data = prepare_data(cfg, run_dir / "cache", progress)
    update_manifest(run_dir, "scan", cfg, data=data.info, data_fingerprint=data.fingerprint,
                    configurations=len(unique_runs(planned)), invocation=invocation)
    shared = records_dir(cfg)
    records = load_records(shared)
    if records:
        log.info("%d trial records in %s", len(records), shared)
    summary: dict[str, Any] = {"trained": 0, "skipped": 0, "busy": 0, "remaining": 0}
    save_mode = cfg["scan"]["save_predictions"]
    total = trials * len(todo)
    status = "finished"

    def finished(run: PlannedRun, trial: int, result: dict[str, Any]) -> None:
        summary["trained"] += 1
        if shared is not None:
            write_record(shared, run, result)
        invocation.update(trained=summary["trained"], skipped=summary["skipped"])
        update_manifest(run_dir, "scan", cfg, invocation=invocation)
        if on_trial is not None:
            on_trial(run, trial, result)

    # The trials to train, trial-major; finished ones (here or in a record) are skipped.
    pending: list[tuple[PlannedRun, int, Path, int, bool, dict[str, Any]]] = []
    for trial in range(trials):
        for run in todo:
            folder = trial_folder(run_dir, run, trial)
            seed = cfg["scan"]["seed"] + trial
            if (run.key, seed, data.fingerprint) in records or read_result(folder, data.fingerprint, seed) is not None:
                summary["skipped"] += 1
                continue
            if max_trials is not None and len(pending) >= max_trials:
                summary["remaining"] += 1
                continue
            save = save_mode == "all" or (save_mode == "first" and trial == 0)
            extra = {"study": run.study, "label": run.label, "column": run.column, "trial": trial, "run_key": run.key}
            pending.append((run, trial, folder, seed, save, extra))
    try:
        if dask:
            _run_on_dask(dask, cfg, run_dir, data, pending, summary, total, finished)
        else:
            for run, trial, folder, seed, save, extra in pending:
                done_before = summary["trained"] + summary["skipped"]
                log.info("[%d/%d] %s trial %d", done_before + 1, total,
                         run.name, trial)
                out = _train_locked(run.config, data, folder, seed, save, progress, extra)
                if out["status"] == "trained":
                    finished(run, trial, out["result"])
                else:
                    summary[out["status"]] += 1
    except BaseException:
        status = "interrupted"
        raise
    finally:
        invocation.update(status=status, finished_utc=utc_now(), trained=summary["trained"], skipped=summary["skipped"])
        update_manifest(run_dir, "scan", cfg, invocation=invocation)
    outputs = build_outputs(cfg, run_dir, data, plots=cfg["scan"]["plots"] if plots is None else plots)
    summary.update(outputs)
    summary["total"] = total
    return summary


def _run_on_dask(
    spec: str,
    cfg: Mapping[str, Any],
    run_dir: Path,
    data: PreparedData,
    pending: Sequence[tuple[PlannedRun, int, Path, int, bool, dict[str, Any]]],
    summary: dict[str, Any],
    total: int,
    finished: Callable[[PlannedRun, int, dict[str, Any]], None],
) -> None:
    """Submit ``pending`` as :func:`trial_task` tasks (in trial-major order) and record each as it
    completes. A failed task stops the scan (as in a serial scan): the others are cancelled."""
    import copy

    if not pending:
        return
    from distributed import as_completed

    # Workers resolve relative paths against their own working directory: send absolute ones.
    task_cfg = copy.deepcopy(dict(cfg))
    task_cfg["data"]["path"] = str(Path(cfg["data"]["path"]).resolve())
    root = run_dir.resolve()
    client, cluster = dask_client(spec)
    futures: dict[Any, tuple[PlannedRun, int]] = {}
    try:
        workers = len(client.scheduler_info().get("workers", {}))
        log.info("dask: %d trials submitted (%d workers now)", len(pending), workers)
        for run, trial, folder, seed, save, extra in pending:
            key = f"hepms-trial-{run.folder}-{trial:03d}-{uuid.uuid4().hex[:6]}"  # readable on the dashboard
            future = client.submit(trial_task, task_cfg, run.config, str(root), str(folder.resolve()), seed, save,
                                   extra, data.fingerprint, key=key, pure=False)
            futures[future] = (run, trial)
        for future in as_completed(list(futures)):
            run, trial = futures[future]
            out = future.result()  # raises the task's exception (or KilledWorker after dask's retries)
            done = summary["trained"] + summary["skipped"] + summary["busy"] + 1
            log.info("[%d/%d] %s trial %d: %s on %s", done, total, run.name,
                     trial, out["status"], out.get("host", "?"))
            if out["status"] == "trained":
                finished(run, trial, out["result"])
            else:
                summary[out["status"]] += 1
    finally:
        unfinished = [f for f in futures if not f.done()]
        if unfinished:
            client.cancel(unfinished)
        try:
            client.close(timeout=60)
            if cluster is not None:
                cluster.close(timeout=60)
        except (TimeoutError, OSError) as error:
            # The trials are done and recorded; a slow shutdown must not fail the scan.
            log.warning("dask: closing the cluster failed (%s: %s); its worker processes end with this one",
                        type(error).__name__, error)


# ----------------------------------------------------------------------------------------------
# Tables and figures from the results on disk
# ----------------------------------------------------------------------------------------------
def build_outputs(
    cfg: Mapping[str, Any],
    run_dir: Path,
    data: Optional[PreparedData] = None,
    *,
    plots: bool = True,
    tables: bool = True,
) -> dict[str, Any]:
    """Tables (and figures) from the finished trials in ``run_dir``.

    Args:
        data: the prepared data (its fingerprint selects results; None: the manifest's).
    """
    import json

    from hepms.study.tables import study_tables, write_tables

    run_dir = Path(run_dir)
    planned = expand_studies(cfg)
    fingerprint = data.fingerprint if data is not None else None
    info: Mapping[str, Any] = data.info if data is not None else {}
    if data is None:
        try:
            manifest = json.loads((run_dir / "manifest.json").read_text())
            fingerprint, info = manifest.get("data_fingerprint"), manifest.get("data", {})
        except (OSError, ValueError):
            pass
    shared = records_dir(cfg)
    records = load_records(shared)
    results = collect_results(run_dir, planned, fingerprint, cfg["scan"]["seed"], records)
    if shared is not None:
        # Local trials finished before records existed (or by an older hepms) join the records.
        by_key = {r.key: r for r in unique_runs(planned)}
        added = [write_record(shared, by_key[key], res) for key, found in results.items() for res in found
                 if "_folder" in res and isinstance(res.get("data_fingerprint"), str)]
        if any(added):
            log.info("%d trial records added to %s", sum(1 for a in added if a), shared)
    out: dict[str, Any] = {"tables": [], "figures": []}
    table_data = study_tables(cfg, planned, results)
    if tables:
        from hepms.study.compare import compare, write_comparisons

        out["tables"] = [str(p) for p in write_tables(run_dir / "tables", table_data, cfg["scan"]["reference"])]
        out["tables"] += [str(p) for p in write_comparisons(run_dir / "tables", compare(cfg, planned, results))]
    if plots:
        out["figures"] = [str(p) for p in scan_figures(cfg, run_dir, planned, results, table_data, info)]
    done = {k: len(v) for k, v in results.items()}
    out["finished_trials"] = sum(done.values())
    out["configurations"] = len(done)
    out["configurations_with_results"] = sum(1 for v in done.values() if v)
    update_manifest(run_dir, "scan", cfg, results={"finished_trials": out["finished_trials"],
                                                   "configurations": out["configurations"],
                                                   "per_configuration": {r.folder: done[r.key] for r in unique_runs(planned)},
                                                   "tables_utc": utc_now()})
    return out


def _first(planned: Sequence[PlannedRun], ref: str) -> list[PlannedRun]:
    return [r for r in planned if r.ref == ref]


def scan_figures(
    cfg: Mapping[str, Any],
    run_dir: Path,
    planned: Sequence[PlannedRun],
    results: Mapping[str, Sequence[Mapping[str, Any]]],
    tables: Mapping[str, Mapping[str, Any]],
    info: Mapping[str, Any],
) -> list[Path]:
    """The scan's figures: single-run figures of the showcase run, ROC curves over trials with a
    ratio panel (reference: the first run of ``scan.figures.roc`` with curves; runs trained with
    ``w1 = 0`` are left out of the tau-ID ROC), loss weights per epoch, box plots (upstream and
    downstream AUC), latent space.
    Every figure names its configuration(s) and trial(s); ``figures/captions.json`` collects the
    captions. Figures whose inputs do not exist yet are skipped (logged)."""
    import numpy as np

    from hepms.config import get
    from hepms.study import plots
    from hepms.study.runner import roc_on_grid

    style = plots.FigureStyle.from_config(cfg["plot"], run_dir / "figures", info)
    figs = cfg["scan"]["figures"]
    written: list[Path] = []

    def predictions_of(run: PlannedRun) -> tuple[Optional[dict], Optional[Mapping[str, Any]]]:
        for res in results.get(run.key, []):
            if not res.get("_folder"):
                continue  # a result without a local folder (made elsewhere): no predictions here
            path = Path(res["_folder"]) / "predictions.npz"
            if path.is_file():
                try:
                    return load_predictions(path), res
                except UnreadableFileError as error:  # one bad file costs a figure, not the scan
                    log.warning("skipped: %s", error)
        return None, None

    def describe(run: PlannedRun) -> str:
        return f"{run.label} [{run.column}]" if run.column else run.label

    def one_trial(run: PlannedRun, res: Mapping[str, Any]) -> str:
        number = str(res.get("trial", Path(res.get("_folder", "")).name[len("trial_"):]))
        trial = f"trial {int(number)}, " if number.isdigit() else ""
        return f"{describe(run)}, {trial}seed {res['seed']}"

    if figs["showcase"]:
        for run in _first(planned, figs["showcase"])[:1]:
            pred, res = predictions_of(run)
            if pred is None:
                log.info("no predictions of %s yet: single-run figures skipped", run.ref)
                continue
            written += plots.run_figures(style, pred, cfg["evaluate"], describe(run),
                                         max_latent_points=cfg["plot"]["latent_points"], caption=one_trial(run, res))
    curves_from_predictions: dict[str, Optional[dict]] = {}

    def roc_band(run: PlannedRun, task: str) -> Optional[plots.RocBand]:
        """The ROC curves of every finished trial of ``run``: the result's ``roc`` grid, else
        computed from the trial's predictions.npz where it kept one."""
        found = results.get(run.key, [])
        rows, grid = [], None
        for res in found:
            roc = res.get("roc")
            folder = res.get("_folder")
            if (not roc or task not in roc) and folder:
                if folder not in curves_from_predictions:
                    path = Path(folder) / "predictions.npz"
                    try:
                        curves_from_predictions[folder] = roc_on_grid(load_predictions(path)) if path.is_file() else None
                    except UnreadableFileError as error:
                        log.warning("skipped: %s", error)
                        curves_from_predictions[folder] = None
                roc = curves_from_predictions[folder]
            if not roc or task not in roc:
                continue
            if grid is None:
                grid = roc["signal_efficiency"]
            if roc["signal_efficiency"] != grid:
                log.warning("%s: ROC on another grid, left out", folder or f"{run.ref} seed {res.get('seed')}")
                continue
            rows.append(roc[task]["background_efficiency"])
        if not rows:
            return None
        return plots.RocBand(run.label, np.asarray(grid), np.asarray(rows),
                             [r["metrics"].get(f"auc_{task}") for r in found], len(found))

    if figs["roc"]:
        columns: list[str] = []
        for ref in figs["roc"]:
            for r in _first(planned, ref):
                if r.column not in columns:
                    columns.append(r.column)
        for column in columns:
            runs = [run for ref in figs["roc"] for run in _first(planned, ref) if run.column == column]
            suffix = f"_{column}" if column else ""
            for task in ("tau", "event"):
                bands, left_out = [], []
                for run in runs:
                    if task == "tau" and upstream_not_applicable(run.config) is not None:
                        left_out.append(run.label)  # an untrained tau head: no tau-ID ROC to show
                        continue
                    band = roc_band(run, task)
                    if band is not None:
                        bands.append(band)
                if not bands:
                    continue
                shown = ", ".join(f"{b.label} ({len(b.background_efficiency)} of {b.trials} trials)" for b in bands)
                caption = (f"{plots.TASK_LABELS[task]['title']}{f' [{column}]' if column else ''}: {shown}; lines: mean "
                           f"rejection over trials at fixed signal efficiency, bands: {plots.BANDS['std']}; ratio panel: "
                           f"each trial's rejection over the mean rejection of {bands[0].label}, drawn as the "
                           f"mean and band of those ratios")
                if left_out:
                    caption += "; not shown (tau head gets no gradient at w1 = 0): " + ", ".join(left_out)
                written += plots.roc_band_figure(style, task, bands, f"roc_{task}_compare{suffix}",
                                                 reference=bands[0].label, caption=caption)
    for ref in figs["weights"]:
        for run in _first(planned, ref):
            found = [r for r in results.get(run.key, []) if r.get("epochs")]  # results with a per-epoch history
            if not found:
                continue
            tasks = list(found[0].get("weight_tasks", {}).get("joint", ["tau", "event"]))
            title = describe(run)
            stem = "weights_" + run.folder.rsplit("-", 1)[0]
            caption = (f"{title}, {plots.trials_text([r['seed'] for r in found])}: lines: mean over trials, "
                       f"bands: {plots.BANDS['minmax']} (trials stop at different epochs: later epochs hold fewer)")
            written += plots.weights_figure(style, [r["epochs"] for r in found], tasks, title, stem, phase="joint",
                                            caption=caption)
    for name, study in cfg["scan"]["studies"].items():
        if study.get("kind") != "boxplot":
            continue
        downstream: dict[str, dict[Any, list]] = {}
        upstream: dict[str, dict[Any, list]] = {}
        left_out: list[str] = []
        seeds: set[int] = set()
        counts = []
        for run in (r for r in planned if r.study == name):
            group = str(run.group or run.label) + (f" [{run.column}]" if run.column else "")
            x = get(run.config, study["x"])
            found = results.get(run.key, [])
            seeds.update(int(r["seed"]) for r in found)
            counts.append(len(found))
            downstream.setdefault(group, {})[x] = [r["metrics"].get("auc_event") for r in found]
            if upstream_not_applicable(run.config) is None:
                upstream.setdefault(group, {})[x] = [r["metrics"].get("auc_tau") for r in found]
            else:
                left_out.append(run.label)
        if not any(v for g in downstream.values() for v in g.values()):
            continue
        x = study.get("x") or "x"
        xlabel = "intermediate size k" if x == "model.k" else x
        n = f"{min(counts)}" if min(counts) == max(counts) else f"{min(counts)}-{max(counts)}"
        caption = (f"{study.get('title', name)}: {n} trials per configuration (seeds {min(seeds)}-{max(seeds)}); "
                   f"{plots.BOXES}")
        written += plots.boxplot_figure(style, downstream, xlabel, "downstream (H/Z) test AUC", f"{name}_boxplot",
                                        upstream=upstream, not_applicable=left_out, caption=caption)
    if figs["latent"]:
        for run in _first(planned, figs["latent"])[:1]:
            pred, res = predictions_of(run)
            if pred is not None:
                written += plots.latent_figure(style, pred["intermediate"], pred["jet_labels"],
                                               cfg["plot"]["latent_points"], "latent_space",
                                               caption=f"{one_trial(run, res)}, k = {run.config['model']['k']}")
    if written:
        write_json(style.outdir / "captions.json", {"format": "hepms.captions/1", "captions": style.captions})
    return written

