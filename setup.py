"""Builds the compiled kernels of csrc/ into synthcl_fast._C where torch is importable at build time.

- CPU kernels always (when torch is present); CUDA kernels (csrc/*.cu) only where torch has CUDA and
  nvcc is found, or FORCE_CUDA=1. SYNTHCL_FAST_NO_CUDA=1 skips them, SYNTHCL_FAST_NO_EXTENSION=1 skips
  the whole extension (the kernels are then compiled on first use).
- TORCH_CUDA_ARCH_LIST picks the GPU architectures (default: 8.0 and 9.0a).
- Writes synthcl_fast/_build_info.json: what was built, against which torch.
"""

import glob
import json
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "0") == "1"


def _extension_config():
    if _flag("SYNTHCL_FAST_NO_EXTENSION"):
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        print("synthcl_fast: torch is not importable at build time; the kernels will be compiled on first use",
              file=sys.stderr)
        return [], {}

    cxx = ["-O3", "-fopenmp-simd"] + ([] if _flag("SYNTHCL_FAST_PORTABLE") else ["-march=native"])
    sources = sorted(glob.glob("csrc/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/*.cu"))
    with_cuda = bool(cuda_sources) and not _flag("SYNTHCL_FAST_NO_CUDA") and (
        _flag("FORCE_CUDA") or (torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None))
    if cuda_sources and not with_cuda and not _flag("SYNTHCL_FAST_NO_CUDA"):
        print("synthcl_fast: no CUDA toolkit found (or torch without CUDA); building the CPU kernels only",
              file=sys.stderr)
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0a")
        nvcc = ["-O3", "--use_fast_math", "-lineinfo"]
        ext = cpp_extension.CUDAExtension("synthcl_fast._C", sources + cuda_sources,
                                          extra_compile_args={"cxx": cxx, "nvcc": nvcc})
    else:
        ext = cpp_extension.CppExtension("synthcl_fast._C", sources, extra_compile_args={"cxx": cxx})

    class BuildExtension(cpp_extension.BuildExtension):
        def run(self):
            super().run()
            info = {"torch": torch.__version__, "cuda": torch.version.cuda if with_cuda else None,
                    "cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST") if with_cuda else None,
                    "cxx_flags": cxx, "sources": sources + (cuda_sources if with_cuda else [])}
            with open(os.path.join(ROOT, "synthcl_fast", "_build_info.json"), "w") as f:
                json.dump(info, f, indent=2)

    jobs = max(1, min(os.cpu_count() or 1, 8))
    os.environ.setdefault("MAX_JOBS", str(jobs))
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extension_config()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
