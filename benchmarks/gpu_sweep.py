"""GPU sweep: the Triton and CUDA kernels against the materializing reference, torch.compile(reference) and
Inf-CL, with the card's own ceilings, in one run (one `device` call: under 10 minutes on an H100).

    python benchmarks/gpu_sweep.py                 # checks + ceilings + every case; writes benchmarks/results/
    python benchmarks/gpu_sweep.py --dry-run       # the plan (cases, variants, flops, skips); no GPU needed
    python benchmarks/plot_gpu_sweep.py benchmarks/results/gpu_sweep.json

What it does, in order (later parts are skipped, and say so, once --budget-s is spent):
1. Environment: GPU name, SMs, memory, torch, triton, CUDA versions, commit.
2. Ceilings measured on this card: bf16 matrix-product rate (torch.mm, 8192^3) and device copy bandwidth.
3. Checks: the Triton and CUDA backends (each where it can run) against a float64 reference on the GPU
   (fp32, bf16, fp16; NT-Xent, SupCon labels, MoCo queue, symmetric CLIP; temperature 0.01 in bf16; the
   positive-pair loss), values and gradients; bitwise determinism. Targets: fp32 3e-4, bf16 1e-2, fp16 2e-3
   relative to the largest entry.
4. Timings, per case and variant: forward (no grad), forward + backward (one training step of the loss:
   forward with grad, then torch.autograd.grad) and backward = their difference; CUDA events around
   every call, median of many calls after warm-up, inputs rotated over 3 sets (no L2 reuse between calls);
   effective TFLOP/s on the ideal flop count (2RKD forward, 8RKD forward + backward; the symmetric CLIP
   loss also counts 8RKD: both directions from one set of products); peak extra memory
   (torch.cuda.max_memory_allocated during one step minus what was allocated before it: the inputs).
   Variants: triton; cuda (csrc/*_cuda.cu; its speed_vs_triton is the issue's "within 1.25x" ratio);
   reference (synthcl_fast.reference's textbook losses, R x K logits); compiled
   (torch.compile(reference, dynamic=True): one compilation per loss for every shape); inf_cl
   (`inf_cl.cal_flash_loss`, one direction per call, fp32 inside, where `pip install inf-cl` was done).
   The reference and its compiled form are skipped where their logits would not fit in memory.

Cases (bf16 unless said): SimCLR NT-Xent R = K in {4096, 16384, 65536}, D in {128, 256} (plus fp32 at
16384/128); MoCo R = 256 queries, K = 65536 keys + queue, D = 128; CLIP B in {16384, 65536}, D in {512, 768}
(symmetric, and one direction against Inf-CL); scale: NT-Xent R = K = 262144, D = 128 (fused backends only);
positive_pair: R = 2^20 rows, D = 256, bf16 and fp32 (memory-bound: GB/s on the bytes it must move, reading
a and b and writing the gradient of a, and the fraction of the measured copy bandwidth).

Output: benchmarks/results/gpu_sweep.json (everything), gpu_sweep.csv (one row per case x variant),
gpu_sweep.md (the table). Nothing here has been run on a GPU by its author: the numbers are still to be
measured.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "gpu_sweep"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
TEMPERATURE = {"simclr": 0.1, "scale": 0.1, "moco": 0.07}
CLIP_LOGIT_SCALE = 1 / 0.07
REFERENCE_LOGIT_COPIES = 6  # R x K fp32 buffers a reference forward + backward holds at once (estimate)
N_ROTATE = 3
TARGETS = {"float32": 3e-4, "bfloat16": 1e-2, "float16": 2e-3}


@dataclass(frozen=True)
class Case:
    family: str   # simclr | moco | clip | scale
    rows: int     # R: anchors (SimCLR: both views; MoCo: queries; CLIP: images)
    cols: int     # K: candidates (SimCLR: the same rows; MoCo: keys + queue; CLIP: texts)
    dim: int
    dtype: str = "bfloat16"

    @property
    def name(self) -> str:
        shape = f"R=K={self.rows}" if self.rows == self.cols else f"R={self.rows} K={self.cols}"
        if self.family == "clip":
            shape = f"B={self.rows}"
        if self.family == "positive_pair":
            shape = f"R={self.rows}"
        return f"{self.family} {shape} D={self.dim} {self.dtype}"

    @property
    def flops_forward(self) -> float:
        return 0.0 if self.family == "positive_pair" else 2.0 * self.rows * self.cols * self.dim

    @property
    def flops_step(self) -> float:
        return 0.0 if self.family == "positive_pair" else 8.0 * self.rows * self.cols * self.dim

    @property
    def bytes_step(self) -> int:
        """Bytes a fused forward + backward must move (positive_pair: read a and b, write the gradient of a)."""
        element = torch.empty((), dtype=DTYPES[self.dtype]).element_size()
        return 3 * self.rows * self.dim * element if self.family == "positive_pair" else 0

    def reference_bytes(self) -> int:
        return REFERENCE_LOGIT_COPIES * self.rows * self.cols * 4

    def input_bytes(self) -> int:
        n_vectors = self.rows + self.cols if self.family != "simclr" and self.family != "scale" else self.rows
        return n_vectors * self.dim * torch.empty((), dtype=DTYPES[self.dtype]).element_size()


CASES = [
    # The issue's headline target first (60% of the bf16 matrix rate), then the rest.
    Case("simclr", 16384, 16384, 256),
    Case("moco", 256, 65536, 128),
    Case("clip", 16384, 16384, 512),
    Case("simclr", 4096, 4096, 128),
    Case("simclr", 4096, 4096, 256),
    Case("simclr", 16384, 16384, 128),
    Case("simclr", 16384, 16384, 128, "float32"),
    Case("simclr", 65536, 65536, 128),
    Case("simclr", 65536, 65536, 256),
    Case("clip", 16384, 16384, 768),
    Case("clip", 65536, 65536, 512),
    Case("clip", 65536, 65536, 768),
    Case("scale", 262144, 262144, 128),
    Case("positive_pair", 1 << 20, 1, 256),
    Case("positive_pair", 1 << 20, 1, 256, "float32"),
]

# --smoke: the same code paths on the CPU (Triton's interpreter, perf_counter timing, tiny shapes), so that
# the script can be checked on a machine without a GPU. Its numbers mean nothing.
SMOKE_CASES = [Case("simclr", 64, 64, 32, "float32"), Case("moco", 16, 160, 32, "float32"),
               Case("clip", 48, 48, 32, "bfloat16"), Case("positive_pair", 64, 1, 32, "float32")]

VARIANTS = {
    "simclr": ["triton", "cuda", "reference", "compiled"],
    "scale": ["triton", "cuda"],
    "moco": ["triton", "cuda", "reference", "compiled", "inf_cl"],
    "clip": ["triton", "cuda", "reference", "compiled", "triton_one_direction", "inf_cl_one_direction", "inf_cl"],
    "positive_pair": ["triton", "cuda", "reference", "compiled"],
}
FUSED = ("triton", "cuda")  # variants that are synthcl_fast backends


@dataclass
class Planned:
    case: Case
    variant: str
    skip: str | None = None


@dataclass
class Row:
    case: str
    family: str
    variant: str
    rows: int
    cols: int
    dim: int
    dtype: str
    status: str = "ok"
    forward_ms: float | None = None
    step_ms: float | None = None
    backward_ms: float | None = None
    forward_tflops: float | None = None
    step_tflops: float | None = None
    peak_extra_mb: float | None = None
    loss: float | None = None
    reps: dict = field(default_factory=dict)
    speedup_vs_reference: float | None = None
    speedup_vs_compiled: float | None = None
    speedup_vs_inf_cl: float | None = None
    speed_vs_triton: float | None = None      # cuda rows: triton's step time / cuda's (>= 0.8: within 1.25x)
    step_gb_per_s: float | None = None        # positive_pair: bytes_step over the step time
    fraction_of_copy: float | None = None     # positive_pair: of the measured device copy bandwidth
    memory_vs_reference: float | None = None
    fraction_of_bf16_matmul: float | None = None


def inf_cl_available() -> str | None:
    """None when Inf-CL imports, else why not."""
    try:
        import inf_cl  # noqa: F401
    except Exception as error:  # not installed, or its import of triton/CUDA fails
        return f"inf_cl not importable ({type(error).__name__}: {error})"
    return None


def inf_cl_head_dim(dim: int) -> int | None:
    """Inf-CL splits D into heads of 16..256 features and needs D divisible by the head size."""
    for head in (256, 128, 64, 32, 16):
        if dim % head == 0:
            return head
    return None


def backend_unavailable(name: str, case: Case, device: torch.device) -> str | None:
    """Why a fused backend cannot run a case's inputs on `device` (None: it can)."""
    from synthcl_fast.backends import BACKENDS

    reason = BACKENDS[name].unavailable_reason(device, DTYPES[case.dtype])
    return None if reason is None else f"backend {name!r} unavailable: {reason}"


def make_plan(cases, memory_bytes: float | None, inf_cl_reason: str | None, compile_reference: bool,
              only: set[str] | None, device: torch.device = torch.device("cuda")) -> list[Planned]:
    plan = []
    for case in cases:
        if only and case.family not in only:
            continue
        for variant in VARIANTS[case.family]:
            skip = None
            if variant in ("reference", "compiled") and memory_bytes is not None \
                    and case.reference_bytes() > 0.85 * memory_bytes:
                skip = (f"reference logits need ~{case.reference_bytes() / 2**30:.0f} GiB "
                        f"(> 85% of {memory_bytes / 2**30:.0f} GiB)")
            elif variant == "compiled" and not compile_reference:
                skip = "--no-compile"
            elif variant == "cuda":  # the triton variant reports its own errors (its interpreter runs --smoke)
                skip = backend_unavailable("cuda", case, device)
            elif variant.startswith("inf_cl"):
                if inf_cl_reason is not None:
                    skip = inf_cl_reason
                elif inf_cl_head_dim(case.dim) is None:
                    skip = f"Inf-CL needs D divisible by 16..256, got {case.dim}"
            plan.append(Planned(case, variant, skip))
    return plan


# ------------------------------------------------------------------------------------------ the steps

def make_inputs(case: Case, device, seed: int):
    """One set of inputs (leaves that require grad, plus the extras) for a case."""
    generator = torch.Generator(device=device).manual_seed(seed)
    dtype = DTYPES[case.dtype]

    def randn(n, grad=True):
        x = torch.randn(n, case.dim, generator=generator, device=device, dtype=torch.float32).to(dtype)
        return x.requires_grad_(grad)

    if case.family in ("simclr", "scale"):
        return {"z1": randn(case.rows // 2), "z2": randn(case.rows // 2)}
    if case.family == "moco":
        return {"query": randn(case.rows), "key": randn(case.rows), "queue": randn(case.cols - case.rows, grad=False)}
    if case.family == "positive_pair":
        return {"a": randn(case.rows), "b": randn(case.rows, grad=False)}
    return {"image": randn(case.rows), "text": randn(case.cols),
            "logit_scale": torch.tensor(CLIP_LOGIT_SCALE, device=device, requires_grad=True)}


def make_loss(case: Case, variant: str):
    """fn(inputs) -> scalar loss, for a case and variant."""
    import synthcl_fast.losses as L
    from synthcl_fast import reference as ref

    family = case.family
    if variant == "compiled":
        base = {"simclr": ref.nt_xent, "moco": ref.info_nce, "clip": ref.clip_loss,
                "positive_pair": ref.positive_pair_loss}[family]
        compiled = _compiled(base)
        return _loss_for(case, "reference", {"nt_xent": compiled, "info_nce": compiled, "clip_loss": compiled,
                                             "positive_pair_loss": compiled})
    if variant in ("reference", "triton_one_direction") + FUSED:
        return _loss_for(case, variant, None)
    if variant.startswith("inf_cl"):
        import torch.nn.functional as F
        from inf_cl import cal_flash_loss

        head_dim = inf_cl_head_dim(case.dim)

        def one_direction(q, k, scale):
            labels = torch.arange(q.shape[0], device=q.device)
            return cal_flash_loss(F.normalize(q.float(), dim=-1), F.normalize(k.float(), dim=-1), labels=labels,
                                  scale=scale, head_dim=head_dim).mean()

        if family == "moco":
            return lambda x: one_direction(x["query"], torch.cat([x["key"], x["queue"]]), 1 / TEMPERATURE["moco"])
        if variant == "inf_cl_one_direction":
            return lambda x: one_direction(x["image"], x["text"], x["logit_scale"])
        return lambda x: (one_direction(x["image"], x["text"], x["logit_scale"])
                          + one_direction(x["text"], x["image"], x["logit_scale"])) / 2
    raise ValueError(f"unknown variant {variant!r}")


_COMPILED = {}


def _compiled(fn):
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn, dynamic=True)
    return _COMPILED[fn]


def _loss_for(case: Case, variant: str, compiled: dict | None):
    import synthcl_fast.losses as L
    from synthcl_fast import reference as ref

    if variant == "reference":
        fns = compiled or {"nt_xent": ref.nt_xent, "info_nce": ref.info_nce, "clip_loss": ref.clip_loss,
                           "positive_pair_loss": ref.positive_pair_loss}
        kw = {}
    else:
        fns = {"nt_xent": L.nt_xent, "info_nce": L.info_nce, "clip_loss": L.clip_loss,
               "positive_pair_loss": L.positive_pair_loss}
        kw = {"backend": "cuda" if variant == "cuda" else "triton"}
    if case.family in ("simclr", "scale"):
        return lambda x: fns["nt_xent"](x["z1"], x["z2"], temperature=TEMPERATURE["simclr"], **kw)
    if case.family == "moco":
        return lambda x: fns["info_nce"](x["query"], x["key"], negatives=x["queue"], temperature=TEMPERATURE["moco"],
                                         **kw)
    if case.family == "positive_pair":
        return lambda x: fns["positive_pair_loss"](x["a"], x["b"], 0.5, **kw)
    symmetric = variant != "triton_one_direction"
    return lambda x: fns["clip_loss"](x["image"], x["text"], logit_scale=x["logit_scale"], symmetric=symmetric, **kw)


def leaves(inputs: dict):
    return [v for v in inputs.values() if isinstance(v, torch.Tensor) and v.requires_grad]


# --------------------------------------------------------------------------------------------- timing

def cpu_time_ms(fn, n_calls: int, warmup: int, target_s: float, max_reps: int) -> tuple[float, int]:
    """--smoke: the same protocol with perf_counter on the CPU."""
    for i in range(warmup):
        fn(i % N_ROTATE)
    times = []
    for i in range(n_calls):
        start = time.perf_counter()
        fn(i % N_ROTATE)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), n_calls


def cuda_time_ms(fn, n_calls: int, warmup: int, target_s: float, max_reps: int) -> tuple[float, int]:
    """Median ms of fn(i) over CUDA events, i cycling over the rotated inputs; reps fitted to target_s."""
    if not torch.cuda.is_available():
        return cpu_time_ms(fn, n_calls, 1, target_s, max_reps)
    for i in range(warmup):
        fn(i % N_ROTATE)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn(0)
    end.record()
    torch.cuda.synchronize()
    single_ms = max(start.elapsed_time(end), 1e-3)
    reps = int(min(max_reps, max(n_calls, target_s * 1e3 / single_ms)))
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for i, (s, e) in enumerate(events):
        s.record()
        fn(i % N_ROTATE)
        e.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events), reps


def peak_extra_mb(fn) -> float:
    if not torch.cuda.is_available():
        from synthcl_fast.benchmarking import peak_memory_bytes

        return peak_memory_bytes(fn) / 2**20
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def measure(planned: Planned, device, args) -> Row:
    case, variant = planned.case, planned.variant
    row = Row(case.name, case.family, variant, case.rows, case.cols, case.dim, case.dtype)
    if planned.skip:
        row.status = f"skipped: {planned.skip}"
        return row
    try:
        inputs = [make_inputs(case, device, seed) for seed in range(N_ROTATE)]
        loss_fn = make_loss(case, variant)

        def forward(i):
            with torch.no_grad():
                return loss_fn(inputs[i])

        def step(i):
            x = inputs[i]
            loss = loss_fn(x)
            torch.autograd.grad(loss, leaves(x))
            return loss

        warmup = 3 if variant != "compiled" else 2
        row.forward_ms, reps_f = cuda_time_ms(forward, args.min_reps, warmup, args.target_s, args.max_reps)
        row.step_ms, reps_s = cuda_time_ms(step, args.min_reps, warmup, args.target_s, args.max_reps)
        row.backward_ms = row.step_ms - row.forward_ms
        row.reps = {"forward": reps_f, "step": reps_s}
        row.forward_tflops = case.flops_forward / (row.forward_ms * 1e-3) / 1e12
        row.step_tflops = case.flops_step / (row.step_ms * 1e-3) / 1e12
        if case.bytes_step:
            row.step_gb_per_s = case.bytes_step / (row.step_ms * 1e-3) / 1e9
        row.peak_extra_mb = peak_extra_mb(lambda: step(0))
        with torch.no_grad():
            row.loss = float(loss_fn(inputs[0]))
    except torch.cuda.OutOfMemoryError as error:
        row.status = f"out of memory: {str(error).splitlines()[0][:160]}"
    except Exception as error:  # record and go on: one broken variant must not lose the rest of the sweep
        row.status = f"error: {type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
    finally:
        inputs = loss_fn = None
        torch.cuda.empty_cache()
    return row


def add_ratios(rows: list[Row], ceilings: dict) -> None:
    by_case = {}
    for row in rows:
        by_case.setdefault(row.case, {})[row.variant] = row
    for variants in by_case.values():
        for row in variants.values():
            if row.status != "ok":
                continue
            for other, attribute in (("reference", "speedup_vs_reference"), ("compiled", "speedup_vs_compiled")):
                base = variants.get(other)
                if base is not None and base.status == "ok":
                    setattr(row, attribute, base.step_ms / row.step_ms)
            inf = variants.get("inf_cl_one_direction" if row.variant == "triton_one_direction" else "inf_cl")
            if inf is not None and inf.status == "ok":
                row.speedup_vs_inf_cl = inf.step_ms / row.step_ms
            triton = variants.get("triton")
            if row.variant == "cuda" and triton is not None and triton.status == "ok":
                row.speed_vs_triton = triton.step_ms / row.step_ms
            if row.step_gb_per_s and ceilings.get("copy_gb_per_s"):
                row.fraction_of_copy = row.step_gb_per_s / ceilings["copy_gb_per_s"]
            base = variants.get("reference")
            if base is not None and base.status == "ok" and base.peak_extra_mb:
                row.memory_vs_reference = row.peak_extra_mb / base.peak_extra_mb
            if ceilings.get("bf16_matmul_tflops") and row.step_tflops:
                row.fraction_of_bf16_matmul = row.step_tflops / ceilings["bf16_matmul_tflops"]


# ------------------------------------------------------------------------------------ ceilings, checks

def measure_ceilings(device) -> dict:
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    mm_ms, _ = cuda_time_ms(lambda i: torch.mm(a, b), 10, 5, 0.5, 200)
    del a, b
    n_bytes = 1 << 30
    src = torch.empty(n_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    copy_ms, _ = cuda_time_ms(lambda i: dst.copy_(src), 10, 5, 0.5, 200)
    del src, dst
    torch.cuda.empty_cache()
    return {"bf16_matmul_tflops": 2 * n**3 / (mm_ms * 1e-3) / 1e12, "bf16_matmul_shape": [n, n, n],
            "copy_gb_per_s": 2 * n_bytes / (copy_ms * 1e-3) / 1e9, "copy_bytes": n_bytes}


def _relative(actual, expected) -> float:
    actual, expected = actual.detach().double(), expected.detach().double()
    if not torch.isfinite(actual).all():
        return math.inf
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30))


def run_checks(device, small: bool = False) -> list[dict]:
    """Each fused backend that can run on `device` against a float64 reference computed there; determinism.
    small: --smoke sizes."""
    import synthcl_fast.losses as L
    from synthcl_fast import reference as ref
    from synthcl_fast.backends import BACKENDS

    generator = torch.Generator(device=device).manual_seed(0)
    results = []

    def check(name, dtype, fn_fused, fn_reference, make):
        tensors = make(dtype)
        tensors64 = [t.detach().double().requires_grad_(t.requires_grad) for t in tensors]
        got, exp = fn_fused(*tensors), fn_reference(*tensors64)
        wanted = [i for i, t in enumerate(tensors) if t.requires_grad]
        grads = torch.autograd.grad(got, [tensors[i] for i in wanted])
        grads64 = torch.autograd.grad(exp, [tensors64[i] for i in wanted])
        errors = {"value": _relative(got, exp)}
        errors.update({f"grad{i}": _relative(g, e) for i, g, e in zip(wanted, grads, grads64)})
        again = fn_fused(*tensors)
        grads_again = torch.autograd.grad(again, [tensors[i] for i in wanted])
        deterministic = torch.equal(got, again) and all(torch.equal(g, h) for g, h in zip(grads, grads_again))
        target = TARGETS[str(dtype).removeprefix("torch.")]
        results.append({"check": name, "dtype": str(dtype).removeprefix("torch."), "errors": errors,
                        "max_error": max(errors.values()), "target": target, "deterministic": deterministic,
                        "passed": max(errors.values()) <= target and deterministic})

    def randn(*shape, dtype, scale=1.0):
        return (scale * torch.randn(*shape, generator=generator, device=device)).to(dtype).requires_grad_()

    # (rows of each view, D), (SupCon rows, D, labels), (MoCo queries, queue, D), (CLIP B, D), (pairs, D)
    nt, sup, moco, clip, pair = (((1023, 100), (1999, 64, 300), (256, 8192, 128), (3000, 512), (100003, 256))
                                 if not small else ((20, 9), (37, 5, 6), (8, 40, 16), (19, 24), (33, 16)))
    backends = [b for b in FUSED if BACKENDS[b].unavailable_reason(device, torch.float32) is None]
    for backend in backends:
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            check(f"{backend} nt_xent R=K={2 * nt[0]} D={nt[1]} t=0.1", dtype,
                  lambda a, b: L.nt_xent(a, b, temperature=0.1, backend=backend),
                  lambda a, b: ref.nt_xent(a, b, temperature=0.1),
                  lambda d: (randn(*nt, dtype=d), randn(*nt, dtype=d)))
        check(f"{backend} nt_xent R=K={2 * nt[0]} D={nt[1]} t=0.01", torch.bfloat16,
              lambda a, b: L.nt_xent(a, b, temperature=0.01, backend=backend),
              lambda a, b: ref.nt_xent(a, b, temperature=0.01), lambda d: (randn(*nt, dtype=d), randn(*nt, dtype=d)))
        labels = torch.randint(0, sup[2], (sup[0],), generator=generator, device=device)
        for dtype in (torch.float32, torch.bfloat16):
            check(f"{backend} supcon R={sup[0]} D={sup[1]} labels 0..{sup[2]}", dtype,
                  lambda x: L.supcon(x, labels, temperature=0.1, backend=backend),
                  lambda x: ref.supcon(x, labels, temperature=0.1), lambda d: (randn(sup[0], sup[1], dtype=d),))
            check(f"{backend} info_nce R={moco[0]} queue={moco[1]} D={moco[2]}", dtype,
                  lambda q, k, n: L.info_nce(q, k, negatives=n, temperature=0.07, backend=backend),
                  lambda q, k, n: ref.info_nce(q, k, negatives=n, temperature=0.07),
                  lambda d: (randn(moco[0], moco[2], dtype=d), randn(moco[0], moco[2], dtype=d),
                             randn(moco[1], moco[2], dtype=d)))
            check(f"{backend} clip symmetric B={clip[0]} D={clip[1]} learnable scale", dtype,
                  lambda i, t, s: L.clip_loss(i, t, logit_scale=s, backend=backend),
                  lambda i, t, s: ref.clip_loss(i, t, logit_scale=s),
                  lambda d: (randn(*clip, dtype=d), randn(*clip, dtype=d),
                             torch.tensor(14.3, device=device, requires_grad=True)))
            check(f"{backend} positive_pair R={pair[0]} D={pair[1]}", dtype,
                  lambda a, b: L.positive_pair_loss(a, b, 0.3, backend=backend),
                  lambda a, b: ref.positive_pair_loss(a, b, 0.3), lambda d: (randn(*pair, dtype=d), randn(*pair, dtype=d)))
    return results


# ------------------------------------------------------------------------------------------------ main

def environment(device) -> dict:
    info = {"date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
            "cuda": torch.version.cuda, "python": sys.version.split()[0]}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                        text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    info["commit"] = info["commit"] or os.environ.get("SYNTHCL_FAST_COMMIT")  # a copy of the tree without .git
    if device is not None:
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                    memory_gib=round(props.total_memory / 2**30, 1))
    info["inf_cl"] = inf_cl_available() or "available"
    info["fp32_precision"] = os.environ.get("SYNTHCL_FAST_TRITON_FP32_PRECISION", "tf32")
    return info


def markdown(result: dict) -> str:
    env, ceilings = result["environment"], result.get("ceilings") or {}
    lines = [f"GPU sweep, {env.get('date_utc')}: {env.get('gpu', 'no GPU')}, torch {env['torch']}, triton "
             f"{env.get('triton')}, CUDA {env.get('cuda')}, commit {env.get('commit')}."]
    if ceilings:
        lines.append(f"Ceilings measured here: bf16 matrix product {ceilings['bf16_matmul_tflops']:.0f} TFLOP/s, "
                     f"device copy {ceilings['copy_gb_per_s']:.0f} GB/s.")
    if result.get("checks"):
        lines += ["", "| check | dtype | max rel. error | target | deterministic | passed |",
                  "|---|---|---|---|---|---|"]
        for c in result["checks"]:
            lines.append(f"| {c['check']} | {c['dtype']} | {c['max_error']:.2e} | {c['target']:.0e} | "
                         f"{c['deterministic']} | {c['passed']} |")
    lines += ["", "| case | variant | fwd ms | fwd+bwd ms | bwd ms | TFLOP/s (8RKD) | of bf16 mm | GB/s | of copy "
                  "| peak extra MiB | vs reference | vs compiled | vs Inf-CL | speed vs triton | memory vs ref. | status |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    for r in result["rows"]:
        lines.append(f"| {r['case']} | {r['variant']} | {fmt(r['forward_ms'], '.3f')} | {fmt(r['step_ms'], '.3f')} | "
                     f"{fmt(r['backward_ms'], '.3f')} | {fmt(r['step_tflops'], '.1f')} | "
                     f"{fmt(r['fraction_of_bf16_matmul'], '.0%')} | {fmt(r['step_gb_per_s'], '.0f')} | "
                     f"{fmt(r['fraction_of_copy'], '.0%')} | {fmt(r['peak_extra_mb'], '.1f')} | "
                     f"{fmt(r['speedup_vs_reference'], '.2f')} | {fmt(r['speedup_vs_compiled'], '.2f')} | "
                     f"{fmt(r['speedup_vs_inf_cl'], '.2f')} | {fmt(r['speed_vs_triton'], '.2f')} | "
                     f"{fmt(r['memory_vs_reference'], '.2%')} | "
                     f"{r['status']} |")
    return "\n".join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit (no GPU needed)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes on the CPU (needs TRITON_INTERPRET=1): checks the script, not the kernels")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output path without extension")
    parser.add_argument("--only", default="", help="comma-separated families: simclr,moco,clip,scale,positive_pair")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile(reference)")
    parser.add_argument("--no-checks", action="store_true", help="skip the correctness checks")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="start no new measurement after this many seconds (a device call has 600)")
    parser.add_argument("--target-s", type=float, default=0.25, help="time to spend on one timing (sets reps)")
    parser.add_argument("--min-reps", type=int, default=5)
    parser.add_argument("--max-reps", type=int, default=100)
    parser.add_argument("--memory-gib", type=float, default=None,
                        help="GPU memory assumed by --dry-run (default: the device's, or 80)")
    return parser.parse_args(argv)


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    only = {f.strip() for f in args.only.split(",") if f.strip()} or None
    if only and not only <= set(VARIANTS):
        raise SystemExit(f"--only takes families from {sorted(VARIANTS)}, got {sorted(only)}")
    have_gpu = torch.cuda.is_available() and not args.smoke
    memory = (args.memory_gib * 2**30 if args.memory_gib is not None
              else torch.cuda.get_device_properties(0).total_memory if have_gpu else 80 * 2**30)
    if args.smoke:
        args.no_compile, args.min_reps, args.max_reps = True, 2, 2
    plan = make_plan(SMOKE_CASES if args.smoke else CASES, memory, inf_cl_available(), not args.no_compile, only,
                     torch.device("cpu") if args.smoke else torch.device("cuda"))
    if args.dry_run:
        print(f"plan for {memory / 2**30:.0f} GiB of GPU memory ({len(plan)} measurements):")
        for p in plan:
            c = p.case
            work = (f"fwd+bwd moves {c.bytes_step / 1e9:6.2f} GB" if c.bytes_step else
                    f"fwd {c.flops_forward / 1e12:8.2f} TFLOP  fwd+bwd {c.flops_step / 1e12:8.2f} TFLOP  "
                    f"ref logits ~{c.reference_bytes() / 2**30:7.1f} GiB")
            print(f"  {c.name:<38} {p.variant:<22} {work}" + (f"  SKIP: {p.skip}" if p.skip else ""))
        return {"plan": [{"case": p.case.name, "variant": p.variant, "skip": p.skip} for p in plan]}
    if not have_gpu and not args.smoke:
        raise SystemExit("no CUDA device: run with --dry-run to see the plan, or on a GPU machine")

    started = time.perf_counter()
    device = torch.device("cuda", torch.cuda.current_device()) if have_gpu else torch.device("cpu")
    result = {"environment": environment(device if have_gpu else None),
              "settings": {k: str(v) for k, v in vars(args).items()}}
    print(json.dumps(result["environment"], indent=1), flush=True)
    result["ceilings"] = measure_ceilings(device) if have_gpu else {}
    print(f"ceilings: {result['ceilings']}", flush=True)
    if not args.no_checks:
        result["checks"] = run_checks(device, small=args.smoke)
        for c in result["checks"]:
            print(f"check {c['check']} {c['dtype']}: max error {c['max_error']:.2e} (target {c['target']:.0e}) "
                  f"deterministic {c['deterministic']} -> {'PASS' if c['passed'] else 'FAIL'}", flush=True)
    rows = []
    for planned in plan:
        if time.perf_counter() - started > args.budget_s and not planned.skip:
            planned.skip = f"time budget ({args.budget_s:.0f} s) spent"
        row = measure(planned, device, args)
        rows.append(row)
        print(f"{row.case:<34} {row.variant:<22} "
              + (f"fwd {row.forward_ms:9.3f} ms  fwd+bwd {row.step_ms:9.3f} ms  "
                 + (f"{row.step_gb_per_s:7.0f} GB/s  " if row.step_gb_per_s else f"{row.step_tflops:7.1f} TFLOP/s  ")
                 + f"peak {row.peak_extra_mb:9.1f} MiB" if row.status == "ok" else row.status), flush=True)
        # after every row: a run stopped from outside (benchmarks/gpu_check.sh's time limit) keeps what it measured
        write_results(result, rows, args.out, time.perf_counter() - started, complete=False)
    write_results(result, rows, args.out, time.perf_counter() - started, complete=True)
    print(markdown(result))
    print(f"wrote {args.out}.{{json,csv,md}} in {result['elapsed_s']:.0f} s")
    return result


def write_results(result: dict, rows: list[Row], out: Path, elapsed_s: float, complete: bool) -> None:
    """out.json (everything), out.csv (one row per case x variant), out.md (the table), with the ratios."""
    add_ratios(rows, result["ceilings"])
    result["rows"] = [asdict(r) for r in rows]
    result["elapsed_s"] = elapsed_s
    result["complete"] = complete
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        fields = [k for k in asdict(rows[0]) if k != "reps"] + ["gpu", "torch", "triton"] if rows else []
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for r in result["rows"]:
            writer.writerow({**r, "gpu": result["environment"].get("gpu"), "torch": result["environment"]["torch"],
                             "triton": result["environment"]["triton"]})
    out.with_suffix(".md").write_text(markdown(result) + "\n")


if __name__ == "__main__":
    main()
