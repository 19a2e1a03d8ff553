"""GPU sweep of the fused backends on the issue's benchmark shapes: forward + backward time (CUDA events),
TFLOP/s from the fused op's flop count (8 R K D per direction, DESIGN.md), and for the positive-pair loss
the achieved bandwidth on the bytes it must move, against a device-to-device copy measured in the same run.

    python benchmarks/cuda_sweep.py [--backends cuda,triton] [--dtypes bfloat16,float32] [--out FILE.csv]

Writes one CSV row per (case, backend, dtype) with the GPU's name and the torch / CUDA / triton versions
(default: benchmarks/results/cuda_sweep.csv). A backend that cannot run a case is recorded with its reason.
Importable without a GPU: cases(), flops(), bytes_moved(), write_csv() are plain Python, so another sweep
script (the Triton backend's gpu_sweep.py) can call run_case() for its own backends on the same shapes.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

import synthcl_fast.losses as L
from synthcl_fast.backends import BACKENDS
from synthcl_fast.benchmarking import environment

RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = ["case", "backend", "dtype", "rows", "cols", "dim", "median_ms", "p20_ms", "p80_ms", "tflops",
           "gbytes_per_s", "copy_gbytes_per_s", "fraction_of_copy", "status", "gpu", "torch", "cuda", "triton",
           "measured_at"]


@dataclass(frozen=True)
class Case:
    """One benchmark shape. kind: simclr (nt_xent over R = K rows), moco (info_nce, R queries, K = R keys + queue),
    clip (symmetric clip_loss, B image-text pairs), positive_pair (R rows)."""
    kind: str
    rows: int
    cols: int
    dim: int

    @property
    def name(self) -> str:
        return f"{self.kind} R={self.rows} K={self.cols} D={self.dim}"


def cases() -> list[Case]:
    """The shapes of issue 4's targets (the Triton backend's sweep uses the same)."""
    out = [Case("simclr", n, n, d) for n in (4096, 16384, 65536) for d in (128, 256)]
    out.append(Case("moco", 256, 65536, 128))
    out += [Case("clip", b, b, d) for b in (16384, 65536) for d in (512, 768)]
    out.append(Case("positive_pair", 1 << 20, 1, 256))
    return out


def flops(case: Case) -> float:
    """Floating-point operations of a fused forward + backward with recomputation (DESIGN.md: 8 R K D per
    contrastive op; CLIP's symmetric loss is two of them)."""
    if case.kind == "positive_pair":
        return 0.0
    per_op = 8.0 * case.rows * case.cols * case.dim
    return 2 * per_op if case.kind == "clip" else per_op


def bytes_moved(case: Case, dtype: torch.dtype) -> int:
    """Bytes the positive-pair loss must move: read a and b, write the gradient of a (b is detached)."""
    if case.kind != "positive_pair":
        return 0
    return 3 * case.rows * case.dim * torch.empty((), dtype=dtype).element_size()


def make_step(case: Case, backend: str, dtype: torch.dtype, device="cuda"):
    """A closure running one forward + backward of the case on fresh random inputs."""
    gen = torch.Generator(device=device).manual_seed(0)

    def randn(*shape, grad=True):
        return torch.randn(*shape, device=device, generator=gen).to(dtype).requires_grad_(grad)

    if case.kind == "simclr":
        z1, z2 = randn(case.rows // 2, case.dim), randn(case.rows // 2, case.dim)
        inputs, fn = (z1, z2), lambda: L.nt_xent(z1, z2, temperature=0.1, backend=backend)
    elif case.kind == "moco":
        q, k = randn(case.rows, case.dim), randn(case.rows, case.dim)
        queue = randn(case.cols - case.rows, case.dim, grad=False)
        inputs, fn = (q, k), lambda: L.info_nce(q, k, negatives=queue, temperature=0.07, backend=backend)
    elif case.kind == "clip":
        image, text = randn(case.rows, case.dim), randn(case.rows, case.dim)
        scale = torch.tensor(14.3, device=device, requires_grad=True)
        inputs, fn = (image, text, scale), lambda: L.clip_loss(image, text, logit_scale=scale, backend=backend)
    elif case.kind == "positive_pair":
        a, b = randn(case.rows, case.dim), randn(case.rows, case.dim, grad=False)
        inputs, fn = (a,), lambda: L.positive_pair_loss(a, b, 0.5, backend=backend)
    else:
        raise ValueError(f"unknown case kind {case.kind!r}")

    def step():
        torch.autograd.grad(fn(), inputs)

    return step


def time_cuda(fn, warmup: int = 3, repeats: int = 20) -> list[float]:
    """Milliseconds of each of `repeats` calls, measured with CUDA events on the current stream."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def copy_bandwidth(n_bytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in GB/s (read + write counted) on this GPU."""
    x = torch.empty(n_bytes, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = statistics.median(time_cuda(lambda: y.copy_(x)))
    return 2 * n_bytes / ms / 1e6


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def summarize(case: Case, backend: str, dtype: torch.dtype, times_ms: list[float] | None, copy_gbps: float,
              env: dict, status: str = "ok") -> dict:
    """One CSV row from the measured times (None: not run, `status` says why)."""
    row = {"case": case.name, "backend": backend, "dtype": str(dtype).removeprefix("torch."), "rows": case.rows,
           "cols": case.cols, "dim": case.dim, "status": status, "gpu": env.get("gpu"), "torch": env.get("torch"),
           "cuda": env.get("cuda"), "triton": env.get("triton"),
           "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if times_ms:
        median = statistics.median(times_ms)
        row.update(median_ms=round(median, 4), p20_ms=round(percentile(times_ms, 0.2), 4),
                   p80_ms=round(percentile(times_ms, 0.8), 4))
        if flops(case):
            row["tflops"] = round(flops(case) / median / 1e9, 2)
        moved = bytes_moved(case, dtype)
        if moved:
            row["gbytes_per_s"] = round(moved / median / 1e6, 1)
            row["copy_gbytes_per_s"] = round(copy_gbps, 1)
            row["fraction_of_copy"] = round(moved / median / 1e6 / copy_gbps, 3)
    return row


def run_case(case: Case, backend: str, dtype: torch.dtype, copy_gbps: float, env: dict, repeats: int = 20) -> dict:
    """Measures one case on one backend; unavailable backends and out-of-memory become a status."""
    reason = BACKENDS[backend].unavailable_reason(torch.device("cuda"), dtype) if backend in BACKENDS else \
        f"no backend named {backend!r} in this build"
    if reason is not None:
        return summarize(case, backend, dtype, None, copy_gbps, env, status=f"unavailable: {reason}")
    try:
        times = time_cuda(make_step(case, backend, dtype), repeats=repeats)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return summarize(case, backend, dtype, None, copy_gbps, env, status="out of memory")
    return summarize(case, backend, dtype, times, copy_gbps, env)


def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: row.get(key, "") for key in COLUMNS})


def sweep(backends=("cuda",), dtypes=(torch.bfloat16, torch.float32), repeats: int = 20, only=None) -> list[dict]:
    if not torch.cuda.is_available():
        raise RuntimeError("the CUDA sweep needs a CUDA device")
    env = environment()
    copy_gbps = copy_bandwidth()
    rows = []
    for case in cases():
        if only and only not in case.name:
            continue
        for dtype in dtypes:
            for backend in backends:
                row = run_case(case, backend, dtype, copy_gbps, env, repeats)
                print(", ".join(f"{k}={row[k]}" for k in ("case", "backend", "dtype", "median_ms", "tflops",
                                                             "fraction_of_copy", "status") if k in row), flush=True)
                rows.append(row)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="cuda", help="comma-separated backend names (default: cuda)")
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--only", default=None, help="run only cases whose name contains this text")
    parser.add_argument("--out", type=Path, default=RESULTS / "cuda_sweep.csv")
    args = parser.parse_args(argv)
    dtypes = [getattr(torch, name) for name in args.dtypes.split(",")]
    rows = sweep(args.backends.split(","), dtypes, args.repeats, args.only)
    write_csv(rows, args.out)
    print(f"wrote {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
