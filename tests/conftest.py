"""Shared test helpers. Every fused kernel writes into outputs pre-filled with NaN in this session
(SYNTHCL_FAST_POISON_OUTPUTS=1), so an element a kernel forgets to write fails the comparison."""

import os

os.environ.setdefault("SYNTHCL_FAST_POISON_OUTPUTS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from synthcl_fast.backends import BACKENDS  # noqa: E402


def relative_error(actual: torch.Tensor, expected: torch.Tensor, floor: float = 0.0) -> float:
    """max |actual - expected| / max(max |expected|, floor) in float64 (NaN anywhere: infinite error).

    `floor` is the size of the terms that cancel into `expected` when it is much smaller than them (the
    input gradient is exactly 0 for D = 1, say): rounding errors are relative to those terms, not to 0."""
    actual, expected = actual.detach().double(), expected.detach().double()
    if actual.shape != expected.shape:
        raise AssertionError(f"shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    if actual.numel() == 0:
        return 0.0
    if torch.isnan(actual).any() or torch.isnan(expected).any():
        return float("inf")
    scale = expected.abs().max().clamp_min(max(floor, 1e-30))
    return float((actual - expected).abs().max() / scale)


def assert_close(actual, expected, tol, what="", floor=0.0):
    err = relative_error(actual, expected, floor)
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e}"


def fused_cpu_backends():
    """Names of fused backends that run on CPU tensors in this environment."""
    device = torch.device("cpu")
    return [name for name, backend in BACKENDS.items()
            if name != "reference" and backend.unavailable_reason(device, torch.float32) is None]


def labels_with_positives(n_rows: int, max_group: int, generator: torch.Generator) -> torch.Tensor:
    """Labels in groups of 1..max_group rows (so each row has 0..max_group-1 others with its label), shuffled."""
    labels, label = [], 0
    while len(labels) < n_rows:
        size = int(torch.randint(1, max_group + 1, (1,), generator=generator))
        labels += [label] * size
        label += 1
    return torch.tensor(labels[:n_rows])[torch.randperm(n_rows, generator=generator)]


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(1234)
