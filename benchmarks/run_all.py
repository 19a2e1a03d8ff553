"""The measured run, in one command: every loss against its peers (pytest benchmarks/, time and memory, into
the long CSV), the table of ratios to the fastest peer, the plot, and the trainer's step profile.

    python benchmarks/run_all.py              # default sweep: ~15 minutes on a 2-core machine
    python benchmarks/run_all.py --full-sweep # every size, NT-Xent up to R = 65536 (over an hour)
    python benchmarks/run_all.py --smoke --results-dir /tmp/smoke   # tiny shapes: checks the chain

Writes benchmarks/results/ (or --results-dir): benchmarks.csv (rows appended, run id printed),
benchmarks_<device>.md and .png (this run), trainer_step_profile.md. Timings are honest only on a quiet machine: the load average at the
start goes into every row, and a busy machine is reported before anything runs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import cases as C  # noqa: E402
from synthcl_fast.benchmarking import environment  # noqa: E402

RESULTS = HERE / "results"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full-sweep", action="store_true", help="every size (over an hour on 2 cores)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes, no torch.compile, a short profile: checks the chain, not the speed")
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where the tables, plots and CSV go")
    parser.add_argument("--no-profile", action="store_true", help="skip the trainer step profile")
    args = parser.parse_args(argv)
    results_dir = args.results_dir
    results_dir.mkdir(parents=True, exist_ok=True)
    results_csv = results_dir / C.RESULTS_CSV.name
    env = environment()
    if env["load_1m"] is not None and env["load_1m"] > 0.5 * env["cpu_count"]:
        print(f"run_all: load average {env['load_1m']} on {env['cpu_count']} cores: other work shares this machine, "
              "the timings will not be publishable", file=sys.stderr)
    run_id = C.new_run_id(env)
    started = time.perf_counter()
    pytest = [sys.executable, "-m", "pytest", "benchmarks/", "--benchmark-only", "--run-id", run_id,
              "--results-csv", str(results_csv), "-p", "no:cacheprovider", "-q", "-rs"]
    if args.full_sweep:
        pytest.append("--full-sweep")
    if args.smoke:
        pytest += ["--smoke-sweep", "-k", "not compiled", "--bench-target-s", "0.05"]
    subprocess.run(pytest, cwd=ROOT, check=True)
    for device in ["cpu"] + (["cuda"] if env.get("gpu") else []):  # the CPU suite runs everywhere, the GPU one there
        for script, out in (("report.py", f"benchmarks_{device}.md"), ("plot.py", f"benchmarks_{device}.png")):
            subprocess.run([sys.executable, str(HERE / script), str(results_csv), "--run", run_id, "--device", device,
                            "--out", str(results_dir / out)], cwd=ROOT, check=True)
    if not args.no_profile:
        profile = [sys.executable, str(HERE / "profile_trainer_step.py"), "--out",
                   str(results_dir / "trainer_step_profile.md")]
        if args.smoke:
            profile += ["--steps", "1", "--profiled-steps", "1", "--batch-size", "32"]
        subprocess.run(profile, cwd=ROOT, check=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    print(f"run_all: run {run_id} done in {time.perf_counter() - started:.0f} s; results in {results_dir}")


if __name__ == "__main__":
    main()
