"""Drop-in replacements for the contrastive losses of other libraries, computed with synthcl_fast's fused op.

Same constructor and call signatures, same numbers (values and gradients) as the library they replace;
swap one import line:

    lightly                  from synthcl_fast.compat.lightly import NTXentLoss, DCLLoss, DCLWLoss
    pytorch-metric-learning  from synthcl_fast.compat.pytorch_metric_learning import (NTXentLoss, SupConLoss,
                                                                                      CrossBatchMemory)
    solo-learn               from synthcl_fast.compat.solo import simclr_loss_func
    open_clip                from synthcl_fast.compat.open_clip import ClipLoss

None of these modules imports the library it replaces when it is imported (the pytorch-metric-learning classes
extend the library's base classes, imported on first use, where it is installed). An option of the library that
the drop-in does not compute raises an error naming it; none is silently ignored. Losses come back in the dtype
the library returns. tests/test_compat.py compares each against the real package; docs/ecosystem.md lists every
difference.
"""
