"""Compiles every Triton kernel specialization the launchers produce for a GPU target, without a GPU:
checks that each compiles to a cubin (Triton's bundled ptxas) and reports shared memory, registers and
spills per specialization. Static facts about the compiled code, not measurements of speed.

    python benchmarks/triton_resources.py                 # sm_90 (H100)
    python benchmarks/triton_resources.py --arch 80       # sm_80 (A100)

How: the kernel objects in the modules are swapped for recorders, the ops are called on small CPU tensors
(the host code allocates and plans as on a GPU, with the GPU tile plans, since TRITON_INTERPRET is unset)
and every recorded launch is bound and compiled as triton.runtime.jit would for that target.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MAX_SHARED = {80: 166912, 86: 101376, 89: 101376, 90: 232448}  # bytes of shared memory per block (opt-in max)

KERNELS = {
    "synthcl_fast.backends.triton_tiles": ["_prepare_rows_kernel"],
    "synthcl_fast.backends.triton_contrastive": ["_contrastive_forward_kernel", "_merge_row_stats_kernel"],
    "synthcl_fast.backends.triton_gradients": ["_contrastive_backward_kernel", "_normalize_backward_kernel",
                                               "_temperature_grad_kernel"],
    "synthcl_fast.backends.triton_common": ["_reduce_rows_kernel"],
    "synthcl_fast.backends.triton_positive_pair": ["_positive_pair_forward_kernel"],
}


@dataclass
class Launch:
    kernel: object
    args: tuple
    kwargs: dict
    scenario: str


@dataclass
class Compiled:
    name: str
    scenario: str
    constexprs: dict
    shared: int
    registers: int | None
    spill_bytes: int | None


class _Recorder:
    def __init__(self, kernel, log, scenario):
        self.kernel, self.log, self.scenario = kernel, log, scenario

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.log.append(Launch(self.kernel, args, kwargs, self.scenario[0]))


@contextmanager
def recording(log: list, scenario: list):
    import importlib

    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("unset TRITON_INTERPRET: the GPU plans and kernels are recorded, not the interpreter's")
    saved = []
    for module_name, names in KERNELS.items():
        module = importlib.import_module(module_name)
        for name in names:
            saved.append((module, name, getattr(module, name)))
            setattr(module, name, _Recorder(getattr(module, name), log, scenario))
    try:
        yield
    finally:
        for module, name, kernel in saved:
            setattr(module, name, kernel)


def record_launches() -> list[Launch]:
    """The launches of the ops for the configurations the GPU sweep and the tests use (small CPU tensors)."""
    import torch

    from synthcl_fast.backends import triton_contrastive as tc
    from synthcl_fast.backends import triton_positive_pair as tpp

    log, scenario = [], [""]

    def forward(name, dtype, dim, n_rows=512, n_cols=None, same=True, reduction=1, symmetric=False, tiles="",
                same_labels=True):
        scenario[0] = name
        n_cols = n_cols or n_rows
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        x = torch.randn(n_rows, dim).to(dtype)
        y = x if same else torch.randn(n_cols, dim).to(dtype)
        labels_x = torch.arange(n_rows) % max(1, n_rows // 2)
        labels_y = labels_x if same and same_labels else torch.arange(n_cols) % max(1, n_rows // 2)
        t = torch.tensor(0.1, dtype=acc)
        previous = os.environ.get("SYNTHCL_FAST_TRITON_TILES")
        os.environ["SYNTHCL_FAST_TRITON_TILES"] = tiles
        try:
            if symmetric:
                tc.symmetric_contrastive_forward(x, y, labels_x, labels_y, t, False, reduction, 1e-12,
                                                 [reduction != 0] * 3)
            else:
                tc.contrastive_forward(x, y, labels_x, labels_y, t, same, reduction, 1e-12, [reduction != 0] * 3)
                if reduction == 0:  # the recomputing backward
                    row_max, log_sum = torch.zeros(n_rows, dtype=acc), torch.zeros(n_rows, dtype=acc)
                    npos = torch.ones(n_rows, dtype=torch.int32)
                    tc.contrastive_backward(torch.ones(n_rows, dtype=acc), x, y, labels_x, labels_y, t, row_max,
                                            log_sum, npos, same, 1e-12, [True] * 3)
        finally:
            if previous is None:
                os.environ.pop("SYNTHCL_FAST_TRITON_TILES", None)
            else:
                os.environ["SYNTHCL_FAST_TRITON_TILES"] = previous

    with recording(log, scenario):
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            forward(f"nt_xent D=128 {dtype}", dtype, 128)
        forward("nt_xent D=256 bf16", torch.bfloat16, 256)
        forward("nt_xent D=128 bf16 none (recompute)", torch.bfloat16, 128, reduction=0)
        forward("one tensor, other labels D=128 bf16", torch.bfloat16, 128, same_labels=False)
        forward("nt_xent D=64 fp64", torch.float64, 64)
        forward("MoCo D=128 bf16 split keys", torch.bfloat16, 128, 256, 4096, same=False, tiles="splits=8")
        for dim in (512, 768):
            forward(f"clip symmetric D={dim} bf16", torch.bfloat16, dim, same=False, symmetric=True)
        forward("clip symmetric D=512 fp32", torch.float32, 512, same=False, symmetric=True)
        for dtype in (torch.bfloat16, torch.float32):
            for dim in (128, 2048):
                scenario[0] = f"positive pair D={dim} {dtype}"
                a = torch.randn(256, dim).to(dtype)
                tpp.positive_pair_forward(a, a.clone(), torch.zeros(256), 0, 1, 1e-12, True, True)
    return log


def compile_launches(launches: list[Launch], arch: int = 90, ptxas_info: bool = True) -> list[Compiled]:
    """Each distinct specialization compiled for sm_<arch> (ptx -> cubin); ptxas -v for registers/spills."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    results, seen = [], set()
    for launch in launches:
        kernel = launch.kernel
        binder = create_function_from_signature(kernel.signature, kernel.params, backend)
        bound_args, specialization, options = binder(*launch.args, **launch.kwargs)
        options, signature, constexprs, attrs = kernel._pack_args(backend, launch.kwargs, bound_args,
                                                                  specialization, options)
        key = (kernel.fn.__name__, repr(signature), repr(constexprs), options.num_warps, options.num_stages)
        if key in seen:
            continue
        seen.add(key)
        compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target,
                                  options=options.__dict__)
        registers = spills = None
        if ptxas_info and ptxas.exists():
            with tempfile.TemporaryDirectory() as tmp:
                ptx = Path(tmp) / "kernel.ptx"
                ptx.write_text(compiled.asm["ptx"])
                arch_flag = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
                info = subprocess.run([str(ptxas), f"-arch={arch_flag}", "-v", str(ptx), "-o", str(Path(tmp) / "k")],
                                      capture_output=True, text=True).stderr
            found = re.search(r"Used (\d+) registers", info)
            registers = int(found.group(1)) if found else None
            found = re.search(r"(\d+) bytes spill stores", info)
            spills = int(found.group(1)) if found else None
        shown = {k: str(v).replace("triton.language.", "") for k, v in launch.kwargs.items()
                 if k.isupper() or k in ("num_warps", "num_stages")}
        results.append(Compiled(kernel.fn.__name__, launch.scenario, shown, compiled.metadata.shared, registers,
                                spills))
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x10 (90: H100, 80: A100)")
    args = parser.parse_args(argv)
    results = compile_launches(record_launches(), args.arch)
    limit = MAX_SHARED.get(args.arch)
    print(f"| scenario | kernel | shared KiB | registers | spill bytes | constexprs |\n|---|---|---|---|---|---|")
    for r in results:
        over = " (over the limit: runs with num_stages=1)" if limit and r.shared > limit else ""
        print(f"| {r.scenario} | {r.name} | {r.shared / 1024:.1f}{over} | {r.registers} | {r.spill_bytes} | "
              f"{' '.join(f'{k}={v}' for k, v in r.constexprs.items())} |")


if __name__ == "__main__":
    main()
