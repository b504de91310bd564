"""hepms: multi-step deep learning on jagged collider data.

The public API is re-exported here; each concern lives in its own module. The re-exports are lazy
(PEP 562): ``import hepms`` imports neither torch nor the scikit-hep stack, so the ``hepms``
command answers ``--help`` at once; a name is imported from its module on first use
(``hepms.segment_sum`` imports :mod:`hepms.ops` and torch, ``hepms.to_jagged`` awkward, ...).

The segment ops are registered with torch (``torch.ops.hepms.*``, needed to load exported models)
as soon as both hepms and torch are imported, in either order.
"""
from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    **dict.fromkeys(
        ("extension_available", "offsets_from_counts", "segment_amax", "segment_logsumexp",
         "segment_max", "segment_mean", "segment_mean_max", "segment_softmax", "segment_sum", "set_validation",
         "validation"),
        "hepms.ops",
    ),
    **dict.fromkeys(("Jagged", "from_jagged", "to_jagged"), "hepms.jagged"),
    **dict.fromkeys(("FeatureSpec", "feature_tensors", "group_by_jet"), "hepms.features"),
    "load_model": "hepms.model_file",
    **dict.fromkeys(("Standardizer", "TauEventData", "build_dataset", "split"), "hepms.data"),
    **dict.fromkeys(("DeepSets", "EventClassifier", "MultiStep", "TauID"), "hepms.nn"),
    **dict.fromkeys(("Trainer", "TrainConfig"), "hepms.train"),
}
# submodules reachable as attributes (``hepms.physics.delta_r``) without an explicit import
_SUBMODULES = ("data", "features", "jagged", "metrics", "model_file", "nn", "ops", "physics", "train")

__all__ = ["__version__", *sorted(_LAZY), *_SUBMODULES]

if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from hepms import data, features, jagged, metrics, model_file, nn, ops, physics, train  # noqa: F401
    from hepms.features import FeatureSpec, feature_tensors, group_by_jet  # noqa: F401
    from hepms.model_file import load_model  # noqa: F401
    from hepms.data import Standardizer, TauEventData, build_dataset, split  # noqa: F401
    from hepms.jagged import Jagged, from_jagged, to_jagged  # noqa: F401
    from hepms.nn import DeepSets, EventClassifier, MultiStep, TauID  # noqa: F401
    from hepms.ops import (  # noqa: F401
        extension_available,
        offsets_from_counts,
        segment_amax,
        segment_logsumexp,
        segment_max,
        segment_mean,
        segment_mean_max,
        segment_softmax,
        segment_sum,
        set_validation,
        validation,
    )
    from hepms.train import Trainer, TrainConfig  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"hepms.{name}")
    raise AttributeError(f"module 'hepms' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _RegisterOpsWithTorch:
    """One-shot import hook (a meta path finder): imports :mod:`hepms.ops` right after torch.

    ``torch.jit.load`` / ``torch.export.load`` of an exported hepms model need the ops registered;
    before the imports were lazy, ``import hepms`` did that, and code written as
    ``import hepms; import torch; torch.jit.load(...)`` must keep working.
    """

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "torch":
            return None
        import importlib.util  # here, not at the top: it costs ~20 ms that --help need not pay

        _remove_hook()
        spec = importlib.util.find_spec("torch")
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_torch = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            exec_torch(module)
            try:
                importlib.import_module("hepms.ops")
            except Exception as error:  # never break `import torch`; the first op use re-raises
                import logging

                logging.getLogger(__name__).warning("hepms ops not registered: %s", error)

        spec.loader.exec_module = exec_module  # this spec's own loader instance
        return spec


def _remove_hook() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _RegisterOpsWithTorch)]


if "torch" in sys.modules:
    importlib.import_module("hepms.ops")  # torch is loaded already: registering costs little
else:
    sys.meta_path.insert(0, _RegisterOpsWithTorch())
