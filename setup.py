"""Builds the compiled kernels of csrc/ into synthcl_fast._C where torch is importable at build time.

- CPU kernels always (when torch is present), for any CPU of the architecture (SYNTHCL_FAST_NATIVE=1: for
  this machine's CPU only, -march=native); CUDA kernels (csrc/*.cu) only where torch has CUDA and nvcc is
  found, of the CUDA major version torch was built with (else a message and the CPU kernels only), or
  FORCE_CUDA=1. SYNTHCL_FAST_NO_CUDA=1 skips them, SYNTHCL_FAST_NO_EXTENSION=1 skips the whole extension (the
  kernels are then compiled on first use). Every variable: docs/environment.md.
- TORCH_CUDA_ARCH_LIST picks the GPU architectures (default "8.0+PTX;9.0a": Ampere machine code and PTX that
  later GPUs compile at load, and Hopper machine code). CUDA_HOME picks the toolkit; without it, the toolkit
  whose nvcc is on PATH, or /usr/local/cuda when that nvcc is a wrapper outside a toolkit (no libcudart beside).
- Writes _build_info.json beside the compiled synthcl_fast._C (in the wheel; in the source tree for an editable
  install): what was built, against which torch, from which sources (their digest). backends/native.py loads
  _C only under that same torch and while the package's kernel sources are those it was built from.
- Every sdist and wheel (built with or without torch) carries the kernel sources: MANIFEST.in puts csrc/ into
  the sdist, and build_py copies it into the package (synthcl_fast/csrc/), from which an installed wheel
  compiles its kernels on first use. An editable install reads the checkout's csrc/ instead.
"""

import glob
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

# The kernel sources the package carries (synthcl_fast/csrc/ in a wheel; csrc/ in the sdist: MANIFEST.in) and
# their digest, from synthcl_fast/_kernel_sources.py loaded by path (the package itself is not importable here)
_spec = importlib.util.spec_from_file_location("_kernel_sources", os.path.join(os.path.dirname(os.path.abspath(
    __file__)), "synthcl_fast", "_kernel_sources.py"))
_kernel_sources = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_kernel_sources)
KERNEL_SOURCE_PATTERNS = _kernel_sources.KERNEL_SOURCE_PATTERNS


def _flag(name):
    return os.environ.get(name, "0") == "1"


def _set_cuda_home():
    """torch takes the toolkit to be the parent of the nvcc on PATH; where that nvcc is a wrapper script (say
    /usr/local/bin/nvcc), the link would find no libcudart. Point CUDA_HOME at a real toolkit instead."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    nvcc = shutil.which("nvcc")
    homes = ([os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))] if nvcc else []) + ["/usr/local/cuda"]
    for home in homes:
        if os.path.exists(os.path.join(home, "bin", "nvcc")) and glob.glob(os.path.join(home, "lib*", "libcudart.so*")):
            os.environ["CUDA_HOME"] = home
            return


def _toolkit_mismatch(torch_cuda, cuda_home):
    """Why the toolkit at cuda_home cannot build for this torch, or None. torch's extension build stops with an
    error where the toolkit's major CUDA version differs from the one torch was built with (a torch 2.4 wheel
    for CUDA 12.1 beside nvcc 13, say); the package must still install, with its CPU kernels."""
    try:
        out = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--version"], capture_output=True, text=True,
                             timeout=60).stdout
        toolkit = re.search(r"release (\d+\.\d+)", out).group(1)
    except (OSError, subprocess.SubprocessError, AttributeError):
        return f"the CUDA toolkit at {cuda_home} did not report its version (nvcc --version)"
    if int(toolkit.split(".")[0]) != int(torch_cuda.split(".")[0]):  # majors as numbers (packaging may be absent)
        return f"nvcc is CUDA {toolkit} but torch was built with CUDA {torch_cuda}"
    return None


def _extension_config():
    if _flag("SYNTHCL_FAST_NO_EXTENSION"):
        return [], {}
    _set_cuda_home()
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        print("synthcl_fast: torch is not importable at build time; the kernels will be compiled on first use",
              file=sys.stderr)
        return [], {}

    # Portable machine code unless SYNTHCL_FAST_NATIVE=1: a wheel or a shared build directory used on another
    # CPU must not die with SIGILL (the same flags as the first-use build: backends/native.py cxx_flags).
    # -fopenmp: ATen's at::parallel_for is a header template that runs its body on one thread unless the
    # extension itself is compiled with OpenMP (it then joins torch's libgomp, loaded under the same soname).
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    cxx = ["-O3", "-fopenmp-simd"] + openmp + (["-march=native"] if _flag("SYNTHCL_FAST_NATIVE") else [])
    sources = sorted(glob.glob("csrc/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/*.cu"))
    with_cuda = bool(cuda_sources) and not _flag("SYNTHCL_FAST_NO_CUDA") and (
        _flag("FORCE_CUDA") or (torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None))
    if cuda_sources and not with_cuda and not _flag("SYNTHCL_FAST_NO_CUDA"):
        print("synthcl_fast: no CUDA toolkit found (or torch without CUDA); building the CPU kernels only",
              file=sys.stderr)
    if with_cuda and not _flag("FORCE_CUDA"):
        mismatch = _toolkit_mismatch(torch.version.cuda, cpp_extension.CUDA_HOME)
        if mismatch:
            print(f"synthcl_fast: {mismatch}; building the CPU kernels only (FORCE_CUDA=1 tries anyway)",
                  file=sys.stderr)
            with_cuda = False
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0+PTX;9.0a")
        # --threads 2: the architectures compile in parallel (CI machines have 2 cores)
        nvcc = ["-O3", "--use_fast_math", "-lineinfo", "--threads", "2"]
        ext = cpp_extension.CUDAExtension("synthcl_fast._C", sources + cuda_sources,
                                          extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=openmp)
    else:
        ext = cpp_extension.CppExtension("synthcl_fast._C", sources, extra_compile_args={"cxx": cxx},
                                         extra_link_args=openmp)

    class BuildExtension(cpp_extension.BuildExtension):
        def run(self):
            super().run()
            info = {"torch": torch.__version__, "cuda": torch.version.cuda if with_cuda else None,
                    "cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST") if with_cuda else None,
                    "cxx_flags": cxx, "sources": sources + (cuda_sources if with_cuda else []),
                    "sources_sha256": _kernel_sources.sources_digest("csrc")}
            # beside _C: in build/lib (the wheel), or in the source tree when building in place (editable)
            folder = os.path.dirname(self.get_ext_fullpath("synthcl_fast._C"))
            with open(os.path.join(folder, "_build_info.json"), "w") as f:
                json.dump(info, f, indent=2)

    jobs = max(1, min(os.cpu_count() or 1, 8))
    os.environ.setdefault("MAX_JOBS", str(jobs))
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


class BuildPyWithKernelSources(build_py):
    """Copies csrc/ into the built package as synthcl_fast/csrc/ (backends/native.py compiles from it on first
    use). Not in editable mode: there the package is the checkout's, beside its csrc/."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        files = sorted(path for pattern in KERNEL_SOURCE_PATTERNS for path in glob.glob(os.path.join("csrc", pattern)))
        if not files:
            raise RuntimeError(f"no kernel sources ({', '.join(KERNEL_SOURCE_PATTERNS)}) in csrc/ under "
                               f"{os.getcwd()}: an sdist without csrc/ (MANIFEST.in) would build a wheel without "
                               "kernels")
        target = os.path.join(self.build_lib, "synthcl_fast", "csrc")
        self.mkpath(target)
        for path in files:
            self.copy_file(path, os.path.join(target, os.path.basename(path)))


ext_modules, cmdclass = _extension_config()
setup(ext_modules=ext_modules, cmdclass={"build_py": BuildPyWithKernelSources, **cmdclass})
