"""Model selection for multi-step models: grid search, DARTS and SPOS-NAS (the MSNAS study).

Saito et al., "Event Classification with Multi-step Machine Learning" (MSNAS): pick one model per
step of a chain (Task 1: tau ID or tau momentum calibration per jet; Task 2: H vs Z per event)
among declared candidates.

* :func:`prepare_data` -> :class:`PreparedData` (train / validation / test, standardised);
* :class:`SearchSpace` (candidates from config, :mod:`hepms.select.candidates`);
* :func:`grid_search`, :func:`darts_search`, :func:`spos_search`, or :func:`select` by name; each
  takes ``(space, train, val, settings)``: **the test split is not an argument**, so selection
  cannot look at it;
* :func:`evaluate_chain` for the final numbers (on test, once, after selection);
* :mod:`hepms.select.validity` (Gaussian-process reference for Task-1 outputs),
  :mod:`hepms.select.scaling` (wall time vs number of candidates), :mod:`hepms.select.plots`,
  :mod:`hepms.select.study` (methods x v1 x seeds), :mod:`hepms.select.cli` (``hepms select``).

Example::

    from hepms.generate import read_events
    from hepms import select

    data = select.prepare_data(read_events("data/htautau"), seed=1)
    space = select.SearchSpace.create(data, "calibration", **select.DEFAULT_CANDIDATES)
    result = select.darts_search(space, data.train, data.val, select.SearchSettings(v1=0.5))
    result.pair                                    # ('deepsets_large', 'mass'), say
    select.evaluate_chain(result.chain, data.test, data.kinematics(), v1=0.5)
"""
from __future__ import annotations

from typing import Optional

from hepms.data import TauEventData
from hepms.select.candidates import (
    DEFAULT_CANDIDATES,
    DOWNSTREAM_KINDS,
    DUMMY_KINDS,
    UPSTREAM_KINDS,
    SpaceContext,
    build_candidates,
    replicate,
)
from hepms.select.darts import DartsSupernet, darts_search
from hepms.select.data import Inputs, JetKinematics, PreparedData, Targets, make_batch, prepare_data
from hepms.select.grid import grid_search
from hepms.select.space import Chain, SearchSpace
from hepms.select.spos import spos_search
from hepms.select.tasks import CalibrationTask, TauIDTask, make_task
from hepms.select.training import (
    Pretrained,
    SearchSettings,
    SelectionResult,
    evaluate_chain,
    pretrain,
)

__all__ = [
    "prepare_data",
    "PreparedData",
    "JetKinematics",
    "Inputs",
    "Targets",
    "make_batch",
    "SearchSpace",
    "SpaceContext",
    "Chain",
    "DEFAULT_CANDIDATES",
    "UPSTREAM_KINDS",
    "DOWNSTREAM_KINDS",
    "DUMMY_KINDS",
    "build_candidates",
    "replicate",
    "TauIDTask",
    "CalibrationTask",
    "make_task",
    "SearchSettings",
    "SelectionResult",
    "Pretrained",
    "pretrain",
    "evaluate_chain",
    "grid_search",
    "darts_search",
    "DartsSupernet",
    "spos_search",
    "select",
    "METHODS",
]

METHODS = {"grid": grid_search, "darts": darts_search, "spos": spos_search}


def select(
    method: str,
    space: SearchSpace,
    train: TauEventData,
    val: TauEventData,
    settings: Optional[SearchSettings] = None,
    *,
    pretrained: Optional[Pretrained] = None,
) -> SelectionResult:
    """Run the selection method called ``method`` (``"grid"``, ``"darts"`` or ``"spos"``).

    Only the training and validation splits are accepted: the test split stays out of selection.
    """
    try:
        fn = METHODS[method]
    except KeyError:
        raise ValueError(f"unknown selection method {method!r}; choose from {sorted(METHODS)}") from None
    return fn(space, train, val, settings, pretrained=pretrained)
