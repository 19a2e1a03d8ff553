"""The compiled extension (csrc/): loading it, and the autograd and fake registrations of its ops.

The ops are defined in C++ (csrc/bindings.cpp, TORCH_LIBRARY) with CPU and, where built, CUDA
implementations. Here they get an autograd formula and a fake (shape-only) implementation through
torch.library, so they work under torch.compile(fullgraph=True) and torch.library.opcheck.

Loading order: the ahead-of-time build `synthcl_fast._C` (made by `pip install --no-build-isolation` or
`pip wheel --no-build-isolation` against the torch in the environment), when `_build_info.json` beside it
names the torch installed now; else a one-time compile of the CPU sources on first use, cached per torch
version (needs ninja and a C++ compiler). The sources are the package's own (synthcl_fast/csrc/, in every
wheel and sdist install) or, in an editable install, the checkout's csrc/.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from packaging.version import InvalidVersion, Version

from .._kernel_sources import sources_digest
from ._ops import (assume_constant_result, register_contrastive_op, register_hard_negative_op,
                   register_positive_pair_op, register_variant_op)

PACKAGE = Path(__file__).resolve().parents[1]
# The kernel sources: the installed package's copy (wheel, sdist), else the checkout's (editable install)
CSRC = next((path for path in (PACKAGE / "csrc", PACKAGE.parent / "csrc") if path.is_dir()), PACKAGE / "csrc")
BUILD_INFO = PACKAGE / "_build_info.json"
CPU_SOURCES = ("bindings.cpp", "contrastive_cpu.cpp", "positive_pair_cpu.cpp")
# -fopenmp: ATen's at::parallel_for is a header template that runs its body on one thread unless the
# extension itself is compiled with OpenMP (it then joins torch's libgomp, loaded under the same soname).
OPENMP_FLAGS = ["-fopenmp"] if sys.platform.startswith("linux") else []
CXX_FLAGS = ["-O3", "-fopenmp-simd"] + OPENMP_FLAGS
NATIVE_ENV = "SYNTHCL_FAST_NATIVE"


def cxx_flags() -> list[str]:
    """Portable machine code (for any CPU of this architecture) unless SYNTHCL_FAST_NATIVE=1 (-march=native:
    this CPU only; benchmarks/results/ measures what it buys)."""
    return CXX_FLAGS + (["-march=native"] if os.environ.get(NATIVE_ENV) == "1" else [])


def _cpu_identity() -> str:
    """What the machine code of a -march=native build depends on: the CPU's model and instruction-set flags."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    fields = {}
    for line in info.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return f"{fields.get('model name', '')}|{fields.get('flags', fields.get('Features', ''))}"


def cache_dir() -> Path:
    """One build per torch version, sources, flags and machine: a cache shared by several machines (a home
    directory on a cluster) never loads a build made for another architecture or, for native builds,
    another CPU."""
    root = Path(os.environ.get("SYNTHCL_FAST_CACHE", Path.home() / ".cache" / "synthcl_fast"))
    headers = tuple(sorted(path.name for path in CSRC.glob("*.h")))
    sources = b"".join((CSRC / name).read_bytes() for name in CPU_SOURCES + headers)
    flags = cxx_flags()
    machine = platform.machine() + ("|" + _cpu_identity() if "-march=native" in flags else "")
    key = hashlib.sha256(sources + torch.__version__.encode() + " ".join(flags).encode() + machine.encode())
    return root / f"torch-{torch.__version__}-{platform.machine()}-{key.hexdigest()[:16]}"


def _cached_sources(build_dir: Path) -> Path:
    """The sources build_dir's key was made of, copied into it once. ninja rebuilds by file times: compiling from
    the package's own files would rebuild after every reinstall of the same sources, and in every venv sharing
    the cache, although the key (their contents) says the build is there."""
    sources = build_dir / "src"
    if not sources.is_dir():
        staging = Path(tempfile.mkdtemp(prefix="src-", dir=build_dir))
        for path in CSRC.iterdir():
            if path.name in CPU_SOURCES or path.suffix == ".h":  # what cache_dir's key reads
                shutil.copyfile(path, staging / path.name)
        try:
            staging.rename(sources)
        except OSError:  # another process copied them first: the same contents
            shutil.rmtree(staging, ignore_errors=True)
    return sources


def _jit_build() -> None:
    from torch.utils.cpp_extension import load

    build_dir = cache_dir()
    build_dir.mkdir(parents=True, exist_ok=True)
    if not (build_dir / "synthcl_fast_cpu.so").exists():
        print(f"synthcl_fast: compiling the CPU kernels for torch {torch.__version__} once (cache: {build_dir})",
              file=sys.stderr)
    sources = _cached_sources(build_dir)
    load(name="synthcl_fast_cpu", sources=[str(sources / s) for s in CPU_SOURCES], extra_cflags=cxx_flags(),
         extra_ldflags=OPENMP_FLAGS, build_directory=str(build_dir), is_python_module=False, verbose=False)


def build_info() -> dict | None:
    """What setup.py recorded of the ahead-of-time build (torch, CUDA, flags, sources); None without one."""
    try:
        return json.loads(BUILD_INFO.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        return {"unreadable": f"{BUILD_INFO} cannot be read ({error})"}


def build_mismatch(info: dict | None, torch_version: str | None = None, torch_cuda: str | None = None,
                   sources: str | None = None) -> str | None:
    """Why the ahead-of-time build described by `info` must not be loaded under this torch, or None. Its machine
    code is tied to the torch (release and local build, e.g. +cpu or +cu130) it was compiled against, and to
    that torch's CUDA when it has CUDA kernels: under another it fails with undefined symbols, or loads and runs.
    It is also tied to its sources: in an editable install csrc/ can change after the build (its op schemas
    with it), and the build then no longer matches the Python side. torch_version / torch_cuda default to the
    installed torch's, `sources` to the digest of the kernel sources present now (CSRC; a record without a
    digest, from before it was recorded, is not checked)."""
    if info is None:
        return None
    if "unreadable" in info:
        return info["unreadable"]
    recorded = info.get("sources_sha256")
    if sources is None and recorded is not None and CSRC.is_dir():
        sources = sources_digest(CSRC)
    if recorded is not None and sources is not None and recorded != sources:
        return (f"synthcl_fast._C was built from other kernel sources than {CSRC} holds now (changed since the "
                f"build; rebuild with `pip install --no-build-isolation -e .`)")
    installed = torch.__version__ if torch_version is None else torch_version
    cuda = torch.version.cuda if torch_cuda is None else torch_cuda
    built = info.get("torch")
    try:
        same = built is not None and Version(str(built)) == Version(installed)
    except InvalidVersion:
        same = False
    if not same:
        return f"synthcl_fast._C was built against torch {built} but torch {installed} is installed"
    if info.get("cuda") and info["cuda"] != cuda:
        return f"synthcl_fast._C was built with CUDA {info['cuda']} kernels but this torch has CUDA {cuda}"
    return None


_UNLOADED = object()
_load_result: object = _UNLOADED


# Under torch.compile, dynamo calls this in plain Python and treats the result as a constant, instead of
# tracing into the loading and the torch.library registrations (which it cannot trace: a graph break).
# (It would also trace straight through a functools.cache wrapper, so the result is cached by hand.)
@assume_constant_result
def load_error() -> str | None:
    """Loads the extension once; returns None on success, else why it is unavailable."""
    global _load_result
    if _load_result is _UNLOADED:
        _load_result = _load()
    return _load_result


def _load() -> str | None:
    mismatch = None
    try:
        if os.environ.get("SYNTHCL_FAST_FORCE_JIT") == "1":  # test the first-use compile path
            raise ImportError("SYNTHCL_FAST_FORCE_JIT=1")
        # checked before the import: a build for another torch may fail with undefined symbols, or load silently
        # (a 2.13.0+cpu build imports under 2.14.1+cu130) and run code compiled against other headers
        mismatch = build_mismatch(build_info()) if importlib.util.find_spec("synthcl_fast._C") else None
        if mismatch:
            raise ImportError(mismatch)
        import synthcl_fast._C  # noqa: F401  (registers the ops)
    except ImportError as aot_error:
        unusable = (f"the compiled extension is not loaded ({mismatch})" if mismatch else
                    f"the compiled extension synthcl_fast._C is missing ({aot_error})")
        if os.environ.get("SYNTHCL_FAST_NO_JIT") == "1":
            return f"{unusable} and SYNTHCL_FAST_NO_JIT=1"
        if not CSRC.is_dir():
            return f"{unusable} and no csrc/ to compile it from ({CSRC})"
        if mismatch:
            warnings.warn(f"synthcl_fast: {mismatch}; compiling the CPU kernels on first use instead (reinstall "
                          "synthcl_fast against this torch to load its ahead-of-time build)", RuntimeWarning,
                          stacklevel=2)
        try:
            _jit_build()
        except Exception as jit_error:  # a compiler or ninja problem: report it, do not crash the caller
            return f"{unusable} and compiling it failed: {jit_error}"
    ops = torch.ops.synthcl_fast
    register_contrastive_op(ops.contrastive_forward, ops.contrastive_backward, sides=1)
    register_variant_op(ops.contrastive_variant_forward, ops.contrastive_variant_backward)
    register_hard_negative_op(ops.hard_negative_stats_forward, ops.hard_negative_stats_backward)
    register_positive_pair_op(ops.positive_pair_forward)
    return None


def has_cuda_kernels() -> bool:
    """True when the loaded extension has CUDA implementations of the ops."""
    return load_error() is None and registered_cuda_kernels()


def registered_cuda_kernels() -> bool:
    """Whether CUDA implementations of the ops are registered (once the extension is loaded). Separate from
    has_cuda_kernels for traced callers that have checked load_error already: torch 2.4's dynamo fails at run
    time ("'NoneType' object is not callable") where a traced function calls load_error a second time."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("synthcl_fast::contrastive_forward", "CUDA")
