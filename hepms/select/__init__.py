"""Model selection for multi-step models: grid search, DARTS and SPOS-NAS (the MSNAS study).

Saito et al., "Event Classification with Multi-step Machine Learning" (MSNAS): pick one model per
step of a chain (Task 1: tau ID or tau momentum calibration per jet; Task 2: H vs Z per event)
among declared candidates.

* :func:`prepare_selection_data` -> :class:`SelectionData` (train / validation / test, standardised);
* :class:`SearchSpace` (candidates from config, :mod:`hepms.select.candidates`);
* :func:`grid_search`, :func:`darts_search`, :func:`spos_search`, or :func:`select` by name; each
  takes ``(space, train, val, settings)``: **the test split is not an argument**, so selection
  cannot look at it;
* :func:`evaluate_chain` for the final numbers (on test, once, after selection);
* :mod:`hepms.select.validity` (Gaussian-process reference for Task-1 outputs),
  :mod:`hepms.select.scaling` (wall time vs number of candidates), :mod:`hepms.select.plots`,
  :mod:`hepms.select.study` (methods x v1 x seeds), :mod:`hepms.select.cli` (``hepms select``),
  :mod:`hepms.select.summary` (the MSNAS paper's answers from a study's records),
  :mod:`hepms.select.records` (committable selection records: studies that resume and grow).

Example::

    from hepms.generate import read_events
    from hepms import select

    data = select.prepare_selection_data(read_events("data/htautau"), seed=1)
    space = select.SearchSpace.create(data, "calibration", **select.DEFAULT_CANDIDATES)
    result = select.darts_search(space, data.train, data.val, select.SearchSettings(v1=0.5))
    result.pair                                    # ('deepsets_large', 'mass'), say
    select.evaluate_chain(result.chain, data.test, data.kinematics(), v1=0.5)
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

# Lazy re-exports (PEP 562), as in hepms and hepms.generate: `hepms select --help` must not pay
# for torch and the selection code (seconds) before printing its usage.
_LAZY = {
    **dict.fromkeys(("DEFAULT_CANDIDATES", "DOWNSTREAM_KINDS", "DUMMY_KINDS", "UPSTREAM_KINDS", "SpaceContext",
                     "build_candidates", "replicate"), "hepms.select.candidates"),
    **dict.fromkeys(("DartsSupernet", "darts_search"), "hepms.select.darts"),
    **dict.fromkeys(("Inputs", "JetKinematics", "SelectionData", "Targets", "make_batch", "prepare_selection_data"),
                    "hepms.select.data"),
    "grid_search": "hepms.select.grid",
    **dict.fromkeys(("Chain", "SearchSpace"), "hepms.select.space"),
    "spos_search": "hepms.select.spos",
    **dict.fromkeys(("CalibrationTask", "TauIDTask", "make_task"), "hepms.select.tasks"),
    **dict.fromkeys(("Pretrained", "SearchSettings", "SelectionResult", "evaluate_chain", "pretrain",
                     "reoptimise", "train_on_upstream_outputs"), "hepms.select.training"),
}

if TYPE_CHECKING:
    from hepms.data import TauEventData
    from hepms.select.candidates import (  # noqa: F401
        DEFAULT_CANDIDATES,
        DOWNSTREAM_KINDS,
        DUMMY_KINDS,
        UPSTREAM_KINDS,
        SpaceContext,
        build_candidates,
        replicate,
    )
    from hepms.select.darts import DartsSupernet, darts_search  # noqa: F401
    from hepms.select.data import Inputs, JetKinematics, SelectionData, Targets, make_batch, prepare_selection_data  # noqa: F401
    from hepms.select.grid import grid_search  # noqa: F401
    from hepms.select.space import Chain, SearchSpace  # noqa: F401
    from hepms.select.spos import spos_search  # noqa: F401
    from hepms.select.tasks import CalibrationTask, TauIDTask, make_task  # noqa: F401
    from hepms.select.training import (  # noqa: F401
        Pretrained,
        SearchSettings,
        SelectionResult,
        evaluate_chain,
        pretrain,
        reoptimise,
        train_on_upstream_outputs,
    )

__all__ = [
    "prepare_selection_data",
    "SelectionData",
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
    "reoptimise",
    "train_on_upstream_outputs",
    "evaluate_chain",
    "grid_search",
    "darts_search",
    "DartsSupernet",
    "spos_search",
    "select",
    "METHODS",
]



def _methods() -> dict:
    from hepms.select.darts import darts_search
    from hepms.select.grid import grid_search
    from hepms.select.spos import spos_search

    return {"grid": grid_search, "darts": darts_search, "spos": spos_search}


def __getattr__(name: str) -> Any:
    if name == "METHODS":  # name -> search function
        value = _methods()
    elif name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module 'hepms.select' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


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
    methods = _methods()
    try:
        fn = methods[method]
    except KeyError:
        raise ValueError(f"unknown selection method {method!r}; choose from {sorted(methods)}") from None
    return fn(space, train, val, settings, pretrained=pretrained)
