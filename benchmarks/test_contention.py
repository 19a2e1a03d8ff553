"""Speed under contention: NT-Xent forward + backward on the CPU while another process keeps one core busy (the
normal case in training: a data-loader worker, the generator's step, another job), side by side with the same
calls on a quiet machine, in one run. The benchmark starts and stops the busy process itself.

    pytest benchmarks/test_contention.py --benchmark-only

Entries: the fused cpu backend on 1 thread and on the default thread count, and the reference on the default
thread count, each quiet and under load (rows of the long CSV with suite "contention" and implementation
"cpu/1 thread", "cpu/2 threads", ..., the load in the case name). The goals (issue 13): under load the fused
kernel at the default thread count no slower than 1.2x its one-thread time, and >= 2.5x the reference.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

import cases as C

DEVICE = torch.device("cpu")
CASE = C.Case("nt_xent", 4096, 128, "float32")
DEFAULT_THREADS = torch.get_num_threads()
BUSY_LOOP = "while True: pass"


@pytest.fixture(scope="module", params=["quiet", "one busy process"])
def load(request):
    """None, or a process spinning on one core for the module's duration under this parameter."""
    if request.param == "quiet":
        yield request.param
        return
    busy = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
    time.sleep(0.5)
    yield request.param
    busy.kill()
    busy.wait()


# (on a one-core machine the fused entries are one)
ENTRIES = sorted({("cpu", 1), ("cpu", DEFAULT_THREADS), ("reference", DEFAULT_THREADS)})


@pytest.mark.parametrize("implementation,threads", ENTRIES, ids=lambda v: str(v))
def test_under_contention(benchmark, bench_run, load, implementation, threads, request):
    case = C.Case("nt_xent", 256) if request.config.getoption("--smoke-sweep") else CASE
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        step = C.make_step(case, implementation, DEVICE)
        step()  # warm-up
        first = C.time_calls(step, 1)[0]
        rounds = max(C.rounds_for(first, bench_run.target_s), 9)  # a median robust to the scheduler's noise
        benchmark.group = f"contention: {case.name}"
        benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=0)
    finally:
        torch.set_num_threads(previous)
    if benchmark.stats is None:
        return
    row = C.result_row(bench_run.env, bench_run.run_id, "contention", DEVICE, case,
                       f"{implementation}/{threads} thread{'s' if threads > 1 else ''}/{load}",
                       timing=C.percentiles_ms(benchmark.stats.stats.data), rounds=rounds)
    bench_run.rows.append(row)
    benchmark.extra_info.update({"load": load, "threads": threads})
