"""Backend selection. Each backend is a small class that says why it cannot take an input, what it can do
(the symmetric CLIP op or not), and how close to the float64 reference it promises to be.

    backend="auto"       the fastest available for the device and dtype (override: SYNTHCL_FAST_BACKEND)
    backend="reference"  plain PyTorch (synthcl_fast.reference), materializes the logits; always available
    backend="cpu"        fused C++ kernels (csrc/*_cpu.cpp) on CPU tensors
    backend="triton"     fused Triton kernels (backends/triton_*.py) on CUDA tensors (CPU: TRITON_INTERPRET=1)
    backend="cuda"       fused CUDA C++ kernels (csrc/*_cuda.cu) on CUDA tensors, float32/float16/bfloat16

An explicit backend that cannot run an input raises BackendUnavailableError naming the reason. "auto" takes
the first available backend of its order; when that means the materializing reference although a fused
backend exists for the device, it warns once, naming why the fused ones cannot run.
"""

from __future__ import annotations

import os
import warnings

import torch

from .. import reference
from ._ops import accumulate_dtype, assume_constant_result, denominator_code, mode_code, reduction_code

BACKEND_ENV = "SYNTHCL_FAST_BACKEND"


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run the given input."""


# Relative error against the float64 reference on the same (rounded) inputs, (loss value, gradients), by
# input dtype. Values of 16-bit inputs are computed in fp32 from exactly representable inputs: fp32 accuracy.
# Gradients come back in the input dtype: bf16 keeps 8 bits (2^-9 relative per element), fp16 11 bits.
EXACT_PRODUCTS = {
    torch.float64: (1e-10, 1e-10),  # only the summation order differs
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-5, 2e-3),
    torch.bfloat16: (1e-5, 1e-2),
}


class Backend:
    name = ""
    has_symmetric_op = False  # CLIP's symmetric loss from one set of tiles (else two one-direction calls)

    def unavailable_reason(self, device: torch.device, dtype: torch.dtype) -> str | None:
        """None when this backend can run inputs on `device` with `dtype`, else why not."""
        raise NotImplementedError

    def tolerances(self, device: torch.device) -> dict[torch.dtype, tuple[float, float]]:
        """(value, gradient) relative error this backend promises against the float64 reference, by dtype.
        The one table the conformance suite (tests/test_conformance.py) holds every backend to."""
        return EXACT_PRODUCTS

    def contrastive(self, anchors, candidates, anchor_labels, candidate_labels, temperature, exclude_self,
                    reduction, eps):
        raise NotImplementedError

    def symmetric_contrastive(self, anchors, candidates, anchor_labels, candidate_labels, temperature,
                              exclude_self, reduction, eps):
        """(row loss + column loss) / 2 in one call; only where has_symmetric_op."""
        raise NotImplementedError(f"backend {self.name!r} has no symmetric op")

    def positive_pair(self, a, b, target, mode, reduction, eps):
        raise NotImplementedError


class ReferenceBackend(Backend):
    name = "reference"

    def unavailable_reason(self, device, dtype):
        return None

    def contrastive(self, anchors, candidates, anchor_labels, candidate_labels, temperature, exclude_self,
                    reduction, eps):
        return reference.contrastive_loss(anchors, candidates, anchor_labels, candidate_labels,
                                          temperature=temperature, exclude_self=exclude_self,
                                          reduction=reduction, eps=eps)

    def positive_pair(self, a, b, target, mode, reduction, eps):
        return reference.positive_pair_loss(a, b, target, mode=mode, reduction=reduction, eps=eps)


def gradient_in_forward(reduction, anchors, candidates, temperature) -> list[bool]:
    """The forward's compute_grad mask (_ops.py): for a scalar loss the gradients are cheapest computed in the
    forward pass, each only for an input that requires grad (a frozen side, a float temperature: no products);
    a per-row loss ("none") is differentiated by the recompute backward instead (all off)."""
    if reduction == "none" or not torch.is_grad_enabled():
        return [False, False, False]
    return [anchors.requires_grad, candidates.requires_grad, temperature.requires_grad]


class FusedBackend(Backend):
    """A backend whose kernels implement the ops of backends/_ops.py."""

    def ops(self):
        """An object with the backend's contrastive_forward and positive_pair_forward (and, where
        has_symmetric_op, symmetric_contrastive_forward) callables."""
        raise NotImplementedError

    def _contrastive_call(self, op, anchors, candidates, anchor_labels, candidate_labels, temperature,
                          exclude_self, reduction, eps):
        return op(anchors, candidates, anchor_labels, candidate_labels, temperature, exclude_self,
                  reduction_code(reduction), eps, gradient_in_forward(reduction, anchors, candidates, temperature))[0]

    def contrastive(self, *args):
        return self._contrastive_call(self.ops().contrastive_forward, *args)

    def symmetric_contrastive(self, *args):
        return self._contrastive_call(self.ops().symmetric_contrastive_forward, *args)

    def contrastive_variant(self, anchors, candidates, anchor_labels, candidate_labels, temperature, exclude_self,
                            reduction, eps, variant):
        """The op with a variant's options (synthcl_fast.variants), where FUSED_OPTIONS lists them all."""
        if variant.beta != 0.0 or variant.tau_plus != 0.0:
            return self._hard_negative_variant(anchors, candidates, anchor_labels, candidate_labels, temperature,
                                               exclude_self, reduction, eps, variant)
        weight = variant.positive_weight
        if weight is None:
            weight = torch.ones(anchors.shape[0], dtype=accumulate_dtype(anchors.dtype), device=anchors.device)
        return self.ops().contrastive_variant_forward(
            anchors, candidates, anchor_labels, candidate_labels, temperature, weight,
            denominator_code(variant.denominator), exclude_self, reduction_code(reduction), eps,
            gradient_in_forward(reduction, anchors, candidates, temperature))[0]

    def _hard_negative_variant(self, anchors, candidates, anchor_labels, candidate_labels, temperature,
                               exclude_self, reduction, eps, variant):
        """HCL's hard / debiased negatives (beta, tau_plus; denominator "all" or "negatives"): the row
        statistics from the fused hard_negative_stats op, the loss from them by the reference's own per-row
        code (reference.hard_negative_row_loss), differentiated by autograd through both."""
        lse, positive_mean, n_negative, n_positive, _, _ = self.ops().hard_negative_stats_forward(
            anchors, candidates, anchor_labels, candidate_labels, temperature, variant.beta, exclude_self, eps)
        row_loss = reference.hard_negative_row_loss(
            lse[:, 0], lse[:, 1], lse[:, 2], positive_mean, n_negative, n_positive, temperature, variant.beta,
            variant.tau_plus, variant.denominator, variant.positive_weight)
        return reference.reduce_rows(row_loss, n_positive > 0, reduction)

    def positive_pair(self, a, b, target, mode, reduction, eps):
        grad_enabled = torch.is_grad_enabled()
        return self.ops().positive_pair_forward(a, b, target, mode_code(mode), reduction_code(reduction), eps,
                                                grad_enabled and a.requires_grad,
                                                grad_enabled and b.requires_grad)[0]


class CpuBackend(FusedBackend):
    name = "cpu"

    def unavailable_reason(self, device, dtype):
        if device.type != "cpu":
            return f"it runs on CPU tensors only, got {device}"
        from .native import load_error

        return load_error()

    def ops(self):
        return torch.ops.synthcl_fast


class TritonBackend(FusedBackend):
    name = "triton"
    has_symmetric_op = True

    def unavailable_reason(self, device, dtype):
        from .triton_support import unavailable_reason

        return unavailable_reason(device, dtype)

    def tolerances(self, device):
        if device.type != "cuda":  # the interpreter: products in numpy, exact in fp32 (see triton_support)
            return EXACT_PRODUCTS
        from .triton_support import fp32_precision

        # float32 through tf32 tensor cores (10-bit operands) unless SYNTHCL_FAST_TRITON_FP32_PRECISION asks
        # for ieee; 16-bit operands are exact and their products accumulate in fp32.
        fp32 = EXACT_PRODUCTS[torch.float32] if fp32_precision() == "ieee" else (3e-4, 3e-4)
        return {**EXACT_PRODUCTS, torch.float32: fp32}

    def ops(self):
        from . import triton_ops

        return triton_ops


class CudaBackend(FusedBackend):
    """The ahead-of-time compiled CUDA kernels of csrc/*_cuda.cu (the same torch.ops as "cpu", CUDA key)."""

    name = "cuda"

    def unavailable_reason(self, device, dtype):
        if device.type != "cuda":
            return f"it runs on CUDA tensors only, got {device}"
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            return f"its kernels take float32, float16 or bfloat16 features, got {dtype}"
        from .native import load_error, registered_cuda_kernels

        error = load_error()
        if error is not None:
            return error
        if not registered_cuda_kernels():
            return ("the compiled extension has no CUDA kernels (built without nvcc or without CUDA in torch, "
                    "or compiled on first use, which builds the CPU kernels only): reinstall with "
                    "`pip install --no-build-isolation -e .` where nvcc is found")
        return None

    def tolerances(self, device):
        # float32 rows are split into bf16 hi + lo parts, three products each: ~2^-17 relative per product.
        return {**EXACT_PRODUCTS, torch.float32: (3e-4, 3e-4)}

    ops = CpuBackend.ops  # the same registered ops: the dispatcher picks the CUDA kernels for CUDA tensors


BACKENDS: dict[str, Backend] = {b.name: b for b in (ReferenceBackend(), CpuBackend(), TritonBackend(),
                                                   CudaBackend())}
# "cuda" is not in the automatic order until its kernels have been checked and timed on a GPU
# (tests/test_conformance.py on CUDA, benchmarks/gpu_sweep.py): backend="cuda" asks for it explicitly.
AUTO_ORDER = {"cpu": ("cpu", "reference"), "cuda": ("triton", "reference")}

_warned_fallbacks: set[tuple[str, torch.dtype]] = set()


def available_backends(device: torch.device | str, dtype: torch.dtype = torch.float32) -> dict[str, str | None]:
    """Each backend's name mapped to None if it can run on (device, dtype), else the reason it cannot."""
    device = torch.device(device)
    return {name: backend.unavailable_reason(device, dtype) for name, backend in BACKENDS.items()}


def _auto_backend(device: torch.device, dtype: torch.dtype) -> Backend:
    order = AUTO_ORDER.get(device.type, ("reference",))
    reasons = {}
    for candidate in order:
        reason = BACKENDS[candidate].unavailable_reason(device, dtype)
        if reason is None:
            break
        reasons[candidate] = reason
    if candidate != "reference" or not reasons or torch.compiler.is_compiling():
        return BACKENDS[candidate]
    key = (device.type, dtype)
    if key not in _warned_fallbacks:
        _warned_fallbacks.add(key)
        why = "; ".join(f"{name}: {reason}" for name, reason in reasons.items())
        warnings.warn(f"synthcl_fast: backend='auto' falls back to the materializing reference for {dtype} on "
                      f"{device.type} (O(R K) memory, slow), because no fused backend can run there ({why})",
                      RuntimeWarning, stacklevel=4)
    return BACKENDS["reference"]


# Under torch.compile, read in plain Python and taken as a constant: torch 2.4's dynamo cannot constant-fold
# os.environ.get of a missing key (a graph break, "constant fold exception: KeyError").
@assume_constant_result  # without importing dynamo on a CPU user's first call
def backend_override() -> str:
    """The backend named by SYNTHCL_FAST_BACKEND, or "auto"."""
    return os.environ.get(BACKEND_ENV, "auto")


def resolve_backend(name: str, device: torch.device, dtype: torch.dtype) -> Backend:
    """The backend that will run an input on (device, dtype) for backend=`name`."""
    if name == "auto":
        name = backend_override()
    if name == "auto":
        return _auto_backend(device, dtype)
    if name not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {sorted(BACKENDS)}, got {name!r}")
    reason = BACKENDS[name].unavailable_reason(device, dtype)
    if reason is not None:
        raise BackendUnavailableError(f"backend {name!r} cannot run {dtype} inputs on {device}: {reason}")
    return BACKENDS[name]
