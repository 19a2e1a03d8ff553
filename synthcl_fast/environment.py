"""Every environment variable that steers synthcl_fast: the one table (docs/environment.md is generated from it,
and `python -m synthcl_fast.env_report` prints it with the values set in this process).

A test (tests/test_environment.py) checks that every SYNTHCL_FAST_* name read anywhere in the repository is
here, and that docs/environment.md is this table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Variable:
    name: str
    stage: str     # when it is read: build, runtime, tests
    default: str
    meaning: str


VARIABLES = (
    # runtime
    Variable("SYNTHCL_FAST_BACKEND", "runtime", "auto",
             'the backend that backend="auto" means: reference, cpu, triton or cuda (an unavailable one raises)'),
    Variable("SYNTHCL_FAST_CHECK_VALUES", "runtime", "0",
             "1: check the values of tensor arguments (the temperature) on the host and raise ValueError naming "
             "the argument, at one host synchronization per call; by default an out-of-range value gives NaN"),
    Variable("SYNTHCL_FAST_CACHE", "runtime", "~/.cache/synthcl_fast",
             "where the kernels compiled on first use are cached (one build per torch, sources, flags and "
             "machine), and, under datasets/, the trainer's generated glyphs data set (one file per version, "
             "seed, style and matplotlib)"),
    Variable("SYNTHCL_FAST_NO_JIT", "runtime", "0",
             "1: never compile the CPU kernels on first use (the cpu backend is then unavailable without an "
             "ahead-of-time build)"),
    Variable("SYNTHCL_FAST_FORCE_JIT", "runtime", "0",
             "1: ignore the ahead-of-time build and compile on first use (tests the first-use path)"),
    Variable("SYNTHCL_FAST_TRITON_TILES", "runtime", "",
             'override the shape-derived Triton tile plan, e.g. "block_m=64,block_n=32,splits=2" (keys: block_m, '
             "block_n, block_d, block_do, splits, num_warps, num_stages)"),
    Variable("SYNTHCL_FAST_TRITON_FP32_PRECISION", "runtime", "tf32",
             "tl.dot input precision for float32 rows: tf32 (tensor cores, ~3e-4 relative), tf32x3 or ieee"),
    Variable("SYNTHCL_FAST_TRITON_EXPSUM", "runtime", "float64",
             "the accumulator of the Triton forward's sum of exponentials (plain op): float64, or float32 only to "
             "measure what float64 costs (the GPU sweep's triton_fp32_expsum rows; a small loss loses digits)"),
    Variable("SYNTHCL_FAST_TRITON_PLAN_SMS", "runtime", "132",
             "under Triton's interpreter (CPU tensors), the multiprocessor count tile plans are made for, so that "
             "the interpreter runs a GPU's plans"),
    Variable("TRITON_INTERPRET", "runtime", "0",
             "Triton's own: 1 runs the Triton kernels on CPU tensors in its interpreter (set before the kernels "
             "are first imported; tests and CI)"),
    # build
    Variable("SYNTHCL_FAST_NATIVE", "build", "0",
             "1: compile the CPU kernels with -march=native (this CPU only; the build cache is then keyed by the "
             "CPU); by default the machine code runs on any CPU of the architecture, its hot loops cloned per ISA level "
             "(on the AMD EPYC CI machine native measured 0.46-0.70x the default's speed: "
             "benchmarks/results/cpu_kernels_ab.md)"),
    Variable("SYNTHCL_FAST_NO_CUDA", "build", "0", "1: do not compile the CUDA kernels even where nvcc is found"),
    Variable("SYNTHCL_FAST_NO_EXTENSION", "build", "0",
             "1: build no extension at install time (the CPU kernels are compiled on first use)"),
    Variable("FORCE_CUDA", "build", "0", "1: compile the CUDA kernels even where torch reports no CUDA"),
    Variable("TORCH_CUDA_ARCH_LIST", "build", "8.0+PTX;9.0a", "the GPU architectures the CUDA kernels are built for"),
    Variable("CUDA_HOME", "build", "the toolkit of the nvcc on PATH", "the CUDA toolkit to build with"),
    Variable("MAX_JOBS", "build", "min(cores, 8)", "parallel compile jobs"),
    Variable("SYNTHCL_FAST_REQUIRE_NVCC", "build", "0",
             "1: .ci/compile_cuda.sh fails instead of skipping where nvcc is missing"),
    Variable("SYNTHCL_FAST_COMMIT", "benchmarks", "the checkout's git commit",
             "the commit recorded with benchmark results where the tree has no .git (the GPU machine's copy)"),
    # tests
    Variable("SYNTHCL_FAST_POISON_OUTPUTS", "tests", "0 (1 in the test suite)",
             "1: fill every kernel output and scratch buffer with NaN before the kernels write them"),
    Variable("SYNTHCL_FAST_TEST_SEED", "tests", "random",
             "the seed of the conformance suite's inputs (printed in the run's header and every failure)"),
    Variable("HYPOTHESIS_PROFILE", "tests", "ci", "ci: 200 derandomized examples per property test; dev: 1000 fresh"),
)


def markdown_table() -> str:
    """The table as docs/environment.md holds it."""
    lines = ["| variable | read at | default | what it does |", "|---|---|---|---|"]
    lines += [f"| `{v.name}` | {v.stage} | {v.default} | {v.meaning} |" for v in VARIABLES]
    return "\n".join(lines)


def current_values() -> dict[str, str | None]:
    """Each variable's value in this process (None where unset)."""
    return {v.name: os.environ.get(v.name) for v in VARIABLES}


if __name__ == "__main__":
    print(markdown_table())
