"""Triton helpers shared by the kernel modules (imported with them, never at `import synthcl_fast`)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_support import interpreting

INTERPRET = interpreting()  # what triton.jit saw when the kernels were defined

TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32,
             torch.float64: tl.float64}


def round_by_hand(dtype: torch.dtype) -> bool:
    """Whether cast_output must round to bfloat16 itself: the interpreter truncates float32 -> bfloat16 (and
    mangles float64 -> bfloat16), where the GPU rounds to nearest even."""
    return INTERPRET and dtype == torch.bfloat16


@triton.jit
def cast_output(x, DTYPE: tl.constexpr, ROUND_BY_HAND: tl.constexpr):
    """x (float32/float64) as DTYPE, rounded to nearest even (by hand through the float32 bits when
    ROUND_BY_HAND, for the interpreter; a plain .to() on the GPU)."""
    if ROUND_BY_HAND:
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True).to(DTYPE)
    else:
        return x.to(DTYPE)
