"""The slim trainer of "Synthetic Data Can Also Teach" (Wu et al., AAAI 2023) on synthcl_fast's losses.

    synthcl-train compare                      # SimCLR vs SynthCL on scikit-learn's digits, 3 seeds, a table
    synthcl-train train --method synthcl       # one run into runs/...
    synthcl-train resume RUN_DIR               # continue a run exactly where its last checkpoint left it

Layout: config (options and checks), data (datasets), augment (kornia views), models (encoder, head),
gan (G, G_ema, D), loop (the joint step, epochs, checkpoints), guard (NaN/Inf caught on the device),
evaluate (linear probe, kNN),
checkpoint (atomic, verified files), distributed (torchrun), plots, compare, cli.
"""

from .checkpoint import CheckpointError, load_checkpoint
from .config import METHODS, ConfigError, TrainConfig
from .loop import NonFiniteLossError, RunResult, Trainer, train

__all__ = ["CheckpointError", "ConfigError", "METHODS", "NonFiniteLossError", "RunResult", "TrainConfig", "Trainer",
           "load_checkpoint", "train"]
