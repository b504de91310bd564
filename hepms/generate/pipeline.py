"""The generation pipeline: seed blocks, worker processes, ordered writing, manifest.

Work is cut into *blocks* of ``block_size`` events per process.  Each block has its own Pythia
instance and its own seeds, derived from the master seed, the process and the block number with
``numpy.random.SeedSequence``.  Every event is assigned to a split (train / validation / test) from a
stream of its own, and every split has its own pileup pool, cut into blocks the same way from a
stream per split: an event draws pileup only from its split's pool.  Blocks may run on any worker in
any order, and results are written in block order, so the output depends on the settings and the
seed only, never on the number of workers.

Per chunk of events inside a block: Pythia ``nextBatch`` -> stable particles + hard-tau truth ->
generator jets -> pileup overlay -> parametric detector -> anti-kT jets (FastJet) -> jet/tau and
jet/generator-jet matching -> columns.  The sample is built in a staging folder and swapped into
the output folder only when complete (:func:`_swap_in`).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import math
import multiprocessing
import os
import platform
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np

from hepms.generate.config import (
    CHUNK_EVENTS,
    GENERATION_KEYS,
    PROCESS_LABELS,
    PROCESS_RUN,
    PYTHIA_SEED_MAX,
    SPLIT_NAMES,
    GenerationConfig,
    validate_output_dir,
    validate_workers,
)
from hepms.generate.detector import DetectorConfig, simulate
from hepms.generate.io import INCOMPLETE_MARKER, MANIFEST_NAME, EventsWriter, write_json_atomic
from hepms.generate.jets import cluster, flatten_constituents
from hepms.generate.pileup import PileupPool, build_pool_block, overlay
from hepms.generate.pythia import ChargeTable, make_pythia, next_events, final_state, pythia_settings
from hepms.generate.truth import hard_taus, match, match_gen_jets

logger = logging.getLogger(__name__)

#: Keys mixed into the SeedSequence so that H, Z and the three pileup pools (one per split) never
#: share a random stream.
_STREAM_KEY = {"H": 25, "Z": 23, "pileup-train": 90, "pileup-validation": 91, "pileup-test": 92}
#: Test hook: the name of a point of :func:`generate` at which to stop and wait (a test then kills
#: the process there, see tests/test_generate.py).  Never set in normal use.
PAUSE_ENV = "HEPMS_GENERATE_PAUSE_AT"
_STALE = re.compile(r"^\.(?:staging|.+\.partial)-(\d+)$")
#: Minimum-bias events generated per pool block (one Pythia instance each; an inelastic Pythia
#: takes ~8 s to initialise, so blocks are large).
POOL_BLOCK_EVENTS = 5000


@dataclass(frozen=True)
class BlockTask:
    """One unit of work: ``n_events`` events of ``process`` (events ``first_event + 1 ...``)."""

    process: str
    block_index: int
    first_event: int
    n_events: int


def _seeds(seed: int, stream: str, block_index: int) -> tuple[int, np.random.SeedSequence]:
    """(Pythia seed, numpy SeedSequence) of one block."""
    key = [int(seed), _STREAM_KEY[stream], int(block_index)]
    pythia_seed = int(np.random.SeedSequence([*key, 0]).generate_state(1)[0]) % PYTHIA_SEED_MAX + 1
    return pythia_seed, np.random.SeedSequence([*key, 1])


def event_splits(seed: int, process: str, block_index: int, n_events: int,
                 fractions: Sequence[float]) -> np.ndarray:
    """Split (0 train, 1 validation, 2 test) of each event of a block: a random stream of its own,
    so the split depends on the seed, the process and the block only."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _STREAM_KEY[process], int(block_index), 2]))
    return rng.choice(len(fractions), size=n_events, p=np.asarray(fractions, dtype=np.float64)).astype(np.int32)


# --------------------------------------------------------------------------------------- progress

#: Where workers report finished events: a queue in worker processes, a callback in-process.
_REPORT: Any = None


def _init_worker(queue: Any) -> None:
    global _REPORT
    _REPORT = queue.put


def _report(n: int) -> None:
    if _REPORT is not None:
        _REPORT(n)


def _pause_point(name: str) -> None:
    """Test hook: stop here (announced on stderr) when ``HEPMS_GENERATE_PAUSE_AT`` names this point."""
    if os.environ.get(PAUSE_ENV) == name:
        print(f"hepms-generate paused at {name} (pid {os.getpid()})", file=sys.stderr, flush=True)
        time.sleep(600)


# ----------------------------------------------------------------------------------------- chunks


def simulate_chunk(
    pythia: Any,
    charge_of: ChargeTable,
    pool: PileupPool | None,
    n_events: int,
    config: GenerationConfig,
    rng: np.random.Generator,
    task: BlockTask,
    first_event: int,
    split: np.ndarray | None = None,
    pool_ranges: Sequence[tuple[int, int]] | None = None,
) -> dict[str, Any]:
    """Generate and reconstruct ``n_events`` events; return the columns of the output tree.

    ``split`` is the split of each event (default: all train) and ``pool_ranges`` the
    ``(first, count)`` of each split's pileup pool inside ``pool``: an event draws pileup only
    from its own split's pool.
    """
    if split is None:
        split = np.zeros(n_events, dtype=np.int32)
    events = next_events(pythia, n_events)
    signal = final_state(events, charge_of)
    taus = hard_taus(events, charge_of)
    del events  # the full records are the biggest arrays of the chunk

    # generator jets: anti-kT on the stable visible particles of the hard event, no pileup
    apdg = abs(signal["pdgId"])
    visible = signal[(apdg != 12) & (apdg != 14) & (apdg != 16)]  # INVISIBLE_PDG
    gen_cand = ak.with_field(visible, np.hypot(visible["px"], visible["py"]), "pt")
    gen_jets, _, _ = cluster(gen_cand, config.jet_r, config.gen_jet_pt_min, config.detector.calo_eta_max, False)

    n_pu, pileup, pool_index = overlay(pool, n_events, config.mu, rng, pool_ranges, split)
    particles = ak.concatenate([signal, pileup], axis=1)
    candidates = simulate(particles, config.detector, rng, config.chs)
    jets, index, rho = cluster(
        candidates, config.jet_r, config.jet_pt_min, config.jet_eta_max, config.jet_pileup_subtraction
    )
    constituents, jet_idx = flatten_constituents(candidates, index)
    jet_tau, tau_jet = match(jets, taus, config.match_dr)
    jet_gen = match_gen_jets(jets, gen_jets, config.gen_match_dr)

    matched = ak.mask(jet_tau, jet_tau >= 0)

    def from_tau(field: str, fill: float) -> ak.Array:
        return ak.fill_none(taus[field][matched], fill, axis=-1)

    jet_cols = {
        "pt": jets["pt"],
        "eta": jets["eta"],
        "phi": jets["phi"],
        "mass": jets["mass"],
        "rawPt": jets["rawPt"],
        "nConstituents": ak.num(index, axis=2),
        "isTau": jet_tau >= 0,
        "genVisTauIdx": jet_tau,
        "tauDecayMode": from_tau("decayMode", -1),
        "visTauPt": from_tau("visPt", 0.0),
        "visTauEta": from_tau("visEta", 0.0),
        "visTauPhi": from_tau("visPhi", 0.0),
        "visTauMass": from_tau("visMass", 0.0),
        "genJetIdx": jet_gen,
    }
    pf_cols = {name: constituents[name] for name in ("pt", "eta", "phi", "mass", "charge", "pdgId", "isPileup")}
    pf_cols["jetIdx"] = jet_idx
    # PFNano's association table: one row per (jet, candidate); every candidate is in one jet here
    assoc = {"jetIdx": jet_idx, "pFCandsIdx": ak.local_index(jet_idx, axis=1)}
    vis_cols = {
        "pt": taus["visPt"], "eta": taus["visEta"], "phi": taus["visPhi"], "mass": taus["visMass"],
        "charge": taus["charge"], "status": taus["decayMode"], "nCharged": taus["nCharged"],
        "nPi0": taus["nPi0"], "genPartIdxMother": ak.local_index(taus["pt"], axis=1), "jetIdx": tau_jet,
    }
    gen_part = {
        "pt": taus["pt"], "eta": taus["eta"], "phi": taus["phi"], "mass": taus["mass"],
        "pdgId": -15 * taus["charge"],  # tau- is +15
        "status": ak.ones_like(taus["charge"]) * 2,  # decayed
        # NanoAOD statusFlags bits: isPrompt (0), isHardProcess (7), fromHardProcess (8), isLastCopy (13)
        "statusFlags": ak.ones_like(taus["charge"]) * ((1 << 0) | (1 << 8) | (1 << 13)),
        "genPartIdxMother": ak.ones_like(taus["charge"]) * -1,
    }
    return {
        "Jet": ak.zip(jet_cols, depth_limit=2),
        "PFCands": ak.zip(pf_cols, depth_limit=2),
        "JetPFCands": ak.zip(assoc, depth_limit=2),
        "GenVisTau": ak.zip(vis_cols, depth_limit=2),
        "GenPart": ak.zip(gen_part, depth_limit=2),
        "GenJet": ak.zip({k: gen_jets[k] for k in ("pt", "eta", "phi", "mass")}, depth_limit=2),
        "PileupEvent": ak.zip({"poolIdx": pool_index}, depth_limit=2),
        "label": np.full(n_events, PROCESS_LABELS[task.process], dtype=np.int32),
        "split": np.asarray(split, dtype=np.int32),
        "event": np.arange(first_event + 1, first_event + 1 + n_events, dtype=np.uint64),
        "run": np.full(n_events, PROCESS_RUN[task.process], dtype=np.uint32),
        "luminosityBlock": np.full(n_events, task.block_index + 1, dtype=np.uint32),
        "Pileup_nPU": n_pu,
        # the pool (= split) the pileup was drawn from; -1 without pileup
        "Pileup_pool": np.asarray(split if pool is not None and config.mu > 0 else np.full(n_events, -1), np.int32),
        "rho": rho,
    }


def _concatenate(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    if len(chunks) == 1:
        return chunks[0]
    out: dict[str, Any] = {}
    for key, value in chunks[0].items():
        if isinstance(value, ak.Array):
            out[key] = ak.concatenate([c[key] for c in chunks])
        else:
            out[key] = np.concatenate([c[key] for c in chunks])
    return out


def run_block(
    task: BlockTask,
    config: GenerationConfig,
    pool: PileupPool | None,
    pool_ranges: Sequence[tuple[int, int]] | None = None,
) -> dict[str, Any]:
    """Generate one block with its own Pythia instance and seeds; return its columns."""
    pythia_seed, seq = _seeds(config.seed, task.process, task.block_index)
    pythia = make_pythia(task.process, pythia_seed, config.ecm)
    charge_of = ChargeTable(pythia)
    rng = np.random.default_rng(seq)
    splits = event_splits(config.seed, task.process, task.block_index, task.n_events, config.split_fractions)
    chunks = []
    for start in range(0, task.n_events, CHUNK_EVENTS):
        n = min(CHUNK_EVENTS, task.n_events - start)
        chunks.append(simulate_chunk(pythia, charge_of, pool, n, config, rng, task, task.first_event + start,
                                     splits[start:start + n], pool_ranges))
        _report(n)
    return _concatenate(chunks)


# ----------------------------------------------------------------------------------------- workers

_POOL_CACHE: dict[str, PileupPool] = {}


def _load_pool(pool_dir: str | None) -> PileupPool | None:
    """Load the pileup pool saved by the parent (memory-mapped, once per process)."""
    if pool_dir is None:
        return None
    if pool_dir not in _POOL_CACHE:
        fields = [f.name for f in dataclasses.fields(PileupPool)]
        _POOL_CACHE.clear()
        _POOL_CACHE[pool_dir] = PileupPool(**{f: np.load(Path(pool_dir) / f"{f}.npy", mmap_mode="r") for f in fields})
    return _POOL_CACHE[pool_dir]


def _save_pool(pool: PileupPool, pool_dir: Path) -> None:
    pool_dir.mkdir(parents=True, exist_ok=True)
    for f in dataclasses.fields(PileupPool):
        np.save(pool_dir / f"{f.name}.npy", getattr(pool, f.name))


def _pool_job(args: tuple[int, int, int, float, float, str]) -> tuple[int, PileupPool, float]:
    index, n_events, seed, ecm, eta_max, process = args
    t0 = time.process_time()
    pool = build_pool_block(n_events, seed, ecm, eta_max, process, report=_report)
    return index, pool, time.process_time() - t0


def _block_job(
    args: tuple[int, BlockTask, GenerationConfig, str | None, list[tuple[int, int]]],
) -> tuple[int, dict[str, Any], float]:
    order, task, config, pool_dir, pool_ranges = args
    t0 = time.process_time()
    columns = run_block(task, config, _load_pool(pool_dir), pool_ranges)
    return order, columns, time.process_time() - t0


def _run_jobs(func: Any, jobs: list[Any], mp_pool: Any, queue: Any, on_progress: Callable[[int], None]) -> Iterator[Any]:
    """Yield results as they finish (any order) in a worker pool, or in-process for one worker;
    ``on_progress(n)`` is called as the workers report finished events."""
    global _REPORT
    if mp_pool is None:
        _REPORT = on_progress
        try:
            for job in jobs:
                yield func(job)
        finally:
            _REPORT = None
        return

    def drain() -> None:
        import queue as queue_module

        while True:
            try:
                on_progress(queue.get_nowait())
            except queue_module.Empty:
                return

    results = mp_pool.imap_unordered(func, jobs, chunksize=1)
    for _ in range(len(jobs)):
        while True:
            try:
                result = results.next(timeout=0.25)
                break
            except multiprocessing.TimeoutError:
                drain()
        drain()
        yield result


# ----------------------------------------------------------------------------------------- driver


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("hepms", "pythia8mc", "fastjet", "uproot", "awkward", "numpy", "vector"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            if dist == "hepms":
                import hepms

                out[dist] = getattr(hepms, "__version__", "unknown")
            else:
                out[dist] = "not installed"
    return out


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def file_name(process: str) -> str:
    """Output file name of a process, e.g. ``Htautau.root``."""
    return f"{process}tautau.root"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale(out_dir: Path) -> list[Path]:
    """Remove staging folders and ``.partial-PID`` files left in ``out_dir`` by generations whose
    process no longer runs (killed with SIGKILL, or the machine went down); return what was removed."""
    removed = []
    for entry in out_dir.iterdir():
        m = _STALE.match(entry.name)
        if m is None or int(m.group(1)) == os.getpid() or _pid_alive(int(m.group(1))):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
        logger.info("removed %s, left by an interrupted generation", entry)
    return removed


def _swap_in(staging: Path, out_dir: Path, files: list[str], manifest: dict[str, Any]) -> None:
    """Replace the sample in ``out_dir`` by the files in ``staging``, never leaving a sample that
    looks complete but mixes old and new files.

    Order: marker (the folder is now refused by the readers) -> old manifest and old sample files
    removed -> new files moved in (renames in one file system) -> new manifest -> marker removed.
    A kill at any point leaves either the old sample, or a folder that the readers refuse and the
    next run repairs.
    """
    marker = out_dir / INCOMPLETE_MARKER
    marker.write_text(f"generation {os.getpid()} replacing this sample\n")
    old_manifest = out_dir / MANIFEST_NAME
    old_files: list[str] = []
    if old_manifest.exists():
        try:
            old_files = [f["path"] for f in json.loads(old_manifest.read_text())["files"]]
        except (ValueError, KeyError, TypeError):
            logger.warning("unreadable old manifest %s: removing it", old_manifest)
        old_manifest.unlink()
    _pause_point("swap-manifest-removed")
    for name in old_files:
        if name not in files and "/" not in name and (out_dir / name).is_file():
            (out_dir / name).unlink()
    for k, name in enumerate(files):
        # a rename of a finished file, not a write: nothing for hepms.atomic.save_atomically to do
        os.replace(staging / name, out_dir / name)
        _pause_point(f"swap-file-{k + 1}")
    write_json_atomic(out_dir / MANIFEST_NAME, manifest)
    marker.unlink()


def generate(
    output_dir: str | os.PathLike[str],
    events_per_process: int = GENERATION_KEYS["events_per_process"].default,
    processes: Sequence[str] = tuple(GENERATION_KEYS["processes"].default),
    mu: float = GENERATION_KEYS["mu"].default,
    chs: bool = GENERATION_KEYS["chs"].default,
    seed: int = GENERATION_KEYS["seed"].default,
    workers: int | None = None,
    progress: bool = True,
    block_size: int = GENERATION_KEYS["block_size"].default,
    pileup_pool: int | None = GENERATION_KEYS["pileup_pool"].default,
    detector: DetectorConfig | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Generate H->tautau / Z->tautau events and write them to ROOT files in ``output_dir``.

    Every event is assigned to a split (train / validation / test, ``split_fractions``, 60/20/20 by
    default) at generation time and draws its pileup from that split's own pool of minimum-bias
    events, so no pileup event is shared between splits.

    Args:
        output_dir: folder for ``<process>tautau.root`` files and ``manifest.json`` (created).  An
            existing sample there is replaced only when the new one is complete.
        events_per_process: events per process.
        processes: any of ``"H"`` (gg->H->tautau, label 1) and ``"Z"`` (Z/gamma*->tautau, label 0).
        mu: mean number of pileup interactions (Poisson per event); 0 disables pileup.
        chs: remove charged pileup with a track (charged-hadron subtraction, default on).
        seed: master seed; equal seeds and settings give identical events whatever ``workers`` is.
        workers: worker processes (None: all usable cores; 1: run in this process).  Workers are
            started with ``spawn``, so a script calling this with several workers needs the usual
            ``if __name__ == "__main__":`` guard.
        progress: show tqdm progress bars.
        block_size: events per seed block (one Pythia instance each).
        pileup_pool: minimum-bias events in each split's pool (None: sized from the sample, see
            :meth:`GenerationConfig.pool_sizes`).
        detector: detector parameters (default :class:`DetectorConfig`).
        **settings: further :class:`GenerationConfig` fields (``pileup_process``, ``ecm``,
            ``jet_r``, ``jet_pt_min``, ``jet_eta_max``, ``jet_pileup_subtraction``, ``match_dr``,
            ``split_fractions``, ``gen_jet_pt_min``, ``gen_match_dr``).

    Returns:
        The manifest (also written to ``output_dir/manifest.json``).

    Raises:
        ValueError: for a bad setting, before anything is generated.
    """
    unknown = set(settings) - {f.name for f in dataclasses.fields(GenerationConfig)}
    if unknown:
        raise ValueError(f"unknown setting(s): {sorted(unknown)}")
    if "split_fractions" in settings and isinstance(settings["split_fractions"], list):
        settings["split_fractions"] = tuple(settings["split_fractions"])
    config = GenerationConfig(
        events_per_process=events_per_process,
        processes=tuple(processes) if not isinstance(processes, str) else processes,  # type: ignore[arg-type]
        mu=mu,
        chs=chs,
        seed=seed,
        block_size=block_size,
        pileup_pool=pileup_pool,
        detector=detector if detector is not None else DetectorConfig(),
        **settings,
    )
    config.validate()
    n_workers = validate_workers(workers)
    out_dir = validate_output_dir(output_dir)
    config = dataclasses.replace(
        config,
        events_per_process=int(config.events_per_process),
        mu=float(config.mu),
        seed=int(config.seed),
        block_size=int(config.block_size),
        pileup_pool=None if config.pileup_pool is None else int(config.pileup_pool),
        split_fractions=tuple(float(f) for f in config.split_fractions),  # type: ignore[arg-type]
    )
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    clean_stale(out_dir)
    tasks = []
    n_blocks = math.ceil(config.events_per_process / config.block_size)
    for b in range(n_blocks):  # interleave processes so that all files grow together
        for proc in config.processes:
            first = b * config.block_size
            tasks.append(BlockTask(proc, b, first, min(config.block_size, config.events_per_process - first)))
    use_pool = config.mu > 0
    pool_sizes = config.pool_sizes()
    pool_jobs = []  # (order, n_events, pythia seed, ecm, eta_max, process); ordered by split, block
    pool_blocks = []
    if use_pool:
        for split_id, size in enumerate(pool_sizes):
            for b in range(math.ceil(size / POOL_BLOCK_EVENTS)):
                n = min(POOL_BLOCK_EVENTS, size - b * POOL_BLOCK_EVENTS)
                pythia_seed = _seeds(config.seed, f"pileup-{SPLIT_NAMES[split_id]}", b)[0]
                pool_blocks.append({"split": SPLIT_NAMES[split_id], "block": b, "n_events": n,
                                    "pythia_seed": pythia_seed})
                pool_jobs.append((len(pool_jobs), n, pythia_seed, config.ecm, config.detector.calo_eta_max,
                                  config.pileup_process))
    pool_ranges: list[tuple[int, int]] = []
    start = 0
    for size in pool_sizes:
        pool_ranges.append((start, size))
        start += size
    n_workers = min(n_workers, max(len(tasks), len(pool_jobs)))
    logger.info(
        "generating %d events x %s, mu=%g, chs=%s, seed=%d, %d blocks, pools %s, %d worker(s)",
        config.events_per_process, list(config.processes), config.mu, config.chs, config.seed, len(tasks),
        pool_sizes, n_workers,
    )

    staging = out_dir / f".staging-{os.getpid()}"
    mp_pool = None
    queue = None
    pool_dir: Path | None = None
    writers: dict[str, EventsWriter] = {}
    stats = {p: {"events": 0, "jets": 0, "tau_jets": 0, "taus": 0, "taus_matched": 0, "pf_candidates": 0,
                 "cpu_s": 0.0} for p in config.processes}
    split_counts = {p: [0, 0, 0] for p in config.processes}
    pool_cpu = 0.0
    pool_mean = 0.0
    previous_handler = None
    if threading.current_thread() is threading.main_thread():
        def on_sigterm(signum: int, frame: Any) -> None:
            # turn SIGTERM into an exception, so that the cleanup below runs
            raise SystemExit(128 + signum)

        previous_handler = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        if staging.exists():  # left by an earlier process that had our pid
            shutil.rmtree(staging)
        staging.mkdir()
        if n_workers > 1:
            # spawn: Pythia/FastJet state and any threads of the parent must not be forked
            ctx = multiprocessing.get_context("spawn")
            queue = ctx.Queue()
            mp_pool = ctx.Pool(n_workers, initializer=_init_worker, initargs=(queue,))
        if use_pool:
            parts: dict[int, PileupPool] = {}
            with tqdm(total=sum(pool_sizes), desc="pileup pools", unit="evt", disable=not progress) as bar:
                for index, part, cpu in _run_jobs(_pool_job, pool_jobs, mp_pool, queue, bar.update):
                    parts[index] = part
                    pool_cpu += cpu
                bar.n = sum(pool_sizes)
                bar.refresh()
            pool = PileupPool.concatenate([parts[i] for i in range(len(pool_jobs))])
            pool_mean = pool.mean_particles
            logger.info("pileup pools: %s minimum-bias events per split (%.1f s)", "/".join(map(str, pool_sizes)),
                        time.perf_counter() - t_start)
            # inside the staging folder: whatever removes the staging folder removes the pool
            pool_dir = staging / "pileup-pool"
            _save_pool(pool, pool_dir)
            del parts, pool
            _pause_point("pool-built")

        for proc in config.processes:
            writers[proc] = EventsWriter(staging / file_name(proc))
            writers[proc].open()

        jobs = [(i, task, config, str(pool_dir) if pool_dir else None, pool_ranges) for i, task in enumerate(tasks)]
        pending: dict[int, dict[str, Any]] = {}
        next_to_write = 0
        total = config.events_per_process * len(config.processes)
        events_done = 0
        with tqdm(total=total, desc="events", unit="evt", disable=not progress) as bar:
            for order, columns, cpu in _run_jobs(_block_job, jobs, mp_pool, queue, bar.update):
                pending[order] = columns
                task = tasks[order]
                stats[task.process]["cpu_s"] += cpu
                events_done += task.n_events
                if not progress:  # no bar (e.g. a log file): one line per block instead
                    logger.info("%s block %d: %d events done (%d/%d, %.1f s)", task.process, task.block_index,
                                task.n_events, events_done, total, time.perf_counter() - t_start)
                # write in block order, whatever order the workers finish in
                while next_to_write in pending:
                    cols = pending.pop(next_to_write)
                    t = tasks[next_to_write]
                    writers[t.process].extend(cols)
                    s = stats[t.process]
                    s["events"] += t.n_events
                    s["jets"] += int(ak.sum(ak.num(cols["Jet"], axis=1)))
                    s["tau_jets"] += int(ak.sum(cols["Jet"]["isTau"]))
                    s["taus"] += int(ak.sum(ak.num(cols["GenVisTau"], axis=1)))
                    s["taus_matched"] += int(ak.sum(cols["GenVisTau"]["jetIdx"] >= 0))
                    s["pf_candidates"] += int(ak.sum(ak.num(cols["PFCands"], axis=1)))
                    for k in range(3):
                        split_counts[t.process][k] += int(np.sum(cols["split"] == k))
                    next_to_write += 1
            bar.n = total
            bar.refresh()
        if mp_pool is not None:
            mp_pool.close()
            mp_pool.join()
            mp_pool = None
        for w in writers.values():
            w.close()
        for w in writers.values():
            w.commit()
        _pause_point("files-committed")

        wall = time.perf_counter() - t_start
        total_events = sum(s["events"] for s in stats.values())
        manifest = _manifest(config, tasks, pool_blocks, pool_sizes, pool_mean, pool_cpu, stats, split_counts,
                             use_pool, wall, n_workers, total_events)
        _swap_in(staging, out_dir, [file_name(p) for p in config.processes], manifest)
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    finally:
        if mp_pool is not None:
            mp_pool.terminate()
            mp_pool.join()
        shutil.rmtree(staging, ignore_errors=True)
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)

    logger.info("generated %d events in %.1f s (%s)", total_events, wall, out_dir)
    return manifest


def _manifest(
    config: GenerationConfig,
    tasks: list[BlockTask],
    pool_blocks: list[dict[str, Any]],
    pool_sizes: list[int],
    pool_mean: float,
    pool_cpu: float,
    stats: dict[str, dict[str, Any]],
    split_counts: dict[str, list[int]],
    use_pool: bool,
    wall: float,
    n_workers: int,
    total_events: int,
) -> dict[str, Any]:
    return {
        "format": "hepms.generate/2",
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "settings": config.to_dict(),
        "pythia_settings": {
            p: [line for line in pythia_settings(p, 0, config.ecm) if not line.startswith("Random:seed")]
            for p in (*config.processes, *((config.pileup_process,) if use_pool else ()))
        },
        "seeds": {
            "master": config.seed,
            "blocks": [
                {"process": t.process, "block": t.block_index, "first_event": t.first_event + 1,
                 "n_events": t.n_events, "pythia_seed": _seeds(config.seed, t.process, t.block_index)[0]}
                for t in tasks
            ],
            "pileup_pool_blocks": pool_blocks,
        },
        "files": [
            {"path": file_name(p), "process": p, "label": PROCESS_LABELS[p], "tree": "Events",
             "events": stats[p]["events"]}
            for p in config.processes
        ],
        "splits": {
            "names": list(SPLIT_NAMES),
            "fractions": list(config.split_fractions),
            "events": {p: dict(zip(SPLIT_NAMES, c)) for p, c in split_counts.items()},
            "pileup": "one pool per split (Pileup_pool = split); pools from disjoint random streams",
        },
        "counts": {p: {k: v for k, v in s.items() if k != "cpu_s"} for p, s in stats.items()},
        "pileup_pool": {"events_per_split": dict(zip(SPLIT_NAMES, pool_sizes)) if use_pool else {},
                        "rule": "given" if config.pileup_pool is not None else "auto",
                        "mean_stored_particles": round(pool_mean, 2)},
        "timing": {
            "wall_s": round(wall, 2),
            "workers": n_workers,
            "cpu": _cpu_name(),
            "pileup_pool_cpu_s": round(pool_cpu, 2),
            "cpu_s_per_event": {p: round(s["cpu_s"] / max(s["events"], 1), 5) for p, s in stats.items()},
            "events_per_s": round(total_events / wall, 3) if wall > 0 else None,
        },
        "command": " ".join(sys.argv) if sys.argv else "",
    }
