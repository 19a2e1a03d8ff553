"""pytest-benchmark plumbing shared by the CPU and GPU suites: the (case, implementation) grid, one measurement
protocol, and the long results CSV.

    pytest benchmarks/ --benchmark-only                  # default sweep (CPU: < 15 minutes on 2 cores)
    pytest benchmarks/ --benchmark-only --full-sweep     # every size (CPU: NT-Xent up to R = 65536)
    pytest benchmarks/ --benchmark-only --smoke-sweep    # tiny shapes: the machinery, not the speed

Options: --results-csv PATH (where the rows are appended; "" for nowhere; default
benchmarks/results/benchmarks.csv), --run-id ID (names this run's rows; default: UTC time and commit),
--bench-target-s S (time spent timing one entry, default 2). Environment: SYNTHCL_BENCH_MEMORY_GIB (the
memory budget that decides which materializing implementations are skipped, default 70% of the device's).
"""

from __future__ import annotations

import time

import pytest
import torch

import cases as C
from synthcl_fast.benchmarking import environment, peak_memory_bytes


def pytest_addoption(parser):
    group = parser.getgroup("synthcl_fast benchmarks")
    group.addoption("--full-sweep", action="store_true", help="every size of every case (CPU: about an hour)")
    group.addoption("--smoke-sweep", action="store_true", help="tiny shapes: checks the machinery, not the speed")
    group.addoption("--results-csv", default=str(C.RESULTS_CSV),
                    help="long CSV the results are appended to ('' to write none)")
    group.addoption("--run-id", default=None, help="names this run's rows in the CSV (default: time and commit)")
    group.addoption("--bench-target-s", type=float, default=2.0, help="seconds of timed calls per entry")


def pytest_generate_tests(metafunc):
    """Each suite module names its DEVICE; every case gets every implementation of its loss for that device
    (one that cannot run there is skipped with the reason, which the CSV keeps)."""
    if {"case", "implementation"} <= set(metafunc.fixturenames):
        device_type = torch.device(metafunc.module.DEVICE).type
        config = metafunc.config
        sweep = "full" if config.getoption("--full-sweep") else "smoke" if config.getoption("--smoke-sweep") \
            else "default"
        grid = [] if device_type == "cuda" and not torch.cuda.is_available() else \
            [(case, implementation) for case in C.cases(device_type, sweep)
             for implementation in C.implementations(case, device_type)]
        metafunc.parametrize(("case", "implementation"), grid, ids=[f"{c.id}-{i}" for c, i in grid])


class _Run:
    """This session's rows, appended to the CSV at its end."""

    def __init__(self, config):
        self.env = environment()
        self.run_id = config.getoption("--run-id") or C.new_run_id(self.env)
        self.csv = config.getoption("--results-csv")
        self.target_s = config.getoption("--bench-target-s")
        self.rows: list[dict] = []


@pytest.fixture(scope="session")
def bench_run(request):
    run = _Run(request.config)
    yield run
    if run.rows and run.csv:
        path = C.append_rows(run.rows, run.csv)
        print(f"\nbenchmarks: {len(run.rows)} rows of run {run.run_id} appended to {path}")


@pytest.fixture
def measure_loss_step(benchmark, bench_run):
    """measure(case, implementation, device): one forward + backward of the loss, timed by pytest-benchmark
    (each call ends with a device synchronization), then its peak extra memory; a row for the CSV either way
    (skipped with the reason where the implementation cannot run, or ran out of memory)."""

    def measure(case: C.Case, implementation: str, device: torch.device) -> None:
        def record(status, **kwargs):
            row = C.result_row(bench_run.env, bench_run.run_id, "pytest", device, case, implementation, status,
                               **kwargs)
            bench_run.rows.append(row)
            return row

        reason = C.unavailable_reason(case, implementation, device)
        if reason is not None:
            record(f"skipped: {reason}")
            pytest.skip(reason)
        benchmark.group = case.name
        try:
            with C.cpu_memory_guard(device, C.memory_budget_bytes(device)):
                step = C.make_step(case, implementation, device, n_inputs=3 if device.type == "cuda" else 1)
                # warm-up: compiles (torch.compile, Triton), warms the allocator and caches; a slow call (not a
                # compilation) is its own calibration, a fast one is timed once more to choose the rounds
                start = time.perf_counter()
                loss = float(step())
                first = time.perf_counter() - start
                if first < bench_run.target_s or implementation == "compiled":
                    first = C.time_calls(step, 1)[0]
                rounds = C.rounds_for(first, bench_run.target_s)
                benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=0)
                peak = peak_memory_bytes(step, device)
        except Exception as error:
            if not C.is_out_of_memory(error):
                raise
            message = f"out of memory: {str(error).splitlines()[0][:200]}"
            record(message)
            pytest.skip(message)
        if benchmark.stats is None:  # --benchmark-disable: ran once, nothing timed
            return
        timing = C.percentiles_ms(benchmark.stats.stats.data)
        row = record("ok", timing=timing, peak_bytes=peak, rounds=rounds, loss=loss)
        benchmark.extra_info.update({k: v for k, v in row.items() if v is not None})

    return measure
