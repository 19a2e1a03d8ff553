"""Every Triton kernel specialization the launchers produce compiles for an H100 (sm_90: Triton IR -> PTX ->
cubin with Triton's bundled ptxas) and fits its shared memory, on this GPU-less machine: catches what the
interpreter cannot (GPU-only type rules, lowering of tl.dot per dtype, shared-memory overflows).
benchmarks/triton_resources.py prints registers and spills of the same compilations."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

from synthcl_fast.backends import triton_support

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.skipif(triton_support.triton_import_error() is not None, reason="needs triton"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="records the GPU plans, not the interpreter's"),
]


def _resources():
    if "triton_resources" in sys.modules:
        return sys.modules["triton_resources"]
    spec = importlib.util.spec_from_file_location("triton_resources", ROOT / "benchmarks" / "triton_resources.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["triton_resources"] = module
    spec.loader.exec_module(module)
    return module


def test_every_specialization_compiles_for_sm90():
    resources = _resources()
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import make_backend

        make_backend(GPUTarget("cuda", 90, 32))
    except Exception as error:  # a triton build without the NVIDIA backend
        pytest.skip(f"triton has no CUDA compiler backend here: {error}")
    launches = resources.record_launches()
    compiled = resources.compile_launches(launches, arch=90, ptxas_info=False)
    names = {c.name for c in compiled}
    every_kernel = {name for names_ in resources.KERNELS.values() for name in names_}
    assert names == every_kernel, f"not exercised: {every_kernel - names}"
    assert len(compiled) >= 30
    too_big = [(c.scenario, c.name, c.shared) for c in compiled if c.shared > resources.MAX_SHARED[90]]
    assert not too_big, f"over the H100's shared memory per block: {too_big}"
    # The plans the H100 would get: bf16 operands on tensor cores, tf32 for fp32, fp64 for fp64.
    dots = {(c.scenario, c.constexprs.get("DOT"), c.constexprs.get("PRECISION")) for c in compiled
            if c.name == "_contrastive_forward_kernel"}
    assert ("nt_xent D=128 torch.bfloat16", "bf16", "ieee") in dots
    assert ("nt_xent D=128 torch.float32", "fp32", "tf32") in dots
