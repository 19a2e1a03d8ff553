"""Measurement helpers shared by the benchmark suites, scripts and env_report: peak memory, environment."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

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
    """What a stored benchmark result must say about where it was measured: machine (CPU model, logical
    cores, torch threads, memory, the 1-minute load average now: above ~0.5 per core, other work shares the
    cores; GPU name, capability, SMs, memory), commit, and the versions."""
    info = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": _commit(), "torch": torch.__version__, "triton": _version("triton"),
            "python": platform.python_version(), "machine": platform.machine(),
            "cpu": _cpu_model() or platform.processor() or "unknown", "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "memory_gib": round(total_memory_bytes("cpu") / 2**30, 1),
            "load_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        info.update(gpu=props.name, gpu_capability=f"{props.major}.{props.minor}", gpu_sms=props.multi_processor_count,
                    gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    return info


def total_memory_bytes(device: torch.device | str = "cpu") -> int:
    """The memory of `device`: the GPU's, or the machine's RAM for the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _version(package: str) -> str | None:
    """An installed package's version, without importing it (importing triton costs ~75 MB)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _commit() -> str | None:
    """The source checkout's commit, with "+dirty" for uncommitted changes to anything but the stored results
    (which every run appends to), or None outside a checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)benchmarks/results"], cwd=root, capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    # a copy of the tree without .git (the GPU machine's) is told its commit by SYNTHCL_FAST_COMMIT
    return (commit + ("+dirty" if dirty else "")) or os.environ.get("SYNTHCL_FAST_COMMIT") or None


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None
