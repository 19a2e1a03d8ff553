"""What the Triton kernels share that does not need Triton: availability, output allocation, tile overrides.

Nothing here imports triton, so `synthcl_fast` imports (and `backend="auto"` resolves on CPU tensors)
without it. The kernel modules (triton_tiles.py lists them) are imported on first use.

Environment variables (TRITON_INTERPRET, SYNTHCL_FAST_TRITON_TILES, SYNTHCL_FAST_TRITON_FP32_PRECISION,
SYNTHCL_FAST_TRITON_EXPSUM, SYNTHCL_FAST_TRITON_PLAN_SMS, SYNTHCL_FAST_POISON_OUTPUTS): docs/environment.md.
"""

from __future__ import annotations

import functools
import math
import os
import struct
import sys

import torch

# Loaded together (the kernel modules import triton_common first), so triton_common's INTERPRET is what
# triton.jit saw for all of them.
KERNEL_MODULE = "synthcl_fast.backends.triton_common"
TILE_KEYS = ("block_m", "block_n", "block_d", "block_do", "splits", "num_warps", "num_stages")
FP32_PRECISIONS = ("tf32", "tf32x3", "ieee")


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


_IMPORT_ERROR: list[str | None] = []  # filled once (a plain global, not functools.cache: torch.compile traces it)


def triton_import_error() -> str | None:
    """None when triton imports, else why not (checked once: the answer does not change within a process)."""
    if not _IMPORT_ERROR:
        try:
            import triton  # noqa: F401
            import triton.language  # noqa: F401
        except Exception as error:  # ImportError, or a broken install raising anything else
            _IMPORT_ERROR.append(f"triton is not importable ({type(error).__name__}: {error}); pip install triton")
        else:
            _IMPORT_ERROR.append(too_old(triton.__version__))
    return _IMPORT_ERROR[0]


# The oldest triton the kernels are tested with (pyproject.toml's `triton` extra): 3.1's interpreter rejects
# tl.arange(0, BLOCK) of a constexpr argument, 3.0's leaves CPU tensors unwritten; 3.2 to 3.5 are untested.
MIN_TRITON = "3.6"


def too_old(triton_version: str) -> str | None:
    from packaging.version import Version

    if Version(triton_version).release < Version(MIN_TRITON).release:
        return (f"triton {triton_version} is older than {MIN_TRITON}, the oldest the Triton kernels are tested with; "
                f"pip install 'triton>={MIN_TRITON}' (or a torch that brings one)")
    return None


def unavailable_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    """None when the Triton kernels can run inputs of `dtype` on `device`, else why not."""
    error = triton_import_error()
    if error is not None:
        return error
    if dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        return f"it takes float16, bfloat16, float32 or float64 inputs, got {dtype}"
    loaded = sys.modules.get(KERNEL_MODULE)
    compiled_for_interpreter = None if loaded is None else loaded.INTERPRET
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA is not available"
        if compiled_for_interpreter:
            return "the kernels were loaded under TRITON_INTERPRET=1 (the CPU interpreter); unset it for the GPU"
        if dtype == torch.bfloat16 and torch.cuda.get_device_capability(device) < (8, 0):
            return "bfloat16 tensor-core products need compute capability 8.0 or newer"
        return None
    if device.type == "cpu":
        if not interpreting():
            return "it runs on CUDA tensors (CPU tensors only under Triton's interpreter, TRITON_INTERPRET=1)"
        if compiled_for_interpreter is False:
            return ("the kernels were loaded without TRITON_INTERPRET=1; set it before synthcl_fast's Triton "
                    "kernels are first used")
        import numpy
        import triton

        return interpreter_numpy_conflict(triton.__version__, numpy.__version__)
    return f"it runs on CUDA tensors, got {device}"


def interpreter_numpy_conflict(triton_version: str, numpy_version: str) -> str | None:
    """Why Triton's interpreter cannot run our kernels with these versions, or None. Before triton 3.7 the
    interpreter takes a loop bound with int() of a 1-element array, which numpy 2.4 made an error ("only
    0-dimensional arrays can be converted to Python scalars"): every kernel with a runtime loop bound fails."""
    from packaging.version import Version

    if Version(triton_version).release < (3, 7) and Version(numpy_version).release >= (2, 4):
        return (f"Triton's interpreter in triton {triton_version} fails with numpy {numpy_version} (int() of a "
                "1-element array); use numpy < 2.4 or triton >= 3.7")
    return None


def poison_outputs() -> bool:
    return os.environ.get("SYNTHCL_FAST_POISON_OUTPUTS") == "1"


def empty_output(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """torch.empty, or NaN / int32-min filled under SYNTHCL_FAST_POISON_OUTPUTS=1 (like csrc/common.h)."""
    out = torch.empty(shape, dtype=dtype, device=device)
    if poison_outputs():
        out.fill_(math.nan if dtype.is_floating_point else torch.iinfo(torch.int32).min)
    return out


def split_float(value: float) -> tuple[float, float]:
    """value as two float32 numbers whose sum is value to ~48 bits: Triton passes Python floats as float32,
    and a float64 kernel must use the float64 eps (or 1/R) the reference uses. Kernels add hi + lo in ACC.
    (Rounded with struct on the host: no tensor, so nothing a dispatch mode or a CUDA graph could see.)"""
    hi = struct.unpack("f", struct.pack("f", value))[0]
    lo = struct.unpack("f", struct.pack("f", value - hi))[0]
    return hi, lo


@functools.lru_cache(maxsize=8)
def _parse_tiles(text: str) -> dict[str, int]:
    tiles = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in TILE_KEYS or not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"SYNTHCL_FAST_TRITON_TILES: expected 'key=positive int' with keys {TILE_KEYS}, "
                             f"got {item!r}")
        tiles[key] = int(value)
    for key in ("block_m", "block_n", "block_d", "block_do"):
        if key in tiles and (tiles[key] < 16 or tiles[key] & (tiles[key] - 1)):
            raise ValueError(f"SYNTHCL_FAST_TRITON_TILES: {key} must be a power of two >= 16 (tl.dot's minimum), "
                             f"got {tiles[key]}")
    return tiles


def tile_overrides() -> dict[str, int]:
    return _parse_tiles(os.environ.get("SYNTHCL_FAST_TRITON_TILES", ""))


def fp32_precision() -> str:
    value = os.environ.get("SYNTHCL_FAST_TRITON_FP32_PRECISION", "tf32")
    if value not in FP32_PRECISIONS:
        raise ValueError(f"SYNTHCL_FAST_TRITON_FP32_PRECISION must be one of {FP32_PRECISIONS}, got {value!r}")
    return value


EXPSUM_DTYPES = ("float64", "float32")


def expsum_dtype() -> str:
    """The accumulator of the plain op's forward sum S = sum_j e^(s_ij - m_i): float64 (the default; see
    _contrastive_forward_kernel for why) or float32, which exists only to measure what the float64 sum costs
    (benchmarks/gpu_sweep.py's triton_fp32_expsum rows): in float32 a small loss log S ~ S - 1 loses digits."""
    value = os.environ.get("SYNTHCL_FAST_TRITON_EXPSUM", "float64")
    if value not in EXPSUM_DTYPES:
        raise ValueError(f"SYNTHCL_FAST_TRITON_EXPSUM must be one of {EXPSUM_DTYPES}, got {value!r}")
    return value


@functools.cache
def multiprocessor_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


PLAN_SMS_UNDER_INTERPRETER = 132  # an H100 / H200


def plan_multiprocessors(device: torch.device) -> int:
    """The multiprocessor count tile plans are made for: the GPU's, or under the interpreter (CPU tensors)
    that of an H200, so that the interpreter runs the plans (column splits included) a GPU would."""
    if device.type == "cuda":
        return multiprocessor_count(device.index if device.index is not None else torch.cuda.current_device())
    return int(os.environ.get("SYNTHCL_FAST_TRITON_PLAN_SMS", PLAN_SMS_UNDER_INTERPRETER))


# What Triton's interpreter (TRITON_INTERPRET=1, CPU tensors) does not execute as the GPU does, and the GPU
# test that covers each (tests/test_conformance.py run on CUDA, marker gpu). Everything else, every tile plan
# and the split-K merge included, runs the same code under the interpreter in CI.
INTERPRETER_DIFFERENCES = {
    "16-bit tl.dot": "the interpreter computes bfloat16 products wrongly and float16 ones with float16 "
                     "accumulation, so 16-bit operands are upcast to fp32 for tl.dot under the interpreter "
                     "(half_dot_operand); on the GPU 16-bit products are exact and accumulate in fp32, which gives "
                     "the same values. GPU: the float16 and bfloat16 cases of test_conformance.py",
    "bf16 cast": "the interpreter truncates float32 -> bfloat16 where the GPU rounds to nearest even, so "
                 "cast_output rounds by hand under the interpreter (triton_common.round_by_hand). GPU: the "
                 "bfloat16 gradient checks of test_conformance.py",
    "fp32 tl.dot": "the interpreter multiplies fp32 exactly; the GPU uses tf32 tensor cores unless "
                   "SYNTHCL_FAST_TRITON_FP32_PRECISION=ieee, hence the GPU's fp32 tolerance in "
                   "TritonBackend.tolerances. GPU: the float32 cases of test_conformance.py",
    "resources": "num_warps, num_stages, shared memory and registers mean nothing to the interpreter (the "
                 "OutOfResources retry of triton_tiles._launch never runs there). GPU: every GPU case; "
                 "benchmarks/results/triton_sm90_resources.md compiles every specialization for sm_90",
}


def half_dot_operand(dtype: torch.dtype):
    """The tl.dot operand dtype for 16-bit rows: the dtype itself on a GPU, float32 under the interpreter (see
    INTERPRETER_DIFFERENCES)."""
    import triton.language as tl

    return tl.float32 if interpreting() else {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}[dtype]


def next_power_of_2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())
