"""synthcl_fast: fused contrastive losses and the "Synthetic Data Can Also Teach" trainer.

    import synthcl_fast.losses as L
    loss = L.nt_xent(z1, z2, temperature=0.5)
"""

__version__ = "0.1.0"

from . import losses, reference  # noqa: E402,F401
from .backends import BackendUnavailableError, available_backends  # noqa: E402,F401
