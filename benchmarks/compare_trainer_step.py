"""One training step of this checkout against another checkout's, side by side in one run.

    python benchmarks/compare_trainer_step.py /path/to/other/checkout               # digits (16x16, grayscale)
    python benchmarks/compare_trainer_step.py OTHER --rgb32                         # a 32x32 RGB data set
    python benchmarks/compare_trainer_step.py OTHER --out benchmarks/results/trainer_step_speedup.md

Each checkout runs in its own subprocess (its own `synthcl_fast` on PYTHONPATH; the C++ kernels as that checkout
builds them), alternating A, B, A, B, ... so that a change in the machine's load hits both alike. A round builds a
Trainer of the config with the checkout's own code, runs warm-up steps, then times `--steps` plain `train_step`
calls of the joint synthcl step (or simclr's) on the same batches; the table gives each checkout's median over all
rounds and the ratio. The step's work depends on the images' shape only, not their content: `--rgb32` makes a
folder of random 32x32 RGB images (the `folder` data set, which every checkout reads), the shape of CIFAR-10 and
of the embedded 32x32 data sets, with the trainer's default config otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from synthcl_fast.benchmarking import environment  # noqa: E402

# runs inside a checkout's subprocess: only the Trainer API every checkout has (Trainer(config, dir), train_step)
ROUND = """
import json, sys, tempfile, time, torch
from pathlib import Path
from synthcl_fast.trainer import TrainConfig, loop
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
config = TrainConfig(**args["config"])
with tempfile.TemporaryDirectory() as run_dir:
    trainer = loop.Trainer(config, Path(run_dir), progress=False)
    trainer.epoch = trainer.warmup_epochs
    batches = trainer._epoch_batches(trainer.epoch)
    rows = [batches[i % len(batches)] for i in range(args["warmup"] + args["steps"])]
    times = []
    for i, row in enumerate(rows):
        start = time.perf_counter()
        trainer.train_step(trainer.data.train_images[row])
        if i >= args["warmup"]:
            times.append(time.perf_counter() - start)
print(json.dumps([t * 1e3 for t in times]))
"""


def random_rgb_folder(root: Path, n_classes: int = 10, per_class: int = 40) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(n_classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / f"class{c}" / f"{i}.png")
    return root


def time_round(checkout: Path, args: dict) -> list[float]:
    env = dict(os.environ, PYTHONPATH=str(checkout), OMP_NUM_THREADS=str(args["threads"]))
    out = subprocess.run([sys.executable, "-c", ROUND, json.dumps(args)], cwd=checkout, env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("other", type=Path, help="the other checkout (e.g. a git worktree of the baseline commit)")
    parser.add_argument("--method", default="synthcl", choices=("synthcl", "simclr"))
    parser.add_argument("--rgb32", action="store_true", help="a 32x32 RGB data set instead of digits")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per checkout, alternating")
    parser.add_argument("--steps", type=int, default=15, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    checkouts = {"this": ROOT, "other": args.other.resolve()}
    with tempfile.TemporaryDirectory() as tmp:
        config = {"method": args.method, "device": "cpu", "warmup_epochs": 1}
        if args.rgb32:
            config.update(dataset="folder", data_path=str(random_rgb_folder(Path(tmp) / "rgb32")))
        job = {"config": config, "threads": args.threads, "steps": args.steps, "warmup": args.warmup}
        times = {name: [] for name in checkouts}
        for _ in range(args.rounds):
            for name, checkout in checkouts.items():
                times[name] += time_round(checkout, job)
    env = environment()
    medians = {name: statistics.median(t) for name, t in times.items()}
    commits = {name: subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=c, capture_output=True,
                                    text=True).stdout.strip() or "unknown" for name, c in checkouts.items()}
    data = "32x32 RGB (random images, folder data set)" if args.rgb32 else "digits (16x16 grayscale)"
    text = (f"| config | step ({args.method}) | other checkout ({commits['other']}) ms | this checkout "
            f"({commits['this']}) ms | speed-up |\n|---|---|---|---|---|\n"
            f"| {data}, batch 128{' + 32 synthetic pairs' if args.method == 'synthcl' else ''} | median of "
            f"{len(times['this'])} | {medians['other']:.1f} | {medians['this']:.1f} | "
            f"{medians['other'] / medians['this']:.2f}x |\n\n"
            f"Measured {env['date_utc']} on {env['cpu']} ({env['cpu_count']} cores, {args.threads} threads), torch "
            f"{env['torch']}; {args.rounds} alternating rounds of {args.steps} steps per checkout "
            f"(`python benchmarks/compare_trainer_step.py OTHER{' --rgb32' if args.rgb32 else ''}"
            f"{' --method simclr' if args.method == 'simclr' else ''}`).\n")
    if args.out:
        with args.out.open("a") as f:
            f.write(text + "\n")
    print(text)
    return text


if __name__ == "__main__":
    main()
