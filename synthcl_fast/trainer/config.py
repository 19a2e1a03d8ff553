"""Training configuration: one dataclass, its defaults, and checks whose errors name the option.

Every field is also a command-line option (`lambda_hard` is `--lambda-hard`). A config is saved as
config.json in the run folder and stored in every checkpoint, so a run can be resumed exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

METHODS = ("simclr", "synthcl", "synthcl-no-hard-pairs", "synthcl-no-hard-samples")
DATASETS = ("digits", "glyphs", "cifar10", "folder")
DEFAULT_IMAGE_SIZE = {"digits": 16, "glyphs": 32, "cifar10": 32, "folder": 32}
# made by the code from what the installed packages ship: no --data-path
EMBEDDED_DATASETS = ("digits", "glyphs")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the option."""


def option_name(field_name: str) -> str:
    """The command-line spelling of a config field: lambda_hard -> --lambda-hard."""
    return "--" + field_name.replace("_", "-")


@dataclass
class TrainConfig:
    """Everything that determines a training run. The defaults are the README's main command.

    The methods (DESIGN.md section 1):
      simclr                   the baseline: NT-Xent over 2 views of each real image (PPCL with no synthetic data).
      synthcl                  the full method: GAN warm-up, then hard samples (G maximizes the contrastive
                               loss, weight lambda_hard) and hard positive pairs (G(z), G_ema(z)) trained with PPCL
                               and the positive-pair loss (weight mu_pair) on a falling similarity target.
      synthcl-no-hard-pairs    ablation: G_ema(z) is not used; the 4 synthetic views are 4 augmentations of G(z),
                               and there is no positive-pair loss (same batch size, so only the partner differs).
      synthcl-no-hard-samples  ablation: lambda_hard = 0, G is trained by the GAN and positive-pair losses only.
    """

    method: str = "synthcl"
    # data
    dataset: str = "digits"
    data_path: str | None = None
    image_size: int | None = None          # None: 16 for digits, 32 otherwise
    test_fraction: float = 0.25             # for digits and folder; CIFAR-10 and glyphs keep their own test split
    train_fraction: float = 1.0             # fraction of the training images used for (unlabeled) training
    split_seed: int = 0                     # the train/test split and the train-fraction subset
    # optimization (shared by every method: the baseline gets exactly the same encoder and budget)
    seed: int = 0
    epochs: int = 30
    epoch_steps: int | None = None          # steps per epoch; None: one pass over the training images. Set, it gives
                                            # every --train-fraction the same number of steps (and of GAN warm-up steps)
    batch_size: int = 128                   # real images per step and per process
    lr: float = 2e-3
    weight_decay: float = 1e-5
    temperature: float = 0.5
    # encoder
    width: int = 32                         # channels of the first ResNet stage (then 2x, 4x)
    projection_dim: int = 64
    # generator and discriminator
    latent_dim: int = 64
    gan_width: int = 16
    synthetic_batch_size: int = 32          # synthetic pairs (G(z), G_ema(z)) per step
    lr_gan: float = 2e-4
    ema_decay: float = 0.99
    partner_update: str = "ema"             # ema: G_ema <- EMA of G; controlled: the EMA waits while the pair is
                                            # easier than its target and catches up while it is harder
    warmup_epochs: int = 5                  # GAN alone, before the `epochs` of the main model
    d_augment: bool = False                 # D sees real and generated images through differentiable augmentation
    lambda_hard: float | None = None        # None: 0.1 for methods with hard samples, 0 otherwise
    mu_pair: float | None = None            # None: 1.0 for methods with hard pairs, 0 otherwise
    pair_target_start: float = 0.9
    pair_target_end: float = 0.5
    pair_schedule: str = "cosine"
    pair_target_mode: str = "absolute"      # absolute: s*(t) = schedule; relative: schedule x the main model's
                                            # current cosine of real positive pairs (tracks its training state)
    pair_mode: str = "two_sided"
    # evaluation and outputs
    eval_every: int = 10                    # epochs between linear-probe/kNN evaluations (and always the last)
    knn_k: int = 20
    sample_every: int = 5                   # epochs between G(z) | G_ema(z) snapshots (and always the last)
    checkpoint_every: int = 0               # steps between mid-epoch checkpoints; 0: at the end of epochs only
    keep_checkpoints: int = 2
    device: str = "auto"
    precision: str = "auto"                 # the networks' forward: bf16 autocast or fp32; auto: bf16 on CUDA only

    def __post_init__(self):
        self.validate()

    # --- derived values -------------------------------------------------------------------------
    @property
    def uses_generator(self) -> bool:
        return self.method != "simclr"

    @property
    def hard_pairs(self) -> bool:
        return self.method in ("synthcl", "synthcl-no-hard-samples")

    @property
    def resolved_image_size(self) -> int:
        return self.image_size or DEFAULT_IMAGE_SIZE[self.dataset]

    def resolved_precision(self, device_type: str) -> str:
        """bf16 autocast where it is fast (CUDA tensor cores); fp32 on the CPU, whose convolutions it would slow
        down on most processors."""
        if self.precision != "auto":
            return self.precision
        return "bf16" if device_type == "cuda" else "fp32"

    @property
    def resolved_lambda_hard(self) -> float:
        if self.lambda_hard is not None:
            return self.lambda_hard
        return 0.1 if self.method in ("synthcl", "synthcl-no-hard-pairs") else 0.0

    @property
    def resolved_mu_pair(self) -> float:
        if self.mu_pair is not None:
            return self.mu_pair
        return 1.0 if self.hard_pairs else 0.0

    # --- checks ---------------------------------------------------------------------------------
    def validate(self) -> None:
        def fail(name, message):
            raise ConfigError(f"{option_name(name)} {message}")

        def choice(name, choices):
            if getattr(self, name) not in choices:
                fail(name, f"must be one of {', '.join(choices)}; got {getattr(self, name)!r}")

        def integer(name, low, allow_none=False):
            value = getattr(self, name)
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                fail(name, f"must be an integer >= {low}; got {value!r}")

        def number(name, low=-math.inf, high=math.inf, low_open=False, allow_none=False):
            value = getattr(self, name)
            if value is None and allow_none:
                return
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                  and (value > low if low_open else value >= low) and value <= high)
            if not ok:
                bound = f"{'>' if low_open else '>='} {low}" if high == math.inf else \
                    f"in {'(' if low_open else '['}{low}, {high}]"
                fail(name, f"must be a finite number {bound}; got {value!r}")

        choice("method", METHODS)
        choice("dataset", DATASETS)
        choice("pair_schedule", ("linear", "cosine"))
        choice("pair_target_mode", ("absolute", "relative"))
        choice("partner_update", ("ema", "controlled"))
        choice("pair_mode", ("two_sided", "floor"))
        choice("precision", ("auto", "fp32", "bf16"))
        if self.dataset not in EMBEDDED_DATASETS and not self.data_path:
            fail("data_path", f"is required for --dataset {self.dataset} (nothing is downloaded)")
        if self.dataset in EMBEDDED_DATASETS and self.data_path:
            fail("data_path", f"is not used by --dataset {self.dataset} (its images are made from what the "
                              f"installed packages ship)")
        integer("image_size", 8, allow_none=True)
        if self.image_size is not None and self.image_size % 4:
            fail("image_size", f"must be a multiple of 4 (the generator upsamples twice); got {self.image_size}")
        number("test_fraction", 0.0, 1.0, low_open=True)
        if self.test_fraction >= 1.0:
            fail("test_fraction", f"must be below 1; got {self.test_fraction}")
        number("train_fraction", 0.0, 1.0, low_open=True)
        for name in ("split_seed", "seed"):
            integer(name, 0)
        for name in ("epochs", "batch_size", "width", "projection_dim", "latent_dim", "gan_width",
                     "synthetic_batch_size", "eval_every", "knn_k", "sample_every", "keep_checkpoints"):
            integer(name, 1)
        integer("checkpoint_every", 0)
        integer("warmup_epochs", 0)
        integer("epoch_steps", 1, allow_none=True)
        if not isinstance(self.d_augment, bool):
            fail("d_augment", f"must be true or false; got {self.d_augment!r}")
        if self.batch_size < 2:
            fail("batch_size", f"must be at least 2 (a contrastive batch needs negatives); got {self.batch_size}")
        for name in ("lr", "lr_gan", "temperature"):
            number(name, 0.0, low_open=True)
        number("weight_decay", 0.0)
        number("ema_decay", 0.0, 1.0)
        number("lambda_hard", 0.0, allow_none=True)
        number("mu_pair", 0.0, allow_none=True)
        number("pair_target_start", -1.0, 1.0)
        number("pair_target_end", -1.0, 1.0)
        if self.method == "simclr":
            for name in ("lambda_hard", "mu_pair"):
                if getattr(self, name):
                    fail(name, "does not apply to --method simclr (it has no generator)")
        if self.method == "synthcl-no-hard-samples" and self.lambda_hard:
            fail("lambda_hard", "must be 0 for --method synthcl-no-hard-samples (that ablation has no hard samples)")
        if self.method == "synthcl-no-hard-pairs" and self.mu_pair:
            fail("mu_pair", "must be 0 for --method synthcl-no-hard-pairs (that ablation has no G_ema pairs)")
        if not isinstance(self.device, str) or not self.device:
            fail("device", f"must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got {self.device!r}")

    def for_method(self, method: str, **changes) -> "TrainConfig":
        """A copy for another method (and other changes); loss weights that do not apply to it revert to
        the method's default."""
        values = self.to_dict() | {"method": method} | changes
        if method in ("simclr", "synthcl-no-hard-samples"):
            values["lambda_hard"] = None
        if method in ("simclr", "synthcl-no-hard-pairs"):
            values["mu_pair"] = None
        return TrainConfig.from_dict(values)

    # --- (de)serialization ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config option(s): {', '.join(option_name(u) for u in unknown)}")
        return cls(**values)

    def save(self, path: Path) -> None:
        from .checkpoint import atomic_write_bytes

        atomic_write_bytes(Path(path), (json.dumps(self.to_dict(), indent=2) + "\n").encode())

    @classmethod
    def load(cls, path: Path) -> "TrainConfig":
        try:
            values = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except json.JSONDecodeError as error:
            raise ConfigError(f"config file {path} is not valid JSON: {error}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path} must hold a JSON object")
        return cls.from_dict(values)
