"""The generation pipeline: seed blocks, worker processes, ordered writing, manifest.

Work is cut into *blocks* of ``block_size`` events per process.  Each block has its own Pythia
instance and its own seeds, derived from the master seed, the process and the block number with
``numpy.random.SeedSequence``; the pileup pool is cut into blocks the same way.  Blocks may run on
any worker in any order, and results are written in block order, so the output depends on the
settings and the seed only, never on the number of workers.

Per chunk of events inside a block: Pythia ``nextBatch`` -> stable particles + hard-tau truth ->
pileup overlay -> parametric detector -> anti-kT jets (FastJet) -> jet/tau matching -> columns.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import math
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np

from hepms.generate.config import (
    CHUNK_EVENTS,
    PROCESS_LABELS,
    PROCESS_RUN,
    PYTHIA_SEED_MAX,
    GenerationConfig,
    validate_output_dir,
    validate_workers,
)
from hepms.generate.detector import DetectorConfig, simulate
from hepms.generate.io import MANIFEST_NAME, EventsWriter, write_json_atomic
from hepms.generate.jets import cluster, flatten_constituents
from hepms.generate.pileup import PileupPool, build_pool_block, overlay
from hepms.generate.pythia import ChargeTable, make_pythia, next_events, final_state, pythia_settings
from hepms.generate.truth import hard_taus, match

logger = logging.getLogger(__name__)

#: Keys mixed into the SeedSequence so that H, Z and the pileup pool never share a random stream.
_STREAM_KEY = {"H": 25, "Z": 23, "pileup": 90}
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
) -> dict[str, Any]:
    """Generate and reconstruct ``n_events`` events; return the columns of the output tree."""
    events = next_events(pythia, n_events)
    signal = final_state(events, charge_of)
    taus = hard_taus(events, charge_of)
    del events  # the full records are the biggest arrays of the chunk

    n_pu, pileup = overlay(pool, n_events, config.mu, rng)
    particles = ak.concatenate([signal, pileup], axis=1)
    candidates = simulate(particles, config.detector, rng, config.chs)
    jets, index, rho = cluster(
        candidates, config.jet_r, config.jet_pt_min, config.jet_eta_max, config.jet_pileup_subtraction
    )
    constituents, jet_idx = flatten_constituents(candidates, index)
    jet_tau, tau_jet = match(jets, taus, config.match_dr)

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
        "tauIdx": jet_tau,
        "tauDecayMode": from_tau("decayMode", -1),
        "visTauPt": from_tau("visPt", 0.0),
        "visTauEta": from_tau("visEta", 0.0),
        "visTauPhi": from_tau("visPhi", 0.0),
        "visTauMass": from_tau("visMass", 0.0),
    }
    pf_cols = {name: constituents[name] for name in ("pt", "eta", "phi", "mass", "charge", "pdgId", "isPileup")}
    pf_cols["jetIdx"] = jet_idx
    tau_cols = {name: taus[name] for name in ak.fields(taus)}
    tau_cols["jetIdx"] = tau_jet
    return {
        "Jet": ak.zip(jet_cols, depth_limit=2),
        "PFCand": ak.zip(pf_cols, depth_limit=2),
        "Tau": ak.zip(tau_cols, depth_limit=2),
        "label": np.full(n_events, PROCESS_LABELS[task.process], dtype=np.int32),
        "event": np.arange(first_event + 1, first_event + 1 + n_events, dtype=np.uint64),
        "run": np.full(n_events, PROCESS_RUN[task.process], dtype=np.uint32),
        "luminosityBlock": np.full(n_events, task.block_index + 1, dtype=np.uint32),
        "nPU": n_pu,
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


def run_block(task: BlockTask, config: GenerationConfig, pool: PileupPool | None) -> dict[str, Any]:
    """Generate one block with its own Pythia instance and seeds; return its columns."""
    pythia_seed, seq = _seeds(config.seed, task.process, task.block_index)
    pythia = make_pythia(task.process, pythia_seed, config.ecm)
    charge_of = ChargeTable(pythia)
    rng = np.random.default_rng(seq)
    chunks = []
    for start in range(0, task.n_events, CHUNK_EVENTS):
        n = min(CHUNK_EVENTS, task.n_events - start)
        chunks.append(simulate_chunk(pythia, charge_of, pool, n, config, rng, task, task.first_event + start))
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
    for f in dataclasses.fields(PileupPool):
        np.save(pool_dir / f"{f.name}.npy", getattr(pool, f.name))


def _pool_job(args: tuple[int, int, int, float, float, str]) -> tuple[int, PileupPool, float]:
    index, n_events, seed, ecm, eta_max, process = args
    t0 = time.process_time()
    pool = build_pool_block(n_events, seed, ecm, eta_max, process)
    return index, pool, time.process_time() - t0


def _block_job(args: tuple[int, BlockTask, GenerationConfig, str | None]) -> tuple[int, dict[str, Any], float]:
    order, task, config, pool_dir = args
    t0 = time.process_time()
    columns = run_block(task, config, _load_pool(pool_dir))
    return order, columns, time.process_time() - t0


def _run_jobs(func: Any, jobs: list[Any], mp_pool: Any) -> Any:
    """Yield results as they finish (any order) in a worker pool, or in-process for one worker."""
    if mp_pool is None:
        for job in jobs:
            yield func(job)
    else:
        yield from mp_pool.imap_unordered(func, jobs, chunksize=1)


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


def generate(
    output_dir: str | os.PathLike[str],
    events_per_process: int = 1000,
    processes: Sequence[str] = ("H", "Z"),
    mu: float = 50.0,
    chs: bool = False,
    seed: int = 12345,
    workers: int | None = None,
    progress: bool = True,
    block_size: int = 500,
    pileup_pool: int = 10000,
    detector: DetectorConfig | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Generate H->tautau / Z->tautau events and write them to ROOT files in ``output_dir``.

    Args:
        output_dir: folder for ``<process>tautau.root`` files and ``manifest.json`` (created).
        events_per_process: events per process.
        processes: any of ``"H"`` (gg->H->tautau, label 1) and ``"Z"`` (Z/gamma*->tautau, label 0).
        mu: mean number of pileup interactions (Poisson per event); 0 disables pileup.
        chs: remove charged pileup with a track (charged-hadron subtraction).
        seed: master seed; equal seeds and settings give identical events whatever ``workers`` is.
        workers: worker processes (None: all usable cores; 1: run in this process).  Workers are
            started with ``spawn``, so a script calling this with several workers needs the usual
            ``if __name__ == "__main__":`` guard.
        progress: show a tqdm progress bar.
        block_size: events per seed block (one Pythia instance each).
        pileup_pool: number of pre-generated minimum-bias events drawn from for pileup.
        detector: detector parameters (default :class:`DetectorConfig`).
        **settings: further :class:`GenerationConfig` fields (``pileup_process``, ``ecm``,
            ``jet_r``, ``jet_pt_min``, ``jet_eta_max``, ``jet_pileup_subtraction``, ``match_dr``).

    Returns:
        The manifest (also written to ``output_dir/manifest.json``).

    Raises:
        ValueError: for a bad setting, before anything is generated.
    """
    unknown = set(settings) - {f.name for f in dataclasses.fields(GenerationConfig)}
    if unknown:
        raise ValueError(f"unknown setting(s): {sorted(unknown)}")
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
        pileup_pool=int(config.pileup_pool),
    )
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    tasks = []
    n_blocks = math.ceil(config.events_per_process / config.block_size)
    for b in range(n_blocks):  # interleave processes so that all files grow together
        for proc in config.processes:
            first = b * config.block_size
            tasks.append(BlockTask(proc, b, first, min(config.block_size, config.events_per_process - first)))
    use_pool = config.mu > 0
    pool_jobs = []
    if use_pool:
        for b in range(math.ceil(config.pileup_pool / POOL_BLOCK_EVENTS)):
            n = min(POOL_BLOCK_EVENTS, config.pileup_pool - b * POOL_BLOCK_EVENTS)
            pool_jobs.append(
                (b, n, _seeds(config.seed, "pileup", b)[0], config.ecm, config.detector.calo_eta_max,
                 config.pileup_process)
            )
    n_workers = min(n_workers, max(len(tasks), len(pool_jobs)))
    logger.info(
        "generating %d events x %s, mu=%g, chs=%s, seed=%d, %d blocks, %d worker(s)",
        config.events_per_process, list(config.processes), config.mu, config.chs, config.seed, len(tasks), n_workers,
    )

    mp_pool = None
    pool_dir: Path | None = None
    writers: dict[str, EventsWriter] = {}
    stats = {p: {"events": 0, "jets": 0, "tau_jets": 0, "taus": 0, "taus_matched": 0, "pf_candidates": 0,
                 "cpu_s": 0.0} for p in config.processes}
    pool_cpu = 0.0
    pool_mean = 0.0
    try:
        if n_workers > 1:
            # spawn: Pythia/FastJet state and any threads of the parent must not be forked
            mp_pool = multiprocessing.get_context("spawn").Pool(n_workers)
        if use_pool:
            parts: dict[int, PileupPool] = {}
            with tqdm(total=config.pileup_pool, desc="pileup pool", unit="evt", disable=not progress) as bar:
                for index, part, cpu in _run_jobs(_pool_job, pool_jobs, mp_pool):
                    parts[index] = part
                    pool_cpu += cpu
                    bar.update(part.n_events)
            pool = PileupPool.concatenate([parts[i] for i in range(len(pool_jobs))])
            pool_mean = pool.mean_particles
            logger.info("pileup pool: %d minimum-bias events (%.1f s)", config.pileup_pool,
                        time.perf_counter() - t_start)
            pool_dir = Path(tempfile.mkdtemp(prefix="hepms-pileup-pool-"))
            _save_pool(pool, pool_dir)
            del parts, pool

        for proc in config.processes:
            writers[proc] = EventsWriter(out_dir / file_name(proc))
            writers[proc].open()

        jobs = [(i, task, config, str(pool_dir) if pool_dir else None) for i, task in enumerate(tasks)]
        pending: dict[int, dict[str, Any]] = {}
        next_to_write = 0
        events_done = 0
        with tqdm(total=config.events_per_process * len(config.processes), desc="events", unit="evt",
                  disable=not progress) as bar:
            for order, columns, cpu in _run_jobs(_block_job, jobs, mp_pool):
                pending[order] = columns
                task = tasks[order]
                s = stats[task.process]
                s["cpu_s"] += cpu
                bar.update(task.n_events)
                events_done += task.n_events
                if not progress:  # no bar (e.g. a log file): one line per block instead
                    logger.info("%s block %d: %d events done (%d/%d, %.1f s)", task.process, task.block_index,
                                task.n_events, events_done, len(config.processes) * config.events_per_process,
                                time.perf_counter() - t_start)
                # write in block order, whatever order the workers finish in
                while next_to_write in pending:
                    cols = pending.pop(next_to_write)
                    t = tasks[next_to_write]
                    writers[t.process].extend(cols)
                    s = stats[t.process]
                    s["events"] += t.n_events
                    s["jets"] += int(ak.sum(ak.num(cols["Jet"], axis=1)))
                    s["tau_jets"] += int(ak.sum(cols["Jet"]["isTau"]))
                    s["taus"] += int(ak.sum(ak.num(cols["Tau"], axis=1)))
                    s["taus_matched"] += int(ak.sum(cols["Tau"]["jetIdx"] >= 0))
                    s["pf_candidates"] += int(ak.sum(ak.num(cols["PFCand"], axis=1)))
                    next_to_write += 1
        if mp_pool is not None:
            mp_pool.close()
            mp_pool.join()
            mp_pool = None
        for w in writers.values():
            w.close()
        for w in writers.values():
            w.commit()
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    finally:
        if mp_pool is not None:
            mp_pool.terminate()
            mp_pool.join()
        if pool_dir is not None:
            shutil.rmtree(pool_dir, ignore_errors=True)

    wall = time.perf_counter() - t_start
    total_events = sum(s["events"] for s in stats.values())
    manifest: dict[str, Any] = {
        "format": "hepms.generate/1",
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
            "pileup_pool_blocks": [{"block": j[0], "n_events": j[1], "pythia_seed": j[2]} for j in pool_jobs],
        },
        "files": [
            {"path": file_name(p), "process": p, "label": PROCESS_LABELS[p], "tree": "Events",
             "events": stats[p]["events"]}
            for p in config.processes
        ],
        "counts": {p: {k: v for k, v in s.items() if k != "cpu_s"} for p, s in stats.items()},
        "pileup_pool": {"events": config.pileup_pool if use_pool else 0,
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
    write_json_atomic(out_dir / MANIFEST_NAME, manifest)
    logger.info("generated %d events in %.1f s (%s)", total_events, wall, out_dir)
    return manifest
