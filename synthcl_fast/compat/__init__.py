"""Drop-in replacements for the contrastive losses of other libraries, computed with synthcl_fast's fused op.

Same constructor and call signatures, same numbers (values and gradients) as the library they replace;
swap one import line:

    from lightly.loss import NTXentLoss                      ->  from synthcl_fast.compat.lightly import NTXentLoss
    from pytorch_metric_learning.losses import NTXentLoss    ->  from synthcl_fast.compat.pytorch_metric_learning import NTXentLoss
    from pytorch_metric_learning.losses import SupConLoss    ->  from synthcl_fast.compat.pytorch_metric_learning import SupConLoss
    from solo.losses.simclr import simclr_loss_func         ->  from synthcl_fast.compat.solo import simclr_loss_func
    from open_clip.loss import ClipLoss                      ->  from synthcl_fast.compat.open_clip import ClipLoss

None of these modules imports the library it replaces. An option of the library that the fused op cannot
compute raises NotImplementedError naming it; none is silently ignored. tests/test_compat.py compares each
against the real package.
"""
