"""The CUDA backend's availability and registration, on any machine (no GPU needed). Its values, gradients,
numerics, determinism, opcheck, compile, streams and CUDA-graph capture are the conformance suite's
(tests/test_conformance.py: the cuda lane runs on a GPU machine, marker gpu)."""

import json
from pathlib import Path

import pytest
import torch

import synthcl_fast
import synthcl_fast.losses as L
from synthcl_fast.backends import BACKENDS, BackendUnavailableError, resolve_backend
from synthcl_fast.backends.native import has_cuda_kernels, load_error


# ---- everywhere: availability and registration -------------------------------------------------------

# Every op of csrc/bindings.cpp; each has a CPU and, in a build with nvcc, a CUDA kernel.
OPS = ("contrastive_forward", "contrastive_backward", "contrastive_variant_forward", "contrastive_variant_backward",
       "hard_negative_stats_forward", "hard_negative_stats_backward", "positive_pair_forward")

def _built_with_cuda() -> bool:
    info = Path(synthcl_fast.__file__).with_name("_build_info.json")
    return info.exists() and json.loads(info.read_text()).get("cuda") is not None


def test_cuda_backend_refuses_cpu_tensors():
    with pytest.raises(BackendUnavailableError, match="backend 'cuda' cannot run .* CUDA tensors only"):
        L.nt_xent(torch.randn(4, 3), torch.randn(4, 3), backend="cuda")


def test_cuda_backend_refuses_float64():
    reason = BACKENDS["cuda"].unavailable_reason(torch.device("cuda"), torch.float64)
    assert reason is not None and "float32, float16 or bfloat16" in reason
    with pytest.raises(BackendUnavailableError, match="float64"):
        resolve_backend("cuda", torch.device("cuda"), torch.float64)


@pytest.mark.skipif(load_error() is not None, reason="the extension is not loaded")
def test_cuda_kernels_registered_as_built():
    """An extension built with nvcc registers CUDA kernels for every op (checked through the dispatcher, no GPU
    needed); one built without reports why the backend is unavailable."""
    reason = BACKENDS["cuda"].unavailable_reason(torch.device("cuda"), torch.float32)
    if _built_with_cuda():
        assert has_cuda_kernels()
        # every op has its CUDA kernel (csrc/contrastive_cuda.cu, csrc/positive_pair_cuda.cu), the variants and
        # the hard-negative statistics included
        for op in OPS:
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"synthcl_fast::{op}", "CUDA"), op
        assert reason is None
    else:
        assert not has_cuda_kernels()
        assert "no CUDA kernels" in reason


@pytest.mark.skipif(load_error() is not None, reason="the extension is not loaded")
def test_op_list_names_every_op():
    """OPS (what the registration test above checks for CUDA kernels) is every op the extension defines, each with
    its CPU kernel: a new op cannot be left out of the CUDA check."""
    defined = {name.removeprefix("synthcl_fast::") for name in torch._C._dispatch_get_all_op_names()
               if name.startswith("synthcl_fast::")}
    assert set(OPS) == defined
    for op in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"synthcl_fast::{op}", "CPU"), op


@pytest.mark.skipif(load_error() is not None, reason="the extension is not loaded")
def test_backend_check_traces_without_graph_break():
    """backend="cuda" under torch.compile: checking whether the backend can run traces without a graph break."""
    def fn(x):
        available = BACKENDS["cuda"].unavailable_reason(torch.device("cuda"), torch.float32) is None
        return x + (1.0 if available else 2.0)

    explanation = torch._dynamo.explain(fn)(torch.ones(3))
    assert explanation.graph_break_count == 0, explanation.break_reasons
