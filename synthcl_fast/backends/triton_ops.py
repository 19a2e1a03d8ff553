"""The Triton backend's ops under the names of backends/_ops.py (TritonBackend.ops); imports triton, so it is
imported on first use only."""

from .triton_contrastive import contrastive_forward, symmetric_contrastive_forward  # noqa: F401
from .triton_positive_pair import positive_pair_forward  # noqa: F401
