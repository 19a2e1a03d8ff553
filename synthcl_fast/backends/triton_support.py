"""What the Triton kernels share that does not need Triton: availability, output allocation, tile overrides.

Nothing here imports triton, so `synthcl_fast` imports (and `backend="auto"` resolves on CPU tensors)
without it. The kernel modules (triton_contrastive.py, triton_positive_pair.py) are imported on first use.

Environment:
    TRITON_INTERPRET=1              Triton's interpreter: the same kernels on CPU tensors (tests, CI). Must be
                                    set before the kernel modules are imported (triton.jit reads it then).
    SYNTHCL_FAST_POISON_OUTPUTS=1   outputs and scratch are filled with NaN (integers: int32 min) before the
                                    kernels write them, so an element a kernel forgets shows in the tests.
    SYNTHCL_FAST_TRITON_TILES       overrides the shape-derived tile sizes, e.g.
                                    "block_m=16,block_n=16,block_d=16,block_do=16,splits=3" (any subset); the
                                    tests use it to walk every code path on small shapes, and it is the knob
                                    for tuning on a GPU.
    SYNTHCL_FAST_TRITON_FP32_PRECISION
                                    tl.dot input precision for float32 inputs: "tf32" (default: tensor cores,
                                    ~3e-4 relative error), "tf32x3" or "ieee" (exact fp32 products, slower).
"""

from __future__ import annotations

import functools
import math
import os
import sys

import torch

KERNEL_MODULES = ("synthcl_fast.backends.triton_common", "synthcl_fast.backends.triton_contrastive",
                  "synthcl_fast.backends.triton_positive_pair")
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
    compiled_for_interpreter = {name: getattr(sys.modules[name], "INTERPRET") for name in KERNEL_MODULES
                                if name in sys.modules}
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA is not available"
        if any(compiled_for_interpreter.values()):
            return "the kernels were loaded under TRITON_INTERPRET=1 (the CPU interpreter); unset it for the GPU"
        if dtype == torch.bfloat16 and torch.cuda.get_device_capability(device) < (8, 0):
            return "bfloat16 tensor-core products need compute capability 8.0 or newer"
        return None
    if device.type == "cpu":
        if not interpreting():
            return "it runs on CUDA tensors (CPU tensors only under Triton's interpreter, TRITON_INTERPRET=1)"
        if not all(compiled_for_interpreter.values()):
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
    and a float64 kernel must use the float64 eps (or 1/R) the reference uses. Kernels add hi + lo in ACC."""
    hi = float(torch.tensor(value, dtype=torch.float32))
    lo = float(torch.tensor(value - hi, dtype=torch.float32))
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


@functools.cache
def multiprocessor_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def next_power_of_2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())
