"""Backend selection. Each backend is a small class that says why it cannot take an input.

    backend="auto"       the fastest available for the device and dtype (override: SYNTHCL_FAST_BACKEND)
    backend="reference"  plain PyTorch (synthcl_fast.reference), materializes the logits; always available
    backend="cpu"        fused C++ kernels (csrc/*_cpu.cpp) on CPU tensors
    backend="triton"     fused Triton kernels (backends/triton_*.py) on CUDA tensors (CPU: TRITON_INTERPRET=1)
    backend="cuda"       fused CUDA C++ kernels (csrc/*_cuda.cu) on CUDA tensors, float32/float16/bfloat16

An explicit backend that cannot run an input raises BackendUnavailableError naming the reason;
"auto" quietly takes the next one in its order.
"""

from __future__ import annotations

import os

import torch

from .. import reference
from ._ops import MODE_CODES, REDUCTION_CODES

BACKEND_ENV = "SYNTHCL_FAST_BACKEND"


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run the given input."""


class Backend:
    name = ""

    def unavailable_reason(self, device: torch.device, dtype: torch.dtype) -> str | None:
        """None when this backend can run inputs on `device` with `dtype`, else why not."""
        raise NotImplementedError

    def contrastive(self, anchors, candidates, anchor_labels, candidate_labels, temperature, exclude_self,
                    reduction, eps):
        raise NotImplementedError

    def positive_pair(self, a, b, target, mode, reduction, eps):
        raise NotImplementedError

    def symmetric_contrastive(self, anchors, candidates, anchor_labels, candidate_labels, temperature,
                              exclude_self, reduction, eps):
        """(row loss + column loss) / 2 in one call (CLIP's symmetric loss), or None where this backend has no
        such kernel: the caller then adds two one-direction calls."""
        return None


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


def gradient_in_forward(reduction, *inputs) -> bool:
    """For a scalar loss whose inputs need a gradient, the gradient is cheapest computed in the forward
    pass (see _ops.py); a per-row loss ("none") is differentiated by the recompute backward instead."""
    return reduction != "none" and torch.is_grad_enabled() and any(x.requires_grad for x in inputs)


class FusedBackend(Backend):
    """A backend whose kernels implement the three ops of backends/_ops.py."""

    def ops(self):
        """(contrastive_forward, positive_pair_forward) callables of this backend."""
        raise NotImplementedError

    def contrastive(self, anchors, candidates, anchor_labels, candidate_labels, temperature, exclude_self,
                    reduction, eps):
        contrastive_forward, _ = self.ops()
        return contrastive_forward(anchors, candidates, anchor_labels, candidate_labels, temperature, exclude_self,
                                   REDUCTION_CODES[reduction], eps,
                                   gradient_in_forward(reduction, anchors, candidates, temperature))[0]

    def positive_pair(self, a, b, target, mode, reduction, eps):
        _, positive_pair_forward = self.ops()
        grad_enabled = torch.is_grad_enabled()
        return positive_pair_forward(a, b, target, MODE_CODES[mode], REDUCTION_CODES[reduction], eps,
                                     grad_enabled and a.requires_grad, grad_enabled and b.requires_grad)[0]


class CpuBackend(FusedBackend):
    name = "cpu"

    def unavailable_reason(self, device, dtype):
        if device.type != "cpu":
            return f"it runs on CPU tensors only, got {device}"
        from .native import load_error

        return load_error()

    def ops(self):
        ops = torch.ops.synthcl_fast
        return ops.contrastive_forward, ops.positive_pair_forward


class TritonBackend(FusedBackend):
    name = "triton"

    def unavailable_reason(self, device, dtype):
        from .triton_support import unavailable_reason

        return unavailable_reason(device, dtype)

    def ops(self):
        from .triton_contrastive import contrastive_forward
        from .triton_positive_pair import positive_pair_forward

        return contrastive_forward, positive_pair_forward

    def symmetric_contrastive(self, anchors, candidates, anchor_labels, candidate_labels, temperature,
                              exclude_self, reduction, eps):
        from .triton_contrastive import symmetric_contrastive_forward

        return symmetric_contrastive_forward(anchors, candidates, anchor_labels, candidate_labels, temperature,
                                             exclude_self, REDUCTION_CODES[reduction], eps,
                                             gradient_in_forward(reduction, anchors, candidates, temperature))[0]


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

    ops = CpuBackend.ops  # the same registered ops: the dispatcher picks the CUDA kernels for CUDA tensors


BACKENDS: dict[str, Backend] = {b.name: b for b in (ReferenceBackend(), CpuBackend(), TritonBackend(),
                                                   CudaBackend())}
# "cuda" is not in the automatic order until its kernels have been checked and timed on a GPU
# (tests/test_cuda_backend.py, benchmarks/gpu_sweep.py): backend="cuda" asks for it explicitly.
AUTO_ORDER = {"cpu": ("cpu", "reference"), "cuda": ("triton", "reference")}


def available_backends(device: torch.device | str, dtype: torch.dtype = torch.float32) -> dict[str, str | None]:
    """Each backend's name mapped to None if it can run on (device, dtype), else the reason it cannot."""
    device = torch.device(device)
    return {name: backend.unavailable_reason(device, dtype) for name, backend in BACKENDS.items()}


# Under torch.compile, read in plain Python and taken as a constant: torch 2.4's dynamo cannot constant-fold
# os.environ.get of a missing key (a graph break, "constant fold exception: KeyError").
@torch.compiler.assume_constant_result
def backend_override() -> str:
    """The backend named by SYNTHCL_FAST_BACKEND, or "auto"."""
    return os.environ.get(BACKEND_ENV, "auto")


def resolve_backend(name: str, device: torch.device, dtype: torch.dtype) -> Backend:
    """The backend that will run an input on (device, dtype) for backend=`name`."""
    if name == "auto":
        name = backend_override()
    if name == "auto":
        for candidate in AUTO_ORDER.get(device.type, ("reference",)):
            if BACKENDS[candidate].unavailable_reason(device, dtype) is None:
                return BACKENDS[candidate]
        return BACKENDS["reference"]
    if name not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {sorted(BACKENDS)}, got {name!r}")
    reason = BACKENDS[name].unavailable_reason(device, dtype)
    if reason is not None:
        raise BackendUnavailableError(f"backend {name!r} cannot run {dtype} inputs on {device}: {reason}")
    return BACKENDS[name]
