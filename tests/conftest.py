"""Shared test helpers. Every fused kernel writes into outputs pre-filled with NaN in this session
(SYNTHCL_FAST_POISON_OUTPUTS=1), so an element a kernel forgets to write fails the comparison."""

import os

os.environ.setdefault("SYNTHCL_FAST_POISON_OUTPUTS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

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


class FailOnHostSync(TorchDispatchMode):
    """Fails on any read of a tensor's value by the host (.item(), int(), float(), bool() of a tensor all go
    through aten._local_scalar_dense), and on a copy of a device tensor to the CPU.

    `device_values` stands in for a GPU on a CPU-only machine: those tensors, and every tensor an op computes
    from them, count as device memory, and only reading those fails; a tensor made by the host alone (kornia's
    random parameters, which it samples on the CPU also when training on a GPU) may be read. Blind spots of that
    stand-in: .tolist() and .numpy() of a CPU tensor do not reach the dispatcher."""

    def __init__(self, device_values=()):
        super().__init__()
        self._simulated = bool(device_values)
        self._device_ids, self._alive = set(), []  # ids of the simulated device's tensors, kept alive (no id reuse)
        for tensor in device_values:
            self._mark(tensor)

    def _mark(self, tensor):
        self._device_ids.add(id(tensor))
        self._alive.append(tensor)

    def _on_device(self, tensor) -> bool:
        return tensor.device.type != "cpu" or (self._simulated and id(tensor) in self._device_ids)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [t for t in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        from_device = any(self._on_device(t) for t in inputs)
        if func is torch.ops.aten._local_scalar_dense.default and (from_device or not self._simulated):
            raise AssertionError(f"host synchronization: {func} on {args[0].device}")
        if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
            source = args[1] if func is torch.ops.aten.copy_.default else args[0]
            target = args[0].device if func is torch.ops.aten.copy_.default else kwargs.get("device")
            if source.device.type != "cpu" and target is not None and torch.device(target).type == "cpu":
                raise AssertionError(f"host synchronization: {func} to the CPU")
        out = func(*args, **kwargs)
        if self._simulated and from_device:
            for tensor in torch.utils._pytree.tree_leaves(out):
                if isinstance(tensor, torch.Tensor):
                    self._mark(tensor)
        return out


def representation_floor(dtype, tol, upstream):
    """Gradients are rounded to `dtype`: for a scalar loss the gradient is saved rounded (for upstream 1) and
    scaled by the upstream gradient u in backward, two roundings of up to half a spacing each, so up to
    (1 + |u|) / 2 subnormal spacings from the exact value where the gradient is subnormal (fp16). Relative
    to a tolerance tol, that is a floor of (1 + |u|) spacing / tol on the scale."""
    if dtype == torch.float64:
        return 0.0
    spacing = torch.finfo(dtype).tiny * torch.finfo(dtype).eps
    return (1 + float(upstream.abs().max())) * spacing / tol


def min_row_norm(*tensors):
    return min(float(x.detach().double().norm(dim=1).min()) for x in tensors)


def total_upstream_weight(reduction, upstream, n_rows):
    """sum_i |dLoss/dL_i|: how many rows' worth of terms the gradients add up (and may cancel)."""
    if reduction == "none":
        return float(upstream.abs().sum())
    return float(upstream.abs()) * (n_rows if reduction == "sum" else 1)


def cancellation_floor(terms, dtype, tol):
    """A sum that cancels carries rounding error ~ (operation depth x number of terms) eps * sum |terms|
    in the compute precision (fp64 for fp64 inputs, else fp32); seen up to ~20 eps here (exp, subtract,
    scale, then sums over rows and columns). Relative to tol, a floor of 64 eps * terms / tol."""
    eps = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps
    return 64 * eps * terms / tol


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
def one_torch_thread():
    """Tiny models gain nothing from threads, and one thread is immune to a busy machine's oversubscription
    (the trainer's tests use it for every test: pytestmark = pytest.mark.usefixtures("one_torch_thread"))."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(1234)


# ------------------------------------------------------------------------------------------------------------
# Conformance lanes: which (backend, device) pairs this session holds to the contract (tests/test_conformance.py)
# ------------------------------------------------------------------------------------------------------------

import random  # noqa: E402
import zlib  # noqa: E402
from dataclasses import dataclass  # noqa: E402

INTERPRETER_SESSION = os.environ.get("TRITON_INTERPRET") == "1"
# Inputs are fresh random draws in every session; the seed is in the header of the run and in every failure
# message, and SYNTHCL_FAST_TEST_SEED=<seed> reproduces a run.
SEED = int(os.environ.get("SYNTHCL_FAST_TEST_SEED", random.randrange(2**31)))
ALL_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def pytest_report_header(config):
    return f"synthcl_fast: SYNTHCL_FAST_TEST_SEED={SEED}"


@dataclass(frozen=True)
class Lane:
    """One backend on one device, with the dtypes it takes and the tolerances it declares."""

    name: str
    device: torch.device

    @property
    def backend(self):
        return BACKENDS[self.name]

    @property
    def fused(self) -> bool:
        return self.name != "reference"

    @property
    def dtypes(self) -> tuple:
        return tuple(d for d in ALL_DTYPES if self.backend.unavailable_reason(self.device, d) is None)

    @property
    def exact_dtype(self) -> torch.dtype:
        """The most precise dtype this lane takes (float64, or float32 for the cuda backend)."""
        return self.dtypes[0]

    def tolerances(self, dtype) -> tuple[float, float]:
        return self.backend.tolerances(self.device)[dtype]

    def __str__(self):
        return f"{self.name}-{self.device.type}"


def conformance_lanes() -> list[Lane]:
    """Every backend that runs here, on every device here. The interpreter session (TRITON_INTERPRET=1, run by
    tests/test_triton.py in a subprocess) checks the Triton kernels only: the others ran in the main session."""
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    return [Lane(name, device) for device in devices for name, backend in BACKENDS.items()
            if (name == "triton" or not INTERPRETER_SESSION)
            and backend.unavailable_reason(device, torch.float32) is None]


def lane_param(lane: Lane, *values):
    """pytest.param for a lane (and more values), marked gpu on CUDA."""
    marks = [pytest.mark.gpu] if lane.device.type == "cuda" else []
    ids = "-".join([str(lane)] + [_param_id(v) for v in values])
    return pytest.param(lane, *values, marks=marks, id=ids)


def _param_id(value) -> str:
    if isinstance(value, tuple):
        return "x".join(map(str, value))
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    return str(value)


@pytest.fixture
def rng(request):
    """A generator seeded by the session seed and the test's id: fresh inputs per session, reproducible."""
    return torch.Generator().manual_seed(SEED * 2**32 + zlib.crc32(request.node.nodeid.encode()))
