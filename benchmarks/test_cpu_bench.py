"""Every loss on CPU tensors: the reference, torch.compile of it, the fused cpu backend and the peer libraries
a user would pick instead, forward + backward, time and peak memory, side by side in one run.

    pytest benchmarks/ --benchmark-only [--full-sweep]
    python benchmarks/report.py && python benchmarks/plot.py      # table and plot of the newest run

The cases, implementations and protocol: benchmarks/cases.py and benchmarks/conftest.py.
"""

import torch

DEVICE = torch.device("cpu")


def test_loss_step(measure_loss_step, case, implementation):
    measure_loss_step(case, implementation, DEVICE)
