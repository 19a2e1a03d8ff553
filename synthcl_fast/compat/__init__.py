"""Drop-in replacements for the contrastive losses of other libraries, computed with synthcl_fast's fused op.

Same constructor and call signatures, same numbers (values and gradients) as the library they replace;
swap one import line:

    lightly                  from synthcl_fast.compat.lightly import NTXentLoss
    pytorch-metric-learning  from synthcl_fast.compat.pytorch_metric_learning import NTXentLoss, SupConLoss
    solo-learn               from synthcl_fast.compat.solo import simclr_loss_func
    open_clip                from synthcl_fast.compat.open_clip import ClipLoss

None of these modules imports the library it replaces. An option of the library that the fused op cannot
compute raises NotImplementedError naming it; none is silently ignored. tests/test_compat.py compares each
against the real package.
"""
