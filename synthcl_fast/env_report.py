"""python -m synthcl_fast.env_report [--benchmark]: versions (and whether each is in the supported range), what
was built, which backends can run here and why not; with --benchmark, fused vs reference timing and peak memory
side by side."""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from . import __version__
from .backends import available_backends
from .backends.native import CSRC, build_info, build_mismatch
from .benchmarking import environment, peak_memory_bytes
from .environment import VARIABLES, current_values
from .versions import check_versions


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def benchmark(n_rows: int, dim: int, repeats: int) -> None:
    """NT-Xent forward + backward over R = K = n_rows rows on the CPU: each available backend."""
    import synthcl_fast.losses as L

    generator = torch.Generator().manual_seed(0)
    z1 = torch.randn(n_rows // 2, dim, generator=generator).requires_grad_()
    z2 = torch.randn(n_rows // 2, dim, generator=generator).requires_grad_()
    print(f"\nnt_xent forward+backward, R=K={n_rows}, D={dim}, fp32, CPU ({torch.get_num_threads()} threads)")
    print(f"{'backend':<10} {'loss':>10} {'median ms':>10} {'peak MB':>9} {'speed-up':>9} {'memory':>7}")
    rows = {}
    for name, reason in available_backends("cpu").items():
        if reason is not None:
            continue

        def step(name=name):
            loss = L.nt_xent(z1, z2, temperature=0.1, backend=name)
            torch.autograd.grad(loss, (z1, z2))
            return loss

        rows[name] = (step().item(), _time(step, repeats), peak_memory_bytes(step))
    base_time, base_memory = rows["reference"][1], rows["reference"][2]
    for name, (loss, seconds, memory) in rows.items():
        print(f"{name:<10} {loss:>10.6f} {seconds * 1e3:>10.1f} {memory / 1e6:>9.2f} "
              f"{base_time / seconds:>8.2f}x {memory / base_memory:>7.1%}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--benchmark", action="store_true", help="time fused vs reference on the CPU")
    parser.add_argument("--rows", type=int, default=4096, help="R = K for --benchmark (default 4096)")
    parser.add_argument("--dim", type=int, default=128, help="feature dimension for --benchmark")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"synthcl_fast {__version__}")
    for key, value in environment().items():
        print(f"  {key}: {value}")
    info = build_info()
    print(f"  build: {info or 'no ahead-of-time build (kernels compiled on first use)'}")
    mismatch = build_mismatch(info)
    if mismatch:
        print(f"  build NOT loaded: {mismatch} (kernels compiled on first use instead)")
    print(f"  kernel sources: {CSRC if CSRC.is_dir() else 'none (' + str(CSRC) + ' missing)'}")
    print("environment variables (docs/environment.md):")
    values = current_values()
    for variable in VARIABLES:
        value = values[variable.name]
        print(f"  {variable.name:<36} {'unset (default ' + variable.default + ')' if value is None else repr(value)}")
    print("versions:")
    for check in check_versions():
        print(f"  {check.describe()}")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        print(f"backends on {device}:")
        for name, reason in available_backends(device).items():
            print(f"  {name:<10} {'available' if reason is None else 'unavailable: ' + reason}")
    if args.benchmark:
        benchmark(args.rows, args.dim, args.repeats)


if __name__ == "__main__":
    main()
