"""Command line: `synthcl-train {train,compare,resume}` (also `python -m synthcl_fast.trainer`).

    synthcl-train compare                                  # the README's main command: simclr vs synthcl, 3 seeds
    synthcl-train compare --train-fractions 1.0 0.5        # + data efficiency: each method on half the images
    synthcl-train compare --study data-efficiency          # the study: 5 fractions x 5 seeds, intervals, a plot
    synthcl-train train --method synthcl --epochs 20 --output-dir runs/mine
    synthcl-train resume runs/mine                         # after a crash or a kill: continues exactly
    torchrun --nproc_per_node 2 -m synthcl_fast.trainer train --output-dir runs/ddp   # data parallel

Every TrainConfig field is an option (--lambda-hard, --mu-pair, ...); --config FILE reads a config.json
(options given on the command line override it).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import torch

from .checkpoint import CheckpointError
from .compare import STUDIES
from .config import DATASETS, METHODS, ConfigError, TrainConfig, option_name
from .distributed import init_distributed, shutdown_distributed
from .loop import NonFiniteLossError, Trainer, resolve_device

HELP = {
    "method": "what to train (default: synthcl)",
    "dataset": "digits (scikit-learn's, bundled), glyphs (RGB digits drawn from matplotlib's fonts, made on first use and cached), cifar10 (local python-format copy) or folder (class subfolders)",
    "data_path": "folder of the cifar10 or folder dataset (nothing is downloaded)",
    "image_size": "side of the square images (default: 16 for digits, 32 otherwise)",
    "test_fraction": "test share of the seeded train/test split for digits and folder (default: 0.25)",
    "train_fraction": "share of the training images used for training, for data-efficiency runs (default: 1.0)",
    "split_seed": "seed of the train/test split and of the train-fraction subset (default: 0)",
    "seed": "seed of initialization, data order, augmentations and latent codes (default: 0)",
    "epochs": "epochs of the main model over the training images, the same for every method",
    "batch_size": "real images per step and per process",
    "lr": "Adam learning rate of the encoder and head",
    "weight_decay": "Adam weight decay of the encoder and head",
    "temperature": "temperature of NT-Xent / PPCL",
    "width": "encoder width (channels of the first stage; then 2x and 4x)",
    "projection_dim": "output size of the projection head",
    "latent_dim": "size of the generator's latent code z",
    "gan_width": "width of the generator and discriminator",
    "synthetic_batch_size": "synthetic pairs (G(z), G_ema(z)) per step",
    "lr_gan": "Adam learning rate of G and D (betas 0, 0.9)",
    "ema_decay": "decay of G_ema, the moving average of G",
    "partner_update": "ema: G_ema follows G at 1 - ema_decay per step; controlled: at that rate while the pair is "
                      "harder than its target, not at all while it is easier (the gap then grows)",
    "warmup_epochs": "epochs that train the GAN alone before the --epochs of contrastive training",
    "epoch_steps": "steps per epoch (default: one pass over the training images); set, every --train-fraction "
                   "gets the same number of steps, GAN warm-up included",
    "d_augment": "true: D sees real and generated images through differentiable augmentation (DiffAugment: "
                 "colour, translation, cutout), which keeps it from overfitting few images",
    "lambda_hard": "weight of the contrastive loss G maximizes (hard samples; default 0.1, 0 for the ablation)",
    "mu_pair": "weight of the positive-pair loss between G(z) and G_ema(z) (default 1.0, 0 for the ablation)",
    "pair_target_start": "target cosine similarity of the positive pairs after the warm-up",
    "pair_target_end": "target cosine similarity of the positive pairs at the last step",
    "pair_schedule": "shape of the falling target: linear or cosine",
    "pair_target_mode": "absolute: the target is the schedule; relative: the schedule times the main model's "
                        "current cosine of the two views of real images",
    "pair_mode": "two_sided: keep the similarity at the target; floor: only above it",
    "eval_every": "epochs between linear-probe / kNN evaluations (the last epoch is always evaluated)",
    "knn_k": "neighbours of the kNN evaluation",
    "sample_every": "epochs between G(z) | G_ema(z) snapshots in samples.png",
    "checkpoint_every": "also checkpoint every N steps within an epoch (0: at epoch ends only)",
    "keep_checkpoints": "how many recent checkpoints to keep",
    "device": "auto, cpu, cuda or cuda:N",
    "precision": "the networks' forward: bf16 (autocast) or fp32; auto: bf16 on CUDA, fp32 on the CPU",
}


def _boolean(text: str) -> bool:
    if text.lower() in ("true", "1", "yes", "on"):
        return True
    if text.lower() in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _field_type(field: dataclasses.Field):
    kind = str(field.type).split("|")[0].strip()
    return {"int": int, "float": float, "str": str, "bool": _boolean}[kind]


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training options (defaults: synthcl_fast.trainer.TrainConfig)")
    choices = {"method": METHODS, "dataset": DATASETS, "pair_schedule": ("linear", "cosine"),
               "pair_mode": ("two_sided", "floor"), "precision": ("auto", "fp32", "bf16"),
               "pair_target_mode": ("absolute", "relative"), "partner_update": ("ema", "controlled")}
    for field in dataclasses.fields(TrainConfig):
        default = field.default
        help_text = HELP[field.name] + ("" if default is None or "default" in HELP[field.name] else
                                        f" (default: {default})")
        group.add_argument(option_name(field.name), dest=field.name, type=_field_type(field), default=None,
                           choices=choices.get(field.name), help=help_text)
    group.add_argument("--config", type=Path, help="read the options from a config.json first")


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", type=Path, help="run folder (default: runs/<what>-<time>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synthcl-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="{train,compare,resume}")
    commands.required = True
    train = commands.add_parser("train", help="train one method into a run folder")
    _add_config_options(train)
    _add_run_options(train)
    compare = commands.add_parser("compare", help="train several methods with the same seeds and tabulate")
    _add_config_options(compare)
    _add_run_options(compare)
    compare.add_argument("--methods", nargs="+", choices=METHODS,
                         help="methods to compare (default: simclr synthcl)")
    compare.add_argument("--seeds", nargs="+", type=int, help="training seeds (default: 0 1 2)")
    compare.add_argument("--train-fractions", nargs="+", type=float,
                         help="shares of the training images, e.g. 1.0 0.5 for data efficiency (default: 1.0)")
    compare.add_argument("--study", choices=sorted(STUDIES),
                         help="a study whose methods, fractions, seeds and training settings are fixed in "
                              "synthcl_fast/trainer/compare.py STUDIES (options given here still override); "
                              "writes study.md/.json/.csv/.png. data-efficiency: simclr vs synthcl and its two "
                              "ablations at 5-100 %% of the digits training images, 5 seeds; glyphs-calibration: "
                              "simclr at 10, 25, 100 %% of the glyphs images, 5 seeds, the positive control")
    resume = commands.add_parser("resume", help="continue a run from its newest intact checkpoint")
    resume.add_argument("run_dir", type=Path)
    resume.add_argument("--checkpoint", type=Path, help="a specific checkpoint file instead of the newest")
    resume.add_argument("--device", help="override the device (the results stay exact on the same device type)")
    resume.add_argument("--no-progress", action="store_true")
    resume.add_argument("--threads", type=int)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = TrainConfig.load(args.config).to_dict() if args.config else {}
    if getattr(args, "study", None):
        values.update(STUDIES[args.study].config)
    for field in dataclasses.fields(TrainConfig):
        given = getattr(args, field.name)
        if given is not None:
            values[field.name] = given
    return TrainConfig.from_dict(values)


def _default_output_dir(args, what: str) -> Path:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("--output-dir is required when several processes are launched (torchrun)")
    return Path("runs") / f"{what}-{time.strftime('%Y%m%d-%H%M%S')}"


def _run(args) -> None:
    from .compare import compare, write_report, write_study_report

    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1; got {args.threads}")
        torch.set_num_threads(args.threads)
    kwargs = {"progress": not args.no_progress}
    if args.command == "resume":
        config = TrainConfig.load(args.run_dir / "config.json") if (args.run_dir / "config.json").exists() else None
        device = resolve_device(args.device or (config.device if config else "auto"))
        kwargs["dist"] = context = init_distributed(device)
        try:
            result = Trainer.resume(args.run_dir, args.checkpoint, device=args.device, **kwargs).fit()
        finally:
            shutdown_distributed(context)
        if context.is_main:
            print(f"run {result.run_dir}: linear probe {result.final.get('probe_acc')}, kNN {result.final.get('knn_acc')}")
        return

    config = config_from_args(args)
    study = STUDIES[args.study] if getattr(args, "study", None) else None
    what = config.method if args.command == "train" else (f"study-{args.study}" if study else "compare")
    output_dir = args.output_dir or _default_output_dir(args, what)
    kwargs["dist"] = context = init_distributed(resolve_device(config.device))
    try:
        if args.command == "train":
            result = Trainer.new(config, output_dir, **kwargs).fit()
            if context.is_main:
                print(f"run {output_dir}: linear probe {result.final['probe_acc']:.4f}, "
                      f"kNN {result.final['knn_acc']:.4f} (metrics.csv, curves.png, checkpoints/)")
            return
        methods = args.methods or (list(study.methods) if study else ["simclr", "synthcl"])
        seeds = args.seeds or (list(study.seeds) if study else [0, 1, 2])
        fractions = args.train_fractions or (list(study.fractions) if study else [1.0])
        for fraction in fractions:
            if not 0 < fraction <= 1:
                raise ConfigError(f"--train-fractions must lie in (0, 1]; got {fraction}")
        start = time.perf_counter()

        def header(rows) -> str:
            done = min((len(r.seeds) for r in rows), default=0)
            title = f"synthcl-train compare --study {args.study}" if study else "synthcl-train compare"
            epochs = f"{config.epochs} epochs" + (f" of {config.epoch_steps} steps (the same steps at every fraction)"
                                                    if config.epoch_steps else "")
            return (f"# {title}\n\nDataset {config.dataset}, {epochs} for every method "
                    f"(+ {config.warmup_epochs} GAN warm-up epochs before them for synthcl), batch {config.batch_size}, "
                    f"seeds {' '.join(map(str, seeds[:done]))} of {' '.join(map(str, seeds))}; accuracy on the test "
                    f"split, mean and 95 % t interval over seeds; differences paired by seed. "
                    f"Wall time of this call {time.perf_counter() - start:.0f} s (runs finished by an earlier call are "
                    f"reused, not retrained), torch threads {torch.get_num_threads()}. "
                    f"Runs in {output_dir}." + (f"\n\nStudy: {study.why}." if study else ""))

        def report(rows) -> str:
            return write_study_report(rows, output_dir, header(rows), control_fraction=study.control_fraction) \
                if study else \
                write_report(rows, output_dir, header(rows))

        after_seed = (lambda rows: report(rows)) if study and context.is_main else None
        rows = compare(config, methods, seeds, fractions, output_dir, after_seed=after_seed, **kwargs)
        if context.is_main:
            print(report(rows))
    finally:
        shutdown_distributed(context)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _run(args)
    except ConfigError as error:
        print(f"synthcl-train: error: {error}", file=sys.stderr)
        return 2
    except (FileNotFoundError, FileExistsError, CheckpointError, NonFiniteLossError) as error:
        print(f"synthcl-train: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
