"""Forward + backward with one side frozen against every side trainable, same shapes, one process (issue 25,
item 4), and torch.compile(reference, dynamic=True) on the frozen shapes (issue 26 asks the fused CLIP and
InfoNCE losses for >= 1.0x of it).

    PYTHONPATH=. python benchmarks/frozen_side.py [--threads 2] [--rounds 7] [--quick]

Scenarios (benchmarks/cases.py's inputs; a frozen side is one whose tensors do not require grad):

    info_nce      MoCo: R queries against [R keys; 65536 queue], D = 128. trainable: query and key (the suites'
                  case; the candidates' gradient then runs over all K rows); frozen: the query alone (a
                  momentum encoder's key, the queue)
    clip          B = 4096, D = 512, learnable logit scale. trainable: both towers; frozen: the text tower (LiT)
    nt_xent_neg   NT-Xent + 256 generated negatives (R = 2048). frozen: the negatives. The candidates are one
                  tensor [z1; z2; g] that requires grad for the views' sake, so nothing is skipped: the control

The steps alternate (trainable, frozen, compiled, ...) round by round, so that a change in the machine's load
falls on all three alike; medians are reported. Prints a markdown table (results: benchmarks/results/).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cases import Case, make_inputs, make_loss  # noqa: E402

# (what is frozen, case, the inputs that stay trainable when it is)
SCENARIOS = [
    ("key + queue frozen", Case("info_nce", 256, 128, queue=65536), ("query",)),
    ("key + queue frozen", Case("info_nce", 512, 128, queue=65536), ("query",)),
    ("text tower frozen", Case("clip", 4096, 512), ("image", "logit_scale")),
    ("negatives frozen (control)", Case("nt_xent_negatives", 2048, 128), ("z1", "z2")),
]
QUICK = [(name, Case(case.family, case.rows // 4, case.dim, queue=case.queue // 16), kept)
         for name, case, kept in SCENARIOS]


def step(loss_fn, inputs, trainable):
    """One forward + backward: the loss, then torch.autograd.grad for the inputs named trainable."""
    def run():
        x = {key: (value.detach().requires_grad_(key in trainable)
                   if isinstance(value, torch.Tensor) and value.is_floating_point() else value)
             for key, value in inputs.items()}
        loss = loss_fn(x)
        torch.autograd.grad(loss, [x[key] for key in trainable])
    return run


def median_ms(fn_times):
    return 1e3 * statistics.median(fn_times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="small shapes (a smoke run: numbers meaningless)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import synthcl_fast

    print(f"synthcl_fast from {Path(synthcl_fast.__file__).parent}, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} torch threads, "
          f"load average at start {os.getloadavg()[0]:.2f}", flush=True)
    print("| scenario | trainable ms | frozen ms | frozen / trainable | compiled ref, frozen ms | "
          "fused frozen vs compiled |")
    print("|---|---|---|---|---|---|")
    for name, case, kept in (QUICK if args.quick else SCENARIOS):
        inputs = make_inputs(case, "cpu")
        every = tuple(key for key, value in inputs.items()
                      if isinstance(value, torch.Tensor) and value.is_floating_point()
                      and (value.requires_grad or key in kept))
        fused, compiled = make_loss(case, "cpu"), make_loss(case, "compiled")
        runs = {"trainable": step(fused, inputs, every), "frozen": step(fused, inputs, kept),
                "compiled": step(compiled, inputs, kept)}
        for run in runs.values():  # warm-up (the compile, the kernels' first call)
            run()
        times = {key: [] for key in runs}
        for _ in range(args.rounds):
            for key, run in runs.items():
                start = time.perf_counter()
                run()
                times[key].append(time.perf_counter() - start)
        ms = {key: median_ms(value) for key, value in times.items()}
        print(f"| {case.name}, {name} | {ms['trainable']:.1f} | {ms['frozen']:.1f} | "
              f"{ms['frozen'] / ms['trainable']:.2f} | {ms['compiled']:.1f} | "
              f"{ms['compiled'] / ms['frozen']:.2f}x |", flush=True)
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
