"""Measurement helpers shared by the benchmark suites, scripts and env_report: peak memory, environment."""

from __future__ import annotations

import os
import platform

import torch
from torch.profiler import ProfilerActivity, profile


def peak_memory_bytes(fn, device: torch.device | str = "cpu") -> int:
    """Peak bytes allocated by torch while fn() runs, above what was allocated before it.

    CUDA: the caching allocator's own peak counter. CPU: torch keeps no peak counter, so the allocator's
    allocation and free events are recorded with the profiler and the running total's maximum is taken
    (every tensor the kernels or PyTorch allocate goes through that allocator; BLAS scratch does not,
    on either side of a comparison).
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    running = peak = 0
    for event in events:
        running += event.nbytes()
        peak = max(peak, running)
    return peak


def environment() -> dict:
    """What a stored benchmark result must say about where it was measured."""
    info = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "cpu": platform.processor() or _cpu_model(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        pass
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"
