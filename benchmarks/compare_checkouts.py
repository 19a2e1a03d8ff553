"""Two versions of the fused CPU kernels side by side in one run: a kernel change is judged against the
commit it replaces on the same machine, the same inputs and the same minutes.

    python benchmarks/compare_checkouts.py BEFORE_DIR [AFTER_DIR] --case nt_xent:4096 --threads 1 2
    python benchmarks/compare_checkouts.py . . --after-env SYNTHCL_FAST_NATIVE=1 --case nt_xent:4096  # build flags

BEFORE_DIR / AFTER_DIR: checkouts of the repository (e.g. `git worktree add --detach /tmp/before <commit>`;
AFTER_DIR defaults to this one). Each checkout's package is imported in its own worker process (PYTHONPATH),
so each runs its own kernels, compiled on first use (a prebuilt synthcl_fast._C is skipped:
SYNTHCL_FAST_FORCE_JIT=1); the inputs and the step (forward + backward, `cases.make_step`) come from this
checkout's benchmarks/cases.py for both. Workers alternate, one timed call each per round (never two at
once), so slow drifts of the machine fall on both alike. --before-env / --after-env set environment variables
of one side only (the same checkout twice with SYNTHCL_FAST_NATIVE=1 on one side compares the build flags).
Prints the median per checkout and the ratio, and appends rows (suite "checkouts", implementation
"cpu@<commit>/<threads>t") to --results-csv if given.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import cases as C  # noqa: E402

WORKER = r"""
import json, sys, time
import torch
sys.path.insert(0, {bench!r})
import cases as C
torch.set_num_threads({threads})
case = C.Case({family!r}, {rows}, dim={dim}, dtype={dtype!r}, queue={queue})
step = C.make_step(case, "cpu", "cpu")
step(); step()  # compile on first use, warm caches
print("ready", flush=True)
for line in sys.stdin:
    start = time.perf_counter(); step(); elapsed = time.perf_counter() - start
    print(json.dumps(elapsed), flush=True)
"""


def parse_case(text: str) -> C.Case:
    """family:rows[:dim[:queue]], e.g. nt_xent:4096, info_nce:256:128:65536, clip:4096:512."""
    family, rows, *rest = text.split(":")
    dim = int(rest[0]) if rest else (512 if family == "clip" else 128)
    queue = int(rest[1]) if len(rest) > 1 else (C.INFO_NCE_QUEUE if family == "info_nce" else 0)
    return C.Case(family, int(rows), dim=dim, queue=queue)


def commit_of(checkout: Path) -> str:
    out = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(checkout), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return (out.stdout.strip() or checkout.name) + ("+dirty" if dirty else "")


def start_worker(checkout: Path, extra_env: dict, case: C.Case, threads: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(checkout), SYNTHCL_FAST_FORCE_JIT="1", OMP_NUM_THREADS=str(threads),
               **extra_env)
    code = WORKER.format(bench=str(HERE), threads=threads, family=case.family, rows=case.rows, dim=case.dim,
                         dtype=case.dtype, queue=case.queue)
    worker = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=env, cwd="/")
    if worker.stdout.readline().strip() != "ready":
        raise RuntimeError(f"the worker for {checkout} did not start (see its stderr above)")
    return worker


def timed_call(worker: subprocess.Popen) -> float:
    worker.stdin.write("\n")
    worker.stdin.flush()
    return json.loads(worker.stdout.readline())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path, nargs="?", default=HERE.parent)
    parser.add_argument("--case", action="append", required=True, help="family:rows[:dim[:queue]] (repeatable)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--before-env", action="append", default=[], help="NAME=VALUE for the first side only")
    parser.add_argument("--after-env", action="append", default=[], help="NAME=VALUE for the second side only")
    parser.add_argument("--results-csv", type=Path, help="append the rows to this long CSV")
    args = parser.parse_args(argv)
    from synthcl_fast.benchmarking import environment

    env = environment()
    run_id = C.new_run_id(env)
    checkouts = {}
    for path, assignments in ((args.before, args.before_env), (args.after, args.after_env)):
        extra_env = dict(a.split("=", 1) for a in assignments)
        name = commit_of(path) + "".join(f" {k}={v}" for k, v in extra_env.items())
        checkouts[name] = (path, extra_env)
    if len(checkouts) != 2:
        parser.error("the two sides are the same checkout with the same environment")
    rows = []
    print(f"run {run_id} on {env['cpu']} ({env['cpu_count']} cores); load {env['load_1m']}")
    for case in map(parse_case, args.case):
        for threads in args.threads:
            workers = {name: start_worker(path, extra_env, case, threads)
                       for name, (path, extra_env) in checkouts.items()}
            times = {name: [] for name in workers}
            try:
                for _ in range(args.rounds):
                    for name, worker in workers.items():
                        times[name].append(timed_call(worker))
            finally:
                for worker in workers.values():
                    worker.stdin.close()
                    worker.wait()
            medians = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
            (before, t_before), (after, t_after) = medians.items()
            print(f"{case.name} {threads}t: {before} {t_before:.1f} ms, {after} {t_after:.1f} ms, "
                  f"{after} is {t_before / t_after:.2f}x")
            for name, ts in times.items():
                rows.append(C.result_row(env, run_id, "checkouts", "cpu", case, f"cpu@{name}/{threads}t",
                                         timing=C.percentiles_ms(ts), rounds=args.rounds))
    if args.results_csv:
        C.append_rows(rows, args.results_csv)
        print(f"appended {len(rows)} rows to {args.results_csv}")


if __name__ == "__main__":
    main()
