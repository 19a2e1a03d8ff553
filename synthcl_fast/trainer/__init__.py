"""The slim trainer of "Synthetic Data Can Also Teach" (Wu et al., AAAI 2023) on synthcl_fast's losses.

    synthcl-train compare                      # SimCLR vs SynthCL on scikit-learn's digits, 3 seeds, a table
    synthcl-train train --method synthcl       # one run into runs/...
    synthcl-train resume RUN_DIR               # continue a run exactly where its last checkpoint left it

Layout: config (options and checks), data (datasets), augment (kornia views), models (encoder, head),
gan (G, G_ema, D), loop (the joint step, epochs, checkpoints), guard (NaN/Inf caught on the device),
evaluate (linear probe, kNN), checkpoint (atomic, verified files), distributed (torchrun), plots, compare, cli.
"""

try:
    from .checkpoint import CheckpointError, load_checkpoint
    from .config import METHODS, ConfigError, TrainConfig
    from .loop import NonFiniteLossError, RunResult, Trainer, train
except ModuleNotFoundError as error:  # a plain `pip install synthcl_fast` has the losses, not the trainer's libraries
    if error.name is None or error.name.split(".")[0] in ("synthcl_fast", "torch"):
        raise
    raise ModuleNotFoundError(f"the trainer (synthcl-train, synthcl_fast.trainer) needs {error.name}, which is not "
                              "installed: pip install 'synthcl_fast[train]' installs the trainer's libraries",
                              name=error.name) from error

__all__ = ["CheckpointError", "ConfigError", "METHODS", "NonFiniteLossError", "RunResult", "TrainConfig", "Trainer",
           "load_checkpoint", "train"]
