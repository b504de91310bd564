"""The workflows behind ``hepms train`` / ``evaluate`` / ``plot`` / ``scan``: configured runs,
repeated trials, tables and figures.

"Study" here is a *study of a scan*: one entry of ``scan.studies`` (a table or box plot of runs).
Not to be confused with the *selection study* of ``hepms select`` (:mod:`hepms.select`) or the
*reference study* (the published analysis reproduced in ``analyses/htautau``).

The ``hepms`` command line (``train``, ``evaluate``, ``plot``, ``scan``) is a thin layer over
this package:

* :mod:`hepms.study.dataset`: sample -> dataset (cached) -> split -> standardise;
* :mod:`hepms.study.runner`: one training run from a configuration (:func:`run_trial`);
* :mod:`hepms.study.single`: one model step by step (``train`` / ``evaluate`` / ``plot``);
* :mod:`hepms.study.plan`: ``scan.studies`` expanded into configurations;
* :mod:`hepms.study.scan`: resumable repeated trials, then :mod:`hepms.study.tables` and
  :mod:`hepms.study.plots`.

The configuration itself is :mod:`hepms.config` (read by the engine :mod:`hepms.config_engine`).
"""
from __future__ import annotations

__all__ = ["run_scan", "train_run", "evaluate_run", "plot_run", "prepare_data", "run_trial"]


def __getattr__(name: str):
    # Lazy: the CLI's --help must not import torch-heavy or plotting modules.
    if name == "run_scan":
        from hepms.study.scan import run_scan

        return run_scan
    if name in ("train_run", "evaluate_run", "plot_run"):
        from hepms.study import single

        return getattr(single, name)
    if name == "prepare_data":
        from hepms.study.dataset import prepare_data

        return prepare_data
    if name == "run_trial":
        from hepms.study.runner import run_trial

        return run_trial
    raise AttributeError(f"module 'hepms.study' has no attribute {name!r}")
