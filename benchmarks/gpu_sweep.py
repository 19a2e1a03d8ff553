"""GPU sweep: the Triton and CUDA kernels against the materializing reference, torch.compile(reference), the
peer libraries and Inf-CL, with the card's own ceilings, in one run (one `device` call). Correctness is the
conformance suite's GPU lane (`python -m pytest -m gpu tests/test_conformance.py`: every backend against the
float64 reference at odd and GPU-scale shapes, each to the tolerances it declares), run before the sweep by
benchmarks/gpu_check.sh; the sweep only times.

    python benchmarks/gpu_sweep.py                 # ceilings + every case; writes benchmarks/results/
    python benchmarks/gpu_sweep.py --dry-run       # the plan (cases, variants, flops, skips); no GPU needed
    python benchmarks/plot.py --device cuda        # time and memory against batch size, from the long CSV

What it does, in order (later parts are skipped, and say so, once --budget-s is spent):
1. Environment (synthcl_fast.benchmarking.environment): GPU name, SMs, memory, torch, triton, CUDA, commit.
2. Ceilings measured on this card: bf16 matrix-product rate (torch.mm, 8192^3) and device copy bandwidth.
3. Timings, per case and variant: forward (no grad), forward + backward (one training step of the loss:
   forward with grad, then torch.autograd.grad) and backward = their difference. The cases, inputs and
   implementations are benchmarks/cases.py's (the pytest suites' too), and so is the timer: time.perf_counter
   around each call, the device synchronized at its end (pytest-benchmark's clock), median of many calls
   after warm-up, inputs rotated over 3 sets (no L2 reuse between calls); effective TFLOP/s on the ideal flop
   count (8RKD forward + backward, 2RKD forward; the symmetric CLIP loss also counts 8RKD: both directions
   from one set of products); peak extra memory (synthcl_fast.benchmarking.peak_memory_bytes).
   Variants: every implementation of cases.py for the case on a GPU (triton; cuda, whose speed_vs_triton is
   the "within 1.25x" ratio; reference; compiled; lightly, pytorch-metric-learning, solo-learn, open_clip
   where installed; inf_cl where `pip install inf-cl` was done), for CLIP one direction alone
   (triton_one_direction, inf_cl_one_direction), and triton_fp32_expsum: triton with the forward's sum of
   exponentials in float32 instead of float64 (SYNTHCL_FAST_TRITON_EXPSUM, a measurement knob), whose
   float64_expsum_cost is triton's forward time over its own, minus 1. Implementations whose R x K buffers
   would not fit in 70% of the card's memory (cases.memory_estimate_bytes) are skipped with that reason.

Cases (bf16 unless said), the sweep's own shapes first and what issue 22 asks of them first of all (a run
stopped by its time limit has measured those): NT-Xent R = K = 16384, D = 256 (TFLOP/s against the measured
bf16 matrix rate, reference, cuda vs triton, the float64 exp-sum's cost); InfoNCE R = 256 queries against 256
keys + a 65536-row queue and CLIP B = 16384, D = 512 (Inf-CL); NT-Xent R = K = 65536, D = 256 (memory) and
262144, D = 128 (fused backends only: the others' logits do not fit); positive_pair R = 2^20, D = 256, bf16 and
fp32 (GB/s on the bytes it must move and the fraction of the measured copy bandwidth); the variants at R = K =
16384, D = 256 (dcl, dclw: positive_weight, per_positive, hcl: beta / tau_plus); then NT-Xent R = K in {4096,
16384, 65536} at the other D, fp32 at 16384/128, CLIP B in {16384, 65536}, D in {512, 768}; then the suites' GPU
list (cases.cases("cuda")): every loss at three sizes.

Output: every timing appended to the long CSV after its row is measured (--csv; default
benchmarks/results/benchmarks.csv, suite "gpu_sweep", passes "fwd" and "fwd+bwd"), and --out's .json
(everything, ceilings included) and .md (the table), rewritten after every row. Exit status 1 where a
measurement raised (its row says what; the others are still measured and written). Nothing here has been run
on a GPU by its author: the numbers are still to be measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for path in (str(ROOT), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)

import cases as C  # noqa: E402
from cases import Case  # noqa: E402
from synthcl_fast.benchmarking import _version  # noqa: E402
from synthcl_fast.benchmarking import environment as base_environment  # noqa: E402
from synthcl_fast.benchmarking import peak_memory_bytes, total_memory_bytes  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "gpu_sweep"
N_ROTATE = 3
QUEUE = C.INFO_NCE_QUEUE

SWEEP_CASES = [
    # What issue 22 asks of the one GPU run first, so that a run stopped by its time limit has measured it:
    # TFLOP/s against the bf16 matrix rate, reference, cuda vs triton, the float64 exp-sum's cost (16384, 256);
    # Inf-CL (InfoNCE with a 65536-row queue, CLIP); memory at R = K = 65536; R = K = 262144 running; the
    # positive-pair kernel against the copy bandwidth.
    Case("nt_xent", 16384, 256, "bfloat16"),
    Case("info_nce", 256, 128, "bfloat16", QUEUE),
    Case("clip", 16384, 512, "bfloat16"),
    Case("nt_xent", 65536, 256, "bfloat16"),
    Case("nt_xent", 262144, 128, "bfloat16"),
    Case("positive_pair", 1 << 20, 256, "bfloat16"),
    Case("positive_pair", 1 << 20, 256, "float32"),
    # the variants at the headline shape (their cost against the plain op's): DCL, DCLW's positive_weight,
    # denominator="per_positive", HCL's beta / tau_plus
    Case("dcl", 16384, 256, "bfloat16"),
    Case("dclw", 16384, 256, "bfloat16"),
    Case("per_positive", 16384, 256, "bfloat16"),
    Case("hcl", 16384, 256, "bfloat16"),
    # the rest of the sweep's shapes
    Case("nt_xent", 4096, 128, "bfloat16"),
    Case("nt_xent", 4096, 256, "bfloat16"),
    Case("nt_xent", 16384, 128, "bfloat16"),
    Case("nt_xent", 16384, 128, "float32"),
    Case("nt_xent", 65536, 128, "bfloat16"),
    Case("clip", 16384, 768, "bfloat16"),
    Case("clip", 65536, 512, "bfloat16"),
    Case("clip", 65536, 768, "bfloat16"),
]
CASES = SWEEP_CASES + [case for case in C.cases("cuda") if case not in SWEEP_CASES]

# --smoke: the same code paths on the CPU (Triton's interpreter, tiny shapes), so that the script can be checked
# on a machine without a GPU. Its numbers mean nothing.
SMOKE_CASES = [Case("nt_xent", 64, 32), Case("info_nce", 16, 32, queue=144), Case("clip", 48, 32, "bfloat16"),
               Case("positive_pair", 64, 32), Case("ppcl", 48, 32), Case("dclw", 32, 32), Case("per_positive", 32, 32),
               Case("hcl", 32, 32)]
ONE_DIRECTION = {"triton_one_direction": "triton", "inf_cl_one_direction": "inf_cl"}  # CLIP, sweep only
# What the Triton forward's float64 sum of exponentials costs: the same triton call with the sum in float32
# (SYNTHCL_FAST_TRITON_EXPSUM=float32, a measurement knob), on the headline shape and on InfoNCE's few rows
# against many columns (the column splits' merge); row.float64_expsum_cost = its forward time against triton's.
FP32_EXPSUM = "triton_fp32_expsum"
FP32_EXPSUM_CASES = (Case("nt_xent", 16384, 256, "bfloat16"), Case("info_nce", 256, 128, "bfloat16", QUEUE),
                     Case("nt_xent", 64, 32), Case("info_nce", 16, 32, queue=144))  # the last two: --smoke's
SWEEP_ONLY = {**ONE_DIRECTION, FP32_EXPSUM: "triton"}  # sweep-only variant -> the implementation it runs


def variants(case: Case) -> list[str]:
    """cases.py's GPU implementations of the case, for CLIP one direction alone (against Inf-CL's), and for
    FP32_EXPSUM_CASES triton with a float32 sum of exponentials."""
    names = C.implementations(case, "cuda")
    if case.family == "clip":
        names += list(ONE_DIRECTION)
    if case in FP32_EXPSUM_CASES:
        names.append(FP32_EXPSUM)
    return names


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
    timing: dict = field(default_factory=dict)  # median/p20/p80 ms of each pass, for the long CSV
    speedup_vs_reference: float | None = None
    speedup_vs_compiled: float | None = None
    speedup_vs_inf_cl: float | None = None
    speed_vs_triton: float | None = None      # cuda rows: triton's step time / cuda's (>= 0.8: within 1.25x)
    step_gb_per_s: float | None = None        # positive_pair: bytes_step over the step time
    fraction_of_copy: float | None = None     # positive_pair: of the measured device copy bandwidth
    memory_vs_reference: float | None = None
    fraction_of_bf16_matmul: float | None = None
    float64_expsum_cost: float | None = None  # triton_fp32_expsum rows: triton's forward time / this one's - 1


def make_plan(case_list, budget_bytes: int, compile_reference: bool, only: set[str] | None,
              device: torch.device = torch.device("cuda")) -> list[Planned]:
    """Every (case, variant) with the reason it will not run, if any. The triton variants are always planned:
    they report their own errors (under --smoke they run in Triton's interpreter)."""
    plan = []
    for case in case_list:
        if only and case.family not in only:
            continue
        for variant in variants(case):
            implementation = SWEEP_ONLY.get(variant, variant)
            skip = None
            if variant == "compiled" and not compile_reference:
                skip = "--no-compile"
            elif implementation != "triton":
                skip = C.unavailable_reason(case, implementation, device, budget_bytes)
            plan.append(Planned(case, variant, skip))
    return plan


def make_loss(case: Case, variant: str, device):
    """fn(inputs) -> scalar loss: cases.make_loss, or CLIP in one direction (image -> text) alone."""
    if variant == "triton_one_direction":
        import synthcl_fast.losses as L

        return lambda x: L.clip_loss(x["image"], x["text"], logit_scale=x["logit_scale"], symmetric=False,
                                     backend="triton")
    if variant == "inf_cl_one_direction":
        one_direction = C.inf_cl_one_direction(case)
        return lambda x: one_direction(x["image"], x["text"], x["logit_scale"])
    if variant == FP32_EXPSUM:
        return _with_environment(C.make_loss(case, "triton", device), "SYNTHCL_FAST_TRITON_EXPSUM", "float32")
    return C.make_loss(case, variant, device)


def _with_environment(fn, name: str, value: str):
    """fn with the environment variable `name` set to `value` while it runs (the forward: the backward reads
    no such setting), restored after."""
    def call(x):
        old = os.environ.get(name)
        os.environ[name] = value
        try:
            return fn(x)
        finally:
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old

    return call


# --------------------------------------------------------------------------------------------- timing

def timed_ms(fn, device, min_reps: int, target_s: float, max_reps: int) -> tuple[dict, int]:
    """median/p20/p80 ms of fn() (synchronized) after 3 warm-up calls; reps fitted to target_s."""
    fn = C.synchronized(fn, device)
    for _ in range(3):
        fn()
    single = C.time_calls(fn, 1)[0]
    reps = C.rounds_for(single, target_s, min_reps, max_reps)
    return C.percentiles_ms(C.time_calls(fn, reps)), reps


def measure(planned: Planned, device, args) -> Row:
    case, variant = planned.case, planned.variant
    row = Row(case.name, case.family, variant, case.rows, case.cols, case.dim, case.dtype)
    if planned.skip:
        row.status = f"skipped: {planned.skip}"
        return row
    inputs = loss_fn = None
    try:
        inputs = [C.make_inputs(case, device, seed) for seed in range(N_ROTATE)]
        loss_fn = make_loss(case, variant, device)
        position = [0]

        def next_inputs():
            position[0] += 1
            return inputs[position[0] % N_ROTATE]

        def forward():
            with torch.no_grad():
                return loss_fn(next_inputs())

        def step():
            x = next_inputs()
            torch.autograd.grad(loss_fn(x), C.leaves(x))

        forward_timing, reps_f = timed_ms(forward, device, args.min_reps, args.target_s, args.max_reps)
        step_timing, reps_s = timed_ms(step, device, args.min_reps, args.target_s, args.max_reps)
        row.timing = {"fwd": forward_timing, "fwd+bwd": step_timing}
        row.forward_ms, row.step_ms = forward_timing["median_ms"], step_timing["median_ms"]
        row.backward_ms = row.step_ms - row.forward_ms
        row.reps = {"forward": reps_f, "step": reps_s}
        row.forward_tflops = case.flops_step / 4 / (row.forward_ms * 1e-3) / 1e12
        row.step_tflops = case.flops_step / (row.step_ms * 1e-3) / 1e12
        if case.bytes_step:
            row.step_gb_per_s = case.bytes_step / (row.step_ms * 1e-3) / 1e9
        row.peak_extra_mb = peak_memory_bytes(step, device) / 2**20
        with torch.no_grad():
            row.loss = float(loss_fn(inputs[0]))
    except Exception as error:  # record and go on: one broken variant must not lose the rest of the sweep
        first_line = str(error).splitlines()[0][:300] if str(error) else ""
        row.status = (f"out of memory: {first_line[:160]}" if C.is_out_of_memory(error)
                      else f"error: {type(error).__name__}: {first_line}")
    finally:
        inputs = loss_fn = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return row


def add_ratios(rows: list[Row], ceilings: dict) -> None:
    by_case = {}
    for row in rows:
        by_case.setdefault(row.case, {})[row.variant] = row
    for variants_of_case in by_case.values():
        for row in variants_of_case.values():
            if row.status != "ok":
                continue
            for other, attribute in (("reference", "speedup_vs_reference"), ("compiled", "speedup_vs_compiled")):
                base = variants_of_case.get(other)
                if base is not None and base.status == "ok":
                    setattr(row, attribute, base.step_ms / row.step_ms)
            inf = variants_of_case.get("inf_cl_one_direction" if row.variant == "triton_one_direction" else "inf_cl")
            if inf is not None and inf.status == "ok":
                row.speedup_vs_inf_cl = inf.step_ms / row.step_ms
            triton = variants_of_case.get("triton")
            if row.variant == "cuda" and triton is not None and triton.status == "ok":
                row.speed_vs_triton = triton.step_ms / row.step_ms
            if row.variant == FP32_EXPSUM and triton is not None and triton.status == "ok":
                row.float64_expsum_cost = triton.forward_ms / row.forward_ms - 1
            if row.step_gb_per_s and ceilings.get("copy_gb_per_s"):
                row.fraction_of_copy = row.step_gb_per_s / ceilings["copy_gb_per_s"]
            base = variants_of_case.get("reference")
            if base is not None and base.status == "ok" and base.peak_extra_mb:
                row.memory_vs_reference = row.peak_extra_mb / base.peak_extra_mb
            if ceilings.get("bf16_matmul_tflops") and row.step_tflops:
                row.fraction_of_bf16_matmul = row.step_tflops / ceilings["bf16_matmul_tflops"]


def csv_rows(rows: list[Row], env: dict, run_id: str, device) -> list[dict]:
    """The sweep's timings as rows of the long CSV: one per case, variant and pass (fwd, fwd+bwd)."""
    by_name = {case.name: case for case in CASES + SMOKE_CASES}
    out = []
    for row in rows:
        case = by_name[row.case]
        if row.status != "ok":
            out.append(C.result_row(env, run_id, "gpu_sweep", device, case, row.variant, row.status))
            continue
        for step_pass, timing in row.timing.items():
            out.append(C.result_row(env, run_id, "gpu_sweep", device, case, row.variant, timing=timing,
                                    peak_bytes=row.peak_extra_mb * 2**20 if step_pass == "fwd+bwd" else None,
                                    rounds=row.reps["forward" if step_pass == "fwd" else "step"], loss=row.loss,
                                    step_pass=step_pass))
    return out


# ------------------------------------------------------------------------------------------- ceilings

def measure_ceilings(device) -> dict:
    """The card's bf16 matrix-product rate and copy bandwidth, on the suites' timer (10 operations per timed
    call, so that the synchronization at its end costs under 1%)."""
    n, n_bytes = 8192, 1 << 30
    mm_ms = _ms_per_operation(lambda a, b: torch.mm(a, b), [torch.randn(n, n, device=device, dtype=torch.bfloat16)
                                                            for _ in range(2)], device)
    copy_ms = _ms_per_operation(lambda dst, src: dst.copy_(src),
                                [torch.empty(n_bytes, dtype=torch.uint8, device=device) for _ in range(2)], device)
    torch.cuda.empty_cache()
    return {"bf16_matmul_tflops": 2 * n**3 / (mm_ms * 1e-3) / 1e12, "bf16_matmul_shape": [n, n, n],
            "copy_gb_per_s": 2 * n_bytes / (copy_ms * 1e-3) / 1e9, "copy_bytes": n_bytes}


def _ms_per_operation(operation, tensors, device, per_call: int = 10) -> float:
    def calls():
        for _ in range(per_call):
            operation(*tensors)

    return timed_ms(calls, device, 5, 0.5, 100)[0]["median_ms"] / per_call


# ------------------------------------------------------------------------------------------------ main

def environment() -> dict:
    """synthcl_fast.benchmarking.environment() and what only the sweep needs to say."""
    info = base_environment()
    info["inf_cl"] = C.unavailable_reason(Case("clip", 16, 128), "inf_cl", torch.device("cuda"), 1 << 62) \
        or f"available, version {_version('inf-cl')}"
    info["fp32_precision"] = os.environ.get("SYNTHCL_FAST_TRITON_FP32_PRECISION", "tf32")
    return info


def markdown(result: dict) -> str:
    env, ceilings = result["environment"], result.get("ceilings") or {}
    lines = [f"GPU sweep, {env.get('date_utc')}: {env.get('gpu', 'no GPU')}, torch {env['torch']}, triton "
             f"{env.get('triton')}, CUDA {env.get('cuda')}, commit {env.get('commit')}."]
    if ceilings:
        lines.append(f"Ceilings measured here: bf16 matrix product {ceilings['bf16_matmul_tflops']:.0f} TFLOP/s, "
                     f"device copy {ceilings['copy_gb_per_s']:.0f} GB/s.")
    lines += ["", "| case | variant | fwd ms | fwd+bwd ms | bwd ms | TFLOP/s (8RKD) | of bf16 mm | GB/s | of copy "
                  "| peak extra MiB | vs reference | vs compiled | vs Inf-CL | speed vs triton | memory vs ref. "
                  "| fp64 sum cost | status |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    for r in result["rows"]:
        lines.append(f"| {r['case']} | {r['variant']} | {fmt(r['forward_ms'], '.3f')} | {fmt(r['step_ms'], '.3f')} | "
                     f"{fmt(r['backward_ms'], '.3f')} | {fmt(r['step_tflops'], '.1f')} | "
                     f"{fmt(r['fraction_of_bf16_matmul'], '.0%')} | {fmt(r['step_gb_per_s'], '.0f')} | "
                     f"{fmt(r['fraction_of_copy'], '.0%')} | {fmt(r['peak_extra_mb'], '.1f')} | "
                     f"{fmt(r['speedup_vs_reference'], '.2f')} | {fmt(r['speedup_vs_compiled'], '.2f')} | "
                     f"{fmt(r['speedup_vs_inf_cl'], '.2f')} | {fmt(r['speed_vs_triton'], '.2f')} | "
                     f"{fmt(r['memory_vs_reference'], '.2%')} | {fmt(r.get('float64_expsum_cost'), '+.1%')} | "
                     f"{r['status']} |")
    return "\n".join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit (no GPU needed)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes on the CPU (needs TRITON_INTERPRET=1): checks the script, not the kernels")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON and markdown path, without extension")
    parser.add_argument("--csv", default=str(C.RESULTS_CSV), help="long CSV the timings are appended to ('': none)")
    parser.add_argument("--only", default="", help=f"comma-separated families: {','.join(C.FAMILY_IMPLEMENTATIONS)}")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile(reference)")
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
    if only and not only <= set(C.FAMILY_IMPLEMENTATIONS):
        raise SystemExit(f"--only takes families from {sorted(C.FAMILY_IMPLEMENTATIONS)}, got {sorted(only)}")
    have_gpu = torch.cuda.is_available() and not args.smoke
    device = torch.device("cuda", torch.cuda.current_device()) if have_gpu else torch.device("cpu")
    memory = (args.memory_gib * 2**30 if args.memory_gib is not None
              else total_memory_bytes(device) if have_gpu else 80 * 2**30)
    budget = int(C.MEMORY_FRACTION * memory)
    if args.smoke:
        args.no_compile, args.min_reps, args.max_reps = True, 2, 2
    plan = make_plan(SMOKE_CASES if args.smoke else CASES, budget, not args.no_compile, only,
                     device if args.smoke or have_gpu else torch.device("cuda"))
    if args.dry_run:
        print(f"plan for {memory / 2**30:.0f} GiB of GPU memory ({len(plan)} measurements):")
        for p in plan:
            c = p.case
            work = (f"fwd+bwd moves {c.bytes_step / 1e9:6.2f} GB" if c.bytes_step else
                    f"fwd {c.flops_step / 4e12:8.2f} TFLOP  fwd+bwd {c.flops_step / 1e12:8.2f} TFLOP  "
                    f"buffers ~{C.memory_estimate_bytes(c, SWEEP_ONLY.get(p.variant, p.variant)) / 2**30:7.1f} GiB")
            print(f"  {c.name:<42} {p.variant:<22} {work}" + (f"  SKIP: {p.skip}" if p.skip else ""))
        return {"plan": [{"case": p.case.name, "variant": p.variant, "skip": p.skip} for p in plan]}
    if not have_gpu and not args.smoke:
        raise SystemExit("no CUDA device: run with --dry-run to see the plan, or on a GPU machine")

    started = time.perf_counter()
    env = environment()
    run_id = C.new_run_id(env)
    result = {"environment": env, "run_id": run_id, "settings": {k: str(v) for k, v in vars(args).items()}}
    print(json.dumps(env, indent=1), flush=True)
    result["ceilings"] = measure_ceilings(device) if have_gpu else {}
    print(f"ceilings: {result['ceilings']}", flush=True)
    rows = []
    for planned in plan:
        if time.perf_counter() - started > args.budget_s and not planned.skip:
            planned.skip = f"time budget ({args.budget_s:.0f} s) spent"
        row = measure(planned, device, args)
        rows.append(row)
        print(f"{row.case:<42} {row.variant:<22} "
              + (f"fwd {row.forward_ms:9.3f} ms  fwd+bwd {row.step_ms:9.3f} ms  "
                 + (f"{row.step_gb_per_s:7.0f} GB/s  " if row.step_gb_per_s else f"{row.step_tflops:7.1f} TFLOP/s  ")
                 + f"peak {row.peak_extra_mb:9.1f} MiB" if row.status == "ok" else row.status), flush=True)
        # after every row: a run stopped from outside (benchmarks/gpu_check.sh's time limit) keeps what it measured
        write_results(result, rows, args.out, time.perf_counter() - started, complete=False)
        if args.csv:
            C.append_rows(csv_rows([row], env, run_id, device), args.csv)
    write_results(result, rows, args.out, time.perf_counter() - started, complete=True)
    print(markdown(result))
    print(f"wrote {args.out}.{{json,md}}" + (f" and appended run {run_id} to {args.csv}" if args.csv else "")
          + f" in {result['elapsed_s']:.0f} s")
    # a variant that raised (not one skipped, out of memory or out of time) is a broken code path: the run says
    # so in its exit status, after every row was measured and written (under --smoke, where nothing is timed
    # for real, such rows would otherwise pass for a checked script)
    errors = [row for row in rows if row.status.startswith("error")]
    if errors:
        print(f"{len(errors)} of {len(rows)} measurements raised:", file=sys.stderr)
        for row in errors:
            print(f"  {row.case} {row.variant}: {row.status}", file=sys.stderr)
        raise SystemExit(1)
    return result



def write_results(result: dict, rows: list, out: Path, elapsed_s: float, complete: bool) -> None:
    """out.json (everything, ratios included) and out.md (the table), rewritten as the rows come in."""
    add_ratios(rows, result["ceilings"])
    result["rows"] = [asdict(r) for r in rows]
    result["elapsed_s"], result["complete"] = elapsed_s, complete
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(markdown(result) + "\n")


if __name__ == "__main__":
    main()
