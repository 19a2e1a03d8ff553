"""Where the time of one training step goes: encoder, generator, discriminator, augmentation, loss, optimizer
steps and the rest, forward and backward, for the trainer's joint synthcl step (or the simclr baseline's).

    python benchmarks/profile_trainer_step.py                         # default config (digits), the CPU
    python benchmarks/profile_trainer_step.py --method simclr --threads 1 --out benchmarks/results/trainer_step_profile.md
    python benchmarks/profile_trainer_step.py --device cuda --steps 50           # on a GPU (bf16 autocast)

How: the Trainer of synthcl_fast/trainer/loop.py is built as `synthcl-train` builds it (its defaults, the GAN
warm-up skipped: weights do not change the work) and its unchanged `train_step` runs on real batches. First
plain steps give the step's wall time (on a GPU, the device synchronized before and after the timed steps); then steps under torch.profiler, with each stage's forward marked by a
record_function range from outside the trainer (forward hooks on its modules, wrappers around the loss
functions and optimizer steps it calls). Backward work is given to the stage whose forward op created the
autograd node (the profiler's sequence numbers link them). What no stage claims is "other" (concatenation of
views, random codes, the loss checks, gradient accumulation). The profiler adds overhead of its own; the shares
come from the profiled steps, the step time from the plain ones.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import synthcl_fast.losses as losses  # noqa: E402
from synthcl_fast.benchmarking import environment  # noqa: E402
from synthcl_fast.trainer import loop  # noqa: E402
from synthcl_fast.trainer.config import TrainConfig  # noqa: E402

STAGES = ("encoder", "generator", "discriminator", "augmentation", "loss", "other")
PREFIX = "stage:"


@contextlib.contextmanager
def marked_stages(trainer):
    """record_function ranges around every stage's forward, put in from outside the trainer, removed after."""
    handles, patched = [], []

    def mark_module(module, stage):
        ranges = []
        handles.append(module.register_forward_pre_hook(
            lambda *_: ranges.append(record_function(PREFIX + stage).__enter__()) and None))
        handles.append(module.register_forward_hook(lambda *_: ranges.pop().__exit__(None, None, None) and None))

    def mark_function(owner, name, stage):
        original = getattr(owner, name)

        def wrapped(*args, **kwargs):
            with record_function(PREFIX + stage):
                return original(*args, **kwargs)

        setattr(owner, name, wrapped)
        patched.append((owner, name, original))

    mark_module(trainer.model, "encoder")
    mark_module(trainer.augment, "augmentation")
    mark_function(trainer.optimizer, "step", "encoder/optimizer")
    for name in ("nt_xent", "ppcl", "positive_pair_loss"):
        mark_function(losses, name, "loss")
    if trainer.config.uses_generator:
        mark_module(trainer.generator, "generator")
        mark_module(trainer.generator_ema, "generator")
        mark_module(trainer.discriminator, "discriminator")
        mark_function(loop, "discriminator_loss", "discriminator")
        mark_function(loop, "generator_adversarial_loss", "discriminator")
        mark_function(loop, "update_ema", "generator")
        mark_function(trainer.g_optimizer, "step", "generator/optimizer")
        mark_function(trainer.d_optimizer, "step", "discriminator/optimizer")
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for owner, name, original in reversed(patched):
            if owner is loop or owner is losses:
                setattr(owner, name, original)
            else:
                delattr(owner, name)  # the instance attribute hid the class's method


def _stage_of(event) -> str | None:
    """The innermost stage range around a profiler event, or None."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith(PREFIX):
            return parent.name[len(PREFIX):]
        parent = parent.cpu_parent
    return None


def _in_backward(event) -> bool:
    while event is not None:
        if event.name.startswith("autograd::engine"):
            return True
        event = event.cpu_parent
    return False


def attribute(events) -> dict[tuple[str, str], float]:
    """{(stage, "forward" | "backward" | "optimizer"): microseconds} from the profiler's events."""
    times: dict[tuple[str, str], float] = defaultdict(float)
    stage_of_sequence = {}
    # An op records the sequence number the next autograd node will get; ops that create no node (no input
    # requires grad) share it with the op that does, which comes last: the last op seen with a number made it.
    for event in sorted(events, key=lambda e: e.time_range.start):
        if event.name.startswith(PREFIX) and _stage_of(event) is None:  # outermost ranges only
            stage, _, part = event.name[len(PREFIX):].partition("/")
            times[(stage, part or "forward")] += event.cpu_time_total
        elif event.sequence_nr >= 0 and not _in_backward(event):
            stage = _stage_of(event)
            stage_of_sequence[event.sequence_nr] = "other" if stage is None else stage.partition("/")[0]
    for event in events:
        if event.name.startswith("autograd::engine::evaluate_function") and event.cpu_parent is None:
            times[(stage_of_sequence.get(event.sequence_nr, "other"), "backward")] += event.cpu_time_total
    return times


def profile_steps(trainer, batches, n_plain: int, n_profiled: int) -> tuple[list[float], dict, float]:
    cuda = trainer.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for row in batches[:3]:  # warm-up: allocator, kernels, kornia's caches
        trainer.train_step(trainer._load_batch(row))
    sync()
    plain = []
    if cuda:  # the steps run ahead of the host (none reads the device): time them together, per step on average
        start = time.perf_counter()
        for row in batches[3:3 + n_plain]:
            trainer.train_step(trainer._load_batch(row))
        sync()
        plain = [(time.perf_counter() - start) / n_plain] * n_plain
    else:
        for row in batches[3:3 + n_plain]:
            start = time.perf_counter()
            trainer.train_step(trainer._load_batch(row))
            plain.append(time.perf_counter() - start)
    profiled_rows = batches[3 + n_plain:3 + n_plain + n_profiled]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with marked_stages(trainer), profile(activities=activities) as prof:
        start = time.perf_counter()
        for row in profiled_rows:
            trainer.train_step(trainer._load_batch(row))
        sync()
        profiled_s = time.perf_counter() - start
    return plain, attribute(prof.events()), profiled_s / len(profiled_rows)


def render(config, device, env, plain, times, profiled_step_s, n_profiled, command) -> str:
    step_us = profiled_step_s * 1e6
    per_step = {key: value / n_profiled for key, value in times.items()}
    attributed = sum(v for (stage, _), v in per_step.items() if stage != "other")
    other_total = step_us - attributed
    lines = [
        f"# One `{config.method}` training step, profiled",
        "",
        f"`{command}`",
        "",
        f"Measured {env['date_utc']} on {env['cpu']} ({env['cpu_count']} logical cores, {env['torch_threads']} "
        f"torch threads), torch {env['torch']}, commit {env['commit']}, device {device}, precision "
        f"{config.resolved_precision(device.type)}. Config: dataset {config.dataset} "
        f"({config.resolved_image_size}x{config.resolved_image_size}), batch {config.batch_size} real images"
        + (f" + {config.synthetic_batch_size} synthetic pairs" if config.uses_generator else "")
        + f", encoder width {config.width}, projection {config.projection_dim}.",
        "",
        f"Step wall time without the profiler: median {statistics.median(plain) * 1e3:.1f} ms over {len(plain)} "
        f"steps (min {min(plain) * 1e3:.1f}); under the profiler {step_us / 1e3:.1f} ms (its overhead included). "
        f"Shares below are of the profiled step, over {n_profiled} steps.",
        "",
        "| stage | forward ms | backward ms | optimizer ms | total ms | share |",
        "|---|---|---|---|---|---|",
    ]
    for stage in STAGES:
        forward = per_step.get((stage, "forward"), 0.0)
        backward = per_step.get((stage, "backward"), 0.0)
        optimizer = per_step.get((stage, "optimizer"), 0.0)
        total = forward + backward + optimizer
        if stage == "other":  # everything the stages did not claim, backward "other" included
            forward, total = other_total - backward, other_total
        if total == 0 and stage != "other":
            continue
        lines.append(f"| {stage} | {forward / 1e3:.1f} | {backward / 1e3:.1f} | {optimizer / 1e3:.1f} | "
                     f"{total / 1e3:.1f} | {total / step_us:.0%} |")
    lines += ["", "encoder: the main model (ResNet + projection head) on every view; generator: G and G_ema forward, "
              "the EMA update; discriminator: D on real and generated images and the GAN losses; augmentation: "
              "kornia on real and generated images (its backward carries the loss into G); loss: PPCL / NT-Xent and "
              "the positive-pair loss; other: view concatenation, latent codes, the non-finite checks, gradient "
              "accumulation and the profiler's own bookkeeping."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="synthcl", choices=("synthcl", "simclr"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--steps", type=int, default=10, help="plain steps timed (after 3 warm-up steps)")
    parser.add_argument("--profiled-steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=None, help="real images per step (default: the config's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--dataset", default=None, help="the config's --dataset (default: the config's)")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    parser.add_argument("--json", type=Path, default=None, help="also write the step times (ms) as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {"method": args.method, "device": args.device, "precision": args.precision, "warmup_epochs": 1}
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    if args.dataset:
        overrides["dataset"] = args.dataset
    config = TrainConfig(**overrides)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = loop.Trainer(config, Path(run_dir), progress=False)
        trainer.epoch = trainer.warmup_epochs  # the joint step (synthcl) or the baseline's step
        n_steps = 3 + args.steps + args.profiled_steps
        batches = torch.cat([trainer._epoch_batches(trainer.epoch)] * (1 + n_steps // trainer.steps_per_epoch))
        plain, times, profiled_step_s = profile_steps(trainer, batches, args.steps, args.profiled_steps)
    command = "python benchmarks/profile_trainer_step.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = render(config, trainer.device, environment(), plain, times, profiled_step_s, args.profiled_steps,
                  command.strip())
    if args.out:
        args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps({"step_ms": [t * 1e3 for t in plain],
                                         "median_ms": statistics.median(plain) * 1e3,
                                         "profiled_step_ms": profiled_step_s * 1e3, "config": config.to_dict()}))
    print(text)
    return text


if __name__ == "__main__":
    main()
