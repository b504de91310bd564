"""Pileup: a pool of pre-generated minimum-bias events, overlaid Poisson(<mu>) times per event.

Generating 50 fresh minimum-bias events for every signal event costs about 80 ms per event; drawing
them from a stored pool costs about 0.1-0.2 ms.  Pool events are reused (like the "premixing"
libraries of the LHC experiments), so each drawn event is rotated by a random azimuthal angle and,
with probability 1/2, mirrored in z.  Both are exact symmetries of unpolarised pp collisions, and they
make repeated draws of one pool event land differently in the detector.

Only particles that can reach the detector (visible, |eta| below the calorimeter edge) are stored;
rotations and mirroring leave |eta| unchanged, so nothing is lost by this cut.

Reuse must never connect the train, validation and test splits: a network memorises reused pileup
events (rotation and mirroring leave jet-relative features unchanged).  The pipeline therefore
builds one pool per split, from disjoint random streams, and every event draws only from the pool
of its own split (:func:`overlay` with ``pool_of_event``).  The index of every drawn pool event is
returned, so the files can prove that no pileup event is shared between splits.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import awkward as ak
import numpy as np

from hepms.generate.detector import INVISIBLE_PDG
from hepms.generate.pythia import ChargeTable, final_state, make_pythia, next_events

logger = logging.getLogger(__name__)


@dataclass
class PileupPool:
    """Flat storage of minimum-bias particles: event ``i`` owns rows ``offsets[i]:offsets[i+1]``."""

    px: np.ndarray
    py: np.ndarray
    pz: np.ndarray
    E: np.ndarray
    charge: np.ndarray
    pdgId: np.ndarray
    offsets: np.ndarray

    @property
    def n_events(self) -> int:
        return len(self.offsets) - 1

    @property
    def mean_particles(self) -> float:
        return float(self.offsets[-1]) / max(self.n_events, 1)

    @classmethod
    def concatenate(cls, pools: list["PileupPool"]) -> "PileupPool":
        """Join pools in order (the result depends on the order, not on who built them)."""
        counts = np.concatenate([np.diff(p.offsets) for p in pools])
        offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        return cls(
            *(np.concatenate([getattr(p, f) for p in pools]) for f in ("px", "py", "pz", "E", "charge", "pdgId")),
            offsets=offsets,
        )


#: Minimum-bias events asked from Pythia per call while building a pool: the progress bar moves
#: after each call (nextBatch of 5000 events would leave it at 0 % for a long time).
POOL_CHUNK_EVENTS = 250


def build_pool_block(
    n_events: int,
    seed: int,
    ecm: float,
    eta_max: float,
    process: str = "inelastic",
    report: Callable[[int], None] | None = None,
) -> PileupPool:
    """Generate ``n_events`` minimum-bias events (``process``: ``"inelastic"`` or
    ``"nondiffractive"``) with their own Pythia instance seeded ``seed``.

    ``report(n)`` (optional) is called after every :data:`POOL_CHUNK_EVENTS` events.
    """
    pythia = make_pythia(process, seed, ecm)
    charge_of = ChargeTable(pythia)
    batches = []
    for start in range(0, n_events, POOL_CHUNK_EVENTS):
        n = min(POOL_CHUNK_EVENTS, n_events - start)
        batches.append(final_state(next_events(pythia, n), charge_of))
        if report is not None:
            report(n)
    particles = batches[0] if len(batches) == 1 else ak.concatenate(batches)
    counts = np.asarray(ak.num(particles, axis=1), dtype=np.int64)

    def col(name: str, dtype: type) -> np.ndarray:
        return np.asarray(ak.flatten(particles[name]), dtype=dtype)

    px, py, pz = col("px", np.float64), col("py", np.float64), col("pz", np.float64)
    pdg = col("pdgId", np.int32)
    pt = np.hypot(px, py)
    eta = np.arcsinh(pz / np.maximum(pt, 1e-12))
    keep = (np.abs(eta) < eta_max) & ~np.isin(np.abs(pdg), INVISIBLE_PDG)
    event = np.repeat(np.arange(n_events), counts)
    offsets = np.zeros(n_events + 1, dtype=np.int64)
    np.cumsum(np.bincount(event[keep], minlength=n_events), out=offsets[1:])
    return PileupPool(
        px=px[keep],
        py=py[keep],
        pz=pz[keep],
        E=col("E", np.float64)[keep],
        charge=col("charge", np.int8)[keep],
        pdgId=pdg[keep],
        offsets=offsets,
    )


def overlay(
    pool: PileupPool | None,
    n_events: int,
    mu: float,
    rng: np.random.Generator,
    pool_ranges: Sequence[tuple[int, int]] | None = None,
    pool_of_event: np.ndarray | None = None,
) -> tuple[np.ndarray, ak.Array, ak.Array]:
    """Draw pileup for ``n_events`` events.

    Args:
        pool: the minimum-bias events (None or empty: no pileup).
        n_events: events to draw for.
        mu: Poisson mean of the number of interactions per event.
        rng: random stream (consumed in a fixed order).
        pool_ranges: ``(first, count)`` of each sub-pool inside ``pool`` (default: one pool, all).
        pool_of_event: sub-pool of each event (default: 0); an event draws only from its sub-pool.

    Returns:
        ``(n_pu, particles, pool_index)``: the Poisson-drawn number of pileup interactions per
        event, ``[events][particles]`` records (``px, py, pz, E, charge, pdgId, isPileup=True``),
        and ``[events][interactions]`` int64 indices of the drawn events inside their sub-pool.
    """
    if mu == 0 or pool is None or pool.n_events == 0:
        n_pu = np.zeros(n_events, dtype=np.int32)
        empty = ak.zip(
            {
                "px": np.zeros(0),
                "py": np.zeros(0),
                "pz": np.zeros(0),
                "E": np.zeros(0),
                "charge": np.zeros(0, np.int32),
                "pdgId": np.zeros(0, np.int32),
                "isPileup": np.zeros(0, bool),
            }
        )
        zeros = np.zeros(n_events, dtype=np.int64)
        return n_pu, ak.unflatten(empty, zeros), ak.unflatten(np.zeros(0, np.int64), zeros)

    if pool_ranges is None:
        pool_ranges = [(0, pool.n_events)]
    if pool_of_event is None:
        pool_of_event = np.zeros(n_events, dtype=np.int64)
    first = np.array([r[0] for r in pool_ranges], dtype=np.int64)
    size = np.array([r[1] for r in pool_ranges], dtype=np.int64)
    if np.any(size[np.unique(pool_of_event)] <= 0):
        raise ValueError("an event would draw pileup from an empty pool")
    n_pu = rng.poisson(mu, n_events).astype(np.int32)
    n_draws = int(n_pu.sum())
    event_of_draw = np.repeat(np.arange(n_events), n_pu)
    sub = np.asarray(pool_of_event, dtype=np.int64)[event_of_draw]
    # uniform in [0, size of the event's own pool): one draw from one stream, whatever the pools
    local = np.minimum((rng.random(n_draws) * size[sub]).astype(np.int64), size[sub] - 1)
    draws = first[sub] + local
    rotation = rng.uniform(-np.pi, np.pi, n_draws)
    mirror = rng.random(n_draws) < 0.5

    starts = pool.offsets[draws]
    lengths = pool.offsets[draws + 1] - starts
    total = int(lengths.sum())
    # Gather index: for draw d, rows starts[d] .. starts[d] + lengths[d] - 1, concatenated.
    draw_first_row = np.cumsum(lengths) - lengths
    row = np.repeat(starts - draw_first_row, lengths) + np.arange(total)
    cos_r = np.repeat(np.cos(rotation), lengths)
    sin_r = np.repeat(np.sin(rotation), lengths)
    sign_z = np.repeat(np.where(mirror, -1.0, 1.0), lengths)

    px, py = pool.px[row], pool.py[row]
    flat = ak.zip(
        {
            "px": px * cos_r - py * sin_r,
            "py": px * sin_r + py * cos_r,
            "pz": pool.pz[row] * sign_z,
            "E": pool.E[row],
            "charge": pool.charge[row].astype(np.int32),
            "pdgId": pool.pdgId[row],
            "isPileup": np.ones(total, dtype=bool),
        }
    )
    counts = np.bincount(event_of_draw, weights=lengths, minlength=n_events).astype(np.int64)
    return n_pu, ak.unflatten(flat, counts), ak.unflatten(local, n_pu.astype(np.int64))
