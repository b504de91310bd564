"""hepms: multi-step deep learning on jagged collider data.

The public API is re-exported here; each concern lives in its own module.
"""
from __future__ import annotations

__version__ = "0.1.0"

from hepms.ops import (  # noqa: F401
    extension_available,
    segment_amax,
    segment_logsumexp,
    segment_max,
    segment_mean,
    segment_softmax,
    segment_sum,
    set_validation,
    validation,
)

from hepms import physics  # noqa: F401,E402
from hepms.jagged import Jagged, from_jagged, to_jagged  # noqa: F401,E402

# Multi-step model, data, training and metrics (issue 5).
from hepms import data, metrics, nn, train  # noqa: F401,E402
from hepms.data import Standardizer, TauEventData, build_dataset, split  # noqa: F401,E402
from hepms.nn import DeepSets, EventClassifier, MultiStep, TauID  # noqa: F401,E402
from hepms.train import Trainer, TrainConfig  # noqa: F401,E402
