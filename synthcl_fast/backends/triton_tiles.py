"""What the Triton contrastive kernels share: the prepared rows, the logits tile, the tile plans, the launches.

Layout of the Triton backend (one module per op family, each read top-down: math, kernels, launchers, ops):

    triton_tiles.py           (this module) the named mode, _prepare_rows_kernel, the (rows x columns) logits
                              tile and its masks, tile plans, _launch, and split_launch_and_merge: the one
                              launch-then-merge sequence of every row-statistics pass
    triton_contrastive.py     the contrastive op, its symmetric (CLIP) form and its variants ("negatives",
                              "per_positive"): row statistics, their merge, the ops; ContrastiveStats
    triton_hard_negatives.py  HCL's hard-negative statistics: their kernel, merge and ops; HardNegativeStats
    triton_gradients.py       the backward kernel both families share (one G per Mode, seen from either side),
                              the normalization backward, the temperature gradient, _gradients
    triton_positive_pair.py   the positive-pair loss (rows are independent: its own small kernel)
    triton_common.py, triton_support.py, triton_ops.py   helpers, planning, the op table of the backend

Mode names the statistics and gradient a kernel computes, with the values and names of csrc/common.h's
Denominator (kAll, kNegatives, kPerPositive: the codes the variant op schemas take) and kHardNegatives (the
hard-negative statistics' gradient, which no schema takes: their ops are separate). The kernels receive
int(mode) as the tl.constexpr MODE and compare it with the tl.constexpr names below (MODE_ALL, ...).

Preparation (_prepare_rows_kernel), once per input (once when Y is X): ||x|| accumulated in float64 and the
rows the products take, x~, with inv such that u = x~ inv. Products of raw fp32 or bf16 rows of norm 1e20
overflow fp32; of x~ they cannot. float32 rows: x~ = u, rounded once (inv = 1). bfloat16 rows: x~ = x 2^-k with
||x~|| in [1, 2), exact (only the exponent changes), so 16-bit inputs enter the products exactly and their loss
has fp32 accuracy. float16 rows cannot overflow an fp32 accumulator and float64 ones cannot overflow at all: they
are used as they are (no copy). Also dx_scale = 1 / max(||x||, eps) (0 for a row no longer than eps: a
constant). s = (x~_i . y~_j) (inv_i / t) inv_j, with x~ . y~ from tl.dot (bf16/fp16 tensor cores with fp32
accumulation, tf32 for fp32, fp64 for fp64).

Tile sizes are derived from the shape (`_forward_tiles`, `_backward_tiles`; SYNTHCL_FAST_TRITON_TILES
overrides them), not autotuned: autotuning recompiles/benchmarks per new shape and does not run in the
interpreter. The interpreter runs the same plans as an H200 (triton_support.plan_multiprocessors), so the
split-K merge is planned and run on the CPU too; what it cannot execute as the GPU does is listed in
triton_support.INTERPRETER_DIFFERENCES. Floats are never tl.constexpr: the temperature is read from its
tensor, so a learnable temperature never recompiles; eps is passed as two float32 halves
(triton_support.split_float).
"""

from __future__ import annotations

import contextlib
import enum
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._ops import Reduction, accumulate_dtype
from .triton_common import TL_DTYPES
from .triton_support import (empty_output, fp32_precision, half_dot_operand, next_power_of_2, plan_multiprocessors,
                             split_float, tile_overrides)

_MEAN, _SUM, _NONE = int(Reduction.MEAN), int(Reduction.SUM), int(Reduction.NONE)


class Mode(enum.IntEnum):
    """The statistics and gradient a kernel computes (csrc/common.h: Denominator and kHardNegatives)."""

    ALL = 0             # kAll: the plain op, m and S over every candidate but self
    NEGATIVES = 1       # kNegatives: the variants' m and S over the negatives, G of _variant_term
    PER_POSITIVE = 2    # kPerPositive: the same statistics, per-positive denominators (c_i), G of _variant_term
    HARD_NEGATIVES = 3  # kHardNegatives: HCL's three sets (triton_hard_negatives.py), G of _hard_term


MODE_ALL = tl.constexpr(int(Mode.ALL))
MODE_NEGATIVES = tl.constexpr(int(Mode.NEGATIVES))
MODE_PER_POSITIVE = tl.constexpr(int(Mode.PER_POSITIVE))
MODE_HARD_NEGATIVES = tl.constexpr(int(Mode.HARD_NEGATIVES))


# ----------------------------------------------------------------------------------------------------------
# Kernels: the prepared rows and the logits tile
# ----------------------------------------------------------------------------------------------------------

@triton.jit
def _prepare_rows_kernel(X_ptr, stride_x, XS_ptr, stride_xs, INV_ptr, DX_SCALE_ptr, n_rows, dim, eps_hi, eps_lo,
                         PREPARE: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """Per row: n = ||x|| (float64 sum of squares), c = max(n, eps), DX_SCALE = 1 / c (0 where n <= eps: a
    constant row), and the rows the products take, XS, with INV such that u = XS INV:

        PREPARE == 0 (fp16, fp64)  XS = x (not written), INV = 1 / c
        PREPARE == 1 (bf16)        XS = x 2^-k, exact, with 2^k the power of two at or below c (|k| <= 126),
                                   INV = 2^k / c
        PREPARE == 2 (fp32)        XS = u = x / c rounded to fp32 once, INV = 1 (as plain PyTorch normalizes)
    """
    pid = tl.program_id(0).to(tl.int64)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < n_rows
    sum_sq = tl.zeros([BLOCK_M], dtype=tl.float64)
    for d0 in range(0, dim, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        x = tl.load(X_ptr + offs_m[:, None] * stride_x + offs_d[None, :],
                    mask=mask_m[:, None] & (offs_d[None, :] < dim), other=0.0).to(tl.float64)
        sum_sq += tl.sum(x * x, axis=1)
    norm = tl.sqrt(sum_sq)
    eps = tl.cast(eps_hi, tl.float64) + tl.cast(eps_lo, tl.float64)
    clamped = tl.maximum(norm, eps)
    if PREPARE == 1:
        # Any power of two serves (the scaling is exact either way): a floor(log2) off by one near a power of
        # two only leaves ||x~|| in [0.5, 4).
        k = tl.minimum(tl.maximum(tl.floor(tl.log2(clamped)), -126.0), 126.0)
        scale = tl.exp2(-k)
        inv = 1.0 / (clamped * scale)
    elif PREPARE == 2:
        scale = 1.0 / clamped
        inv = tl.full([BLOCK_M], 1.0, tl.float64)
    else:
        scale = tl.full([BLOCK_M], 1.0, tl.float64)
        inv = 1.0 / clamped
    if PREPARE != 0:
        for d0 in range(0, dim, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            mask = mask_m[:, None] & (offs_d[None, :] < dim)
            x = tl.load(X_ptr + offs_m[:, None] * stride_x + offs_d[None, :], mask=mask, other=0.0)
            if PREPARE == 1:  # exact in fp32 (and a float64 -> bfloat16 cast is what the interpreter mangles)
                xs = x.to(tl.float32) * scale.to(tl.float32)[:, None]
            else:
                xs = x.to(tl.float64) * scale[:, None]
            tl.store(XS_ptr + offs_m[:, None] * stride_xs + offs_d[None, :], xs.to(XS_ptr.dtype.element_ty),
                     mask=mask)
    tl.store(INV_ptr + offs_m, inv.to(ACC), mask=mask_m)
    tl.store(DX_SCALE_ptr + offs_m, tl.where(norm > eps, 1.0 / clamped, 0.0).to(ACC), mask=mask_m)


@triton.jit
def _load_rows(X_ptr, stride_x, offs_m, mask_m, d0, dim, BLOCK_D: tl.constexpr):
    """The (BLOCK_M, BLOCK_D) tile X[offs_m, d0:d0+BLOCK_D], zero outside the matrix, in X's dtype."""
    offs_d = d0 + tl.arange(0, BLOCK_D)
    return tl.load(X_ptr + offs_m[:, None] * stride_x + offs_d[None, :],
                   mask=mask_m[:, None] & (offs_d[None, :] < dim), other=0.0)


@triton.jit
def _logits_tile(x_tile, X_ptr, stride_x, offs_m, mask_m, row_scale, Y_ptr, stride_y, offs_n, mask_n, col_scale,
                 dim, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                 SINGLE_D_CHUNK: tl.constexpr, DOT: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr):
    """s = (X~[offs_m] . Y~[offs_n]) * row_scale[:, None] * col_scale[None, :], a (BLOCK_M, BLOCK_N) ACC tile.

    Operands go to tl.dot in DOT (the input dtype on a GPU: tensor cores with ACC accumulation; see
    triton_support.half_dot_operand for the interpreter). With SINGLE_D_CHUNK the caller loaded x_tile (all of
    D) once, outside its loop over tiles; otherwise both operands are loaded chunk by chunk of D."""
    if SINGLE_D_CHUNK:
        y = _load_rows(Y_ptr, stride_y, offs_n, mask_n, 0, dim, BLOCK_D).to(DOT)
        dots = tl.dot(x_tile, tl.trans(y), input_precision=PRECISION, out_dtype=ACC)
    else:
        dots = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC)
        for d0 in range(0, dim, BLOCK_D):
            x = _load_rows(X_ptr, stride_x, offs_m, mask_m, d0, dim, BLOCK_D).to(DOT)
            y = _load_rows(Y_ptr, stride_y, offs_n, mask_n, d0, dim, BLOCK_D).to(DOT)
            dots = tl.dot(x, tl.trans(y), dots, input_precision=PRECISION, out_dtype=ACC)
    return dots * row_scale[:, None] * col_scale[None, :]


@triton.jit
def _tile_masks(offs_m, mask_m, label_x, offs_n, mask_n, label_y, EXCLUDE_SELF: tl.constexpr):
    """(allowed, positive) of a tile: N(i) (in the matrix, and not the self pair when EXCLUDE_SELF) and P(i)
    (allowed, same label, label >= 0)."""
    allowed = mask_m[:, None] & mask_n[None, :]
    if EXCLUDE_SELF:
        allowed = allowed & (offs_m[:, None] != offs_n[None, :])
    return allowed, allowed & (label_x[:, None] == label_y[None, :]) & (label_x[:, None] >= 0)


@triton.jit
def _column_tile(x_tile, X_ptr, stride_x, offs_m, mask_m, row_scale, label_x, Y_ptr, stride_y, INV_Y_ptr, LABEL_Y_ptr,
                 start_n, n_end, dim, EXCLUDE_SELF: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_D: tl.constexpr, SINGLE_D_CHUNK: tl.constexpr, DOT: tl.constexpr, ACC: tl.constexpr,
                 PRECISION: tl.constexpr):
    """(s, allowed, positive) of the rows' tile against columns [start_n, +BLOCK_N) (those below n_end): the
    forward-side kernels' loop body up to the statistics (the backward keeps its column scales for dV)."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    mask_n = offs_n < n_end
    col_scale = tl.load(INV_Y_ptr + offs_n, mask=mask_n, other=1.0).to(ACC)
    label_y = tl.load(LABEL_Y_ptr + offs_n, mask=mask_n, other=-1)
    s = _logits_tile(x_tile, X_ptr, stride_x, offs_m, mask_m, row_scale, Y_ptr, stride_y, offs_n, mask_n, col_scale,
                     dim, BLOCK_M, BLOCK_N, BLOCK_D, SINGLE_D_CHUNK, DOT, ACC, PRECISION)
    allowed, positive = _tile_masks(offs_m, mask_m, label_x, offs_n, mask_n, label_y, EXCLUDE_SELF)
    return s, allowed, positive


# ----------------------------------------------------------------------------------------------------------
# Plans and launches
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Tiles:
    block_m: int
    block_n: int
    block_d: int     # feature chunk of the logits product
    block_do: int    # feature chunk of a gradient program's output (backward only)
    splits: int      # programs sharing one row block's columns
    n_per_split: int
    num_warps: int
    num_stages: int


def _dot_dtypes(dtype: torch.dtype):
    """(operand dtype for tl.dot, accumulation dtype, input precision)."""
    if dtype == torch.float64:
        return tl.float64, tl.float64, "ieee"
    if dtype == torch.float32:
        return tl.float32, tl.float32, fp32_precision()
    return half_dot_operand(dtype), tl.float32, "ieee"


def _single_chunk_limit(dtype: torch.dtype) -> int:
    """Largest D kept whole in a tile (loaded once per program) rather than looped over in chunks."""
    return 256 if dtype.itemsize <= 2 else (128 if dtype == torch.float32 else 64)


def _feature_block(dim: int, dtype: torch.dtype) -> int:
    whole = max(16, next_power_of_2(dim))
    return whole if whole <= _single_chunk_limit(dtype) else (64 if dtype.itemsize <= 2 else 32)


def _fit(n: int, cap: int) -> int:
    """A power-of-two block >= 16 (tl.dot's minimum), at most cap, no larger than n needs."""
    return max(16, min(cap, next_power_of_2(n)))


def _splits(n_programs: int, n_other: int, block_n: int, device: torch.device) -> int:
    """Column splits so that a launch has ~2 programs per SM, each with at least 4 column tiles."""
    target = 2 * plan_multiprocessors(device)
    if n_programs >= target:
        return 1
    return max(1, min(triton.cdiv(target, n_programs), n_other // (4 * block_n)))


def _finish_tiles(tiles: dict, n_other: int, device: torch.device, n_programs_per_split: int) -> _Tiles:
    tiles.update(tile_overrides())
    if "splits" not in tiles:
        tiles["splits"] = _splits(n_programs_per_split, n_other, tiles["block_n"], device)
    # Whole column tiles per split, rounded down (at least as many programs as asked for), no empty split.
    n_per_split = max(1, n_other // tiles["splits"] // tiles["block_n"]) * tiles["block_n"]
    tiles["splits"] = triton.cdiv(n_other, n_per_split)
    return _Tiles(n_per_split=n_per_split, **tiles)


def _forward_tiles(n_x: int, n_y: int, dim: int, dtype: torch.dtype, device: torch.device) -> _Tiles:
    wide = dtype.itemsize <= 2
    block_d = _feature_block(dim, dtype)
    # The row tile (BLOCK_M x BLOCK_D) stays on chip for the whole loop: 128 rows up to D = 128, 64 above.
    # Column tiles of 32 beside 128 rows, 64 beside 64 (16-bit): no register spills per ptxas at D = 128 and
    # 256 (64 x 128 spilled 292 bytes; benchmarks/results/triton_sm90_resources.md). Untimed choices.
    block_m = _fit(n_x, 64 if not wide or block_d > 128 else 128)
    block_n = _fit(n_y, 64 if wide and block_m < 128 else 32)
    tiles = dict(block_m=block_m, block_n=block_n, block_d=block_d, block_do=16,
                 num_warps=8 if wide and (block_m >= 128 or block_m * block_d >= 128 * 128) else 4,
                 num_stages=3 if wide and next_power_of_2(dim) <= _single_chunk_limit(dtype) else 2)
    return _finish_tiles(tiles, n_y, device, triton.cdiv(n_x, block_m))


def _backward_tiles(n_x: int, n_y: int, dim: int, dtype: torch.dtype, device: torch.device) -> _Tiles:
    wide = dtype.itemsize <= 2
    block_do = min(max(16, next_power_of_2(dim)), 256 if wide else 128)
    # The (BLOCK_M, BLOCK_DO) fp32 gradient accumulator stays in registers: <= 16K elements per program.
    block_m = _fit(n_x, min(128, max(16, 16384 // block_do)))
    # 64 columns per tile, 32 for fp32/fp64 or a 256-wide gradient chunk (ptxas: 260 bytes of spills at 64
    # for bf16 D = 256, 4 at 32; benchmarks/results/triton_sm90_resources.md).
    block_n = _fit(n_y, 64 if wide and block_do < 256 else 32)
    tiles = dict(block_m=block_m, block_n=block_n, block_d=_feature_block(dim, dtype), block_do=block_do,
                 num_warps=8 if block_m * max(block_n, block_do) >= 128 * 64 else 4, num_stages=2)
    n_do = triton.cdiv(dim, tile_overrides().get("block_do", block_do))
    return _finish_tiles(tiles, n_y, device, triton.cdiv(n_x, block_m) * n_do)


def _launch(kernel, grid, *args, **kwargs) -> None:
    """kernel[grid](*args, **kwargs); if the GPU runs out of shared memory or registers for the software
    pipeline (the tile sizes are derived from the shape, not tuned on every card), retry with a single stage
    before giving up with a pointer to SYNTHCL_FAST_TRITON_TILES."""
    try:
        kernel[grid](*args, **kwargs)
    except triton.runtime.OutOfResources as error:
        if kwargs.get("num_stages", 1) <= 1:
            name = getattr(getattr(kernel, "fn", kernel), "__name__", "a kernel")
            raise RuntimeError(f"synthcl_fast: {name} does not fit this GPU with tiles {kwargs}; set "
                               "smaller ones with SYNTHCL_FAST_TRITON_TILES (see triton_support.py)") from error
        kernel[grid](*args, **{**kwargs, "num_stages": 1})


def _device_guard(t: Tensor):
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _unit_stride(x: Tensor) -> Tensor:
    """The kernels index rows by stride and features by 1."""
    return x if x.stride(1) == 1 or x.shape[1] == 1 else x.contiguous()


class _Side:
    """One side of the product (rows or columns): its prepared rows (_prepare_rows_kernel: x~, inv, dx_scale)
    and labels. The same tensor object as the rows shares their preparation."""

    def __init__(self, features: Tensor, labels: Tensor, eps: float, same_as: _Side | None = None,
                 same_labels: bool = False):
        if same_as is not None:
            self.x, self.inv, self.dx_scale = same_as.x, same_as.inv, same_as.dx_scale
        else:
            self.x, self.inv, self.dx_scale = _prepare_rows(_unit_stride(features), eps)
        self.labels = labels.contiguous()
        self.same_as_rows = same_as is not None
        self.symmetric = self.same_as_rows and same_labels  # s and the positive mask are symmetric

    @property
    def n(self) -> int:
        return self.x.shape[0]


_PREPARE = {torch.float16: 0, torch.float64: 0, torch.bfloat16: 1, torch.float32: 2}


def _prepare_rows(x: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """(x~, inv, dx_scale) of _prepare_rows_kernel; x~ is x itself for float16 and float64 (no copy)."""
    n_rows, dim = x.shape
    acc = accumulate_dtype(x.dtype)
    prepare = _PREPARE[x.dtype]
    xs = empty_output((n_rows, dim), x.dtype, x.device) if prepare else x
    inv, dx_scale = empty_output((n_rows,), acc, x.device), empty_output((n_rows,), acc, x.device)
    block_m, block_d = 32, min(max(16, next_power_of_2(dim)), 256)
    _prepare_rows_kernel[(triton.cdiv(n_rows, block_m),)](
        x, x.stride(0), xs, xs.stride(0), inv, dx_scale, n_rows, dim, *split_float(eps), PREPARE=prepare,
        ACC=TL_DTYPES[acc], BLOCK_M=block_m, BLOCK_D=block_d, num_warps=4)
    return xs, inv, dx_scale


def _sides(anchors: Tensor, candidates: Tensor, anchor_labels: Tensor, candidate_labels: Tensor, eps: float):
    """(rows, columns). The same tensor object for both (not merely the same memory: x and x.detach() must
    keep separate gradients) shares the prepared rows and, in the backward, one gradient buffer."""
    rows = _Side(anchors, anchor_labels, eps)
    same = candidates is anchors
    return rows, _Side(candidates, candidate_labels, eps, rows if same else None,
                       same and candidate_labels is anchor_labels)


def split_launch_and_merge(stats_kernel, merge_kernel, rows: _Side, cols: _Side, temperature: Tensor,
                           exclude_self: bool, parts: tuple, unsplit: tuple, outputs: tuple, inputs: tuple = (),
                           stats_kwargs: dict | None = None, merge_kwargs: dict | None = None) -> _Tiles:
    """The one launch-then-merge sequence of the row statistics (every family's forward): stats_kernel over the
    column splits of the forward plan (a few row blocks would leave most SMs idle), then, with several splits,
    merge_kernel, which combines the splits' partial statistics in split order (deterministic, no atomics).

    The kernels' positional arguments, in this order (the family's kernels follow it):
        stats_kernel  X, Y, stride_x, stride_y, INV_X, INV_Y, LABEL_X, LABEL_Y, T, *inputs, *PART, *outputs,
                      n_x, n_y, dim, n_per_split, then EXCLUDE_SELF, FINAL, the tiles, DOT, ACC, PRECISION
        merge_kernel  *PART, *inputs, *outputs, n_x, n_splits, then ACC, BLOCK_M
    parts: (trailing shape, dtype) of each partial buffer, allocated (splits, n_x, *shape); unsplit: the
    tensors passed in their place for a single split (FINAL: not written). stats_kwargs / merge_kwargs: the
    family's further arguments. Returns the plan (its tiles serve the family's later passes)."""
    x, y = rows.x, cols.x
    n_x, dim = x.shape
    dot, acc_tl, precision = _dot_dtypes(x.dtype)
    t = _forward_tiles(n_x, y.shape[0], dim, x.dtype, x.device)
    final = t.splits == 1
    part = unsplit if final else tuple(empty_output((t.splits, n_x, *shape), dtype, x.device) for shape, dtype in parts)
    _launch(
        stats_kernel, (triton.cdiv(n_x, t.block_m), t.splits),
        x, y, x.stride(0), y.stride(0), rows.inv, cols.inv, rows.labels, cols.labels, temperature, *inputs,
        *part, *outputs, n_x, y.shape[0], dim, t.n_per_split,
        EXCLUDE_SELF=exclude_self, FINAL=final, BLOCK_M=t.block_m, BLOCK_N=t.block_n, BLOCK_D=t.block_d,
        SINGLE_D_CHUNK=t.block_d >= dim, DOT=dot, ACC=acc_tl, PRECISION=precision, **(stats_kwargs or {}),
        num_warps=t.num_warps, num_stages=t.num_stages)
    if not final:
        block_m = 128
        merge_kernel[(triton.cdiv(n_x, block_m),)](*part, *inputs, *outputs, n_x, t.splits, ACC=acc_tl,
                                                   BLOCK_M=block_m, **(merge_kwargs or {}), num_warps=4)
    return t


def _check_inputs(anchors: Tensor, candidates: Tensor, anchor_labels: Tensor, candidate_labels: Tensor,
                  temperature: Tensor, reduction: int, eps: float) -> None:
    """The last line of defence for a direct call of the ops (the public API validates with friendlier errors)."""
    for t, name in ((anchors, "anchors"), (candidates, "candidates")):
        torch._check(t.dim() == 2 and t.shape[0] > 0 and t.shape[1] > 0,
                     lambda: f"{name} must be a non-empty 2-D tensor, got shape {tuple(t.shape)}")
        torch._check(t.dtype in TL_DTYPES, lambda: f"{name} must be float16/bfloat16/float32/float64, got {t.dtype}")
    torch._check(anchors.shape[1] == candidates.shape[1] and anchors.dtype == candidates.dtype,
                 lambda: "anchors and candidates must have the same feature dimension and dtype")
    for t, name, n in ((anchor_labels, "anchor_labels", anchors.shape[0]),
                       (candidate_labels, "candidate_labels", candidates.shape[0])):
        torch._check(t.shape == (n,) and t.dtype == torch.int64,
                     lambda: f"{name} must be int64 of shape ({n},), got {t.dtype} {tuple(t.shape)}")
    torch._check(temperature.numel() == 1 and temperature.dtype.is_floating_point,
                 lambda: "temperature must be a one-element floating tensor")
    for t, name in ((candidates, "candidates"), (anchor_labels, "anchor_labels"),
                    (candidate_labels, "candidate_labels"), (temperature, "temperature")):
        torch._check(t.device == anchors.device, lambda: f"{name} is on {t.device} but anchors on {anchors.device}")
    torch._check(reduction in (_NONE, _MEAN, _SUM), lambda: f"reduction code must be 0, 1 or 2, got {reduction}")
    torch._check(eps > 0, lambda: f"eps must be positive, got {eps}")


def _empty_grads(anchors: Tensor, candidates: Tensor, temperature: Tensor):
    return anchors.new_empty((0,)), candidates.new_empty((0,)), temperature.new_empty((0,))
