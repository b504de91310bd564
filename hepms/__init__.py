"""hepms: multi-step deep learning on jagged collider data.

The public API is re-exported here; each concern lives in its own module.
"""
from __future__ import annotations

__version__ = "0.1.0"

from hepms.ops import (  # noqa: F401
    extension_available,
    segment_max,
    segment_mean,
    segment_sum,
    set_validation,
    validation,
)

from hepms import physics  # noqa: F401,E402
from hepms.jagged import Jagged, from_jagged, to_jagged  # noqa: F401,E402
