"""The Triton backend's ops under the names of backends/_ops.py (TritonBackend.ops); imports triton, so it is
imported on first use only. One module per op family (layout: triton_tiles.py)."""

from .triton_contrastive import (contrastive_forward, contrastive_variant_forward,  # noqa: F401
                                 symmetric_contrastive_forward)
from .triton_hard_negatives import hard_negative_stats_backward, hard_negative_stats_forward  # noqa: F401
from .triton_positive_pair import positive_pair_forward  # noqa: F401
