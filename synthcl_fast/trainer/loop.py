"""The training loop: the joint step of "Synthetic Data Can Also Teach", epochs, evaluation, checkpoints.

One step of `synthcl` after the GAN warm-up (N real images, M latent codes z):

    1. D learns real vs G(z):                    L_D = hinge(D(x[:M]), D(G(z)))
    2. one forward of the main model f over      2 views of each real image, and
                                                 4 views of each synthetic pair [G(z) v1, G(z) v2, G_ema(z) v1, G_ema(z) v2]
       (every view with augmentation parameters of its own; two kornia calls: G(z)'s views, and the rest)
    3. main model:   minimize L_PPCL = ppcl(real views, synthetic views)
       generator:    minimize L_G = adv(D(G(z))) - lambda * L_PPCL + mu * positive_pair(f(G(z)), f(G_ema(z)).detach(), s*(t))
       Both gradients come from the same forward (simultaneous min-max): L_PPCL is back-propagated into
       f's parameters only, L_G into G's parameters only.
    4. G_ema <- EMA of G.

First, `warmup_epochs` epochs train the GAN alone (step 1 and the adversarial part of 3), so that its
samples look like data before the main model learns from them. Then come `epochs` epochs of the joint
step. `simclr` is the main model's part alone (NT-Xent on the real views), for the same `epochs`: every
method gives the main model the same number of updates, on the same real batches in the same order.
Epochs are numbered from 1 for the main model's epochs; the GAN warm-up epochs are numbered 1 - W .. 0.

Every loss goes through synthcl_fast.losses with backend="auto" (the fastest kernels for the device).

Definitions that are ours, not the paper's (its equations are not public in a form we can read; DESIGN.md
section 1): the positive-pair loss and its target schedule s*(t) (`--pair-target-mode absolute`: the schedule;
`relative`: the schedule times the main model's current cosine of two views of a real image); the controlled
partner (`--partner-update controlled`: G_ema's EMA weight (1 - ema_decay) * sigmoid((s* - c) / 0.02), c the
step's pair cosine, so G_ema waits while the pair is easier than its target); G_ema set to G when the joint phase
starts; and the like-for-like hardness record (hardness_real / hardness_synthetic in metrics.csv).

Nothing inside a step waits for the device: the losses are checked for NaN/Inf on the device (guard.py: a
non-finite loss makes every later optimizer step a no-op there), the per-step metrics are summed there, and the
host reads them between steps (after every step on the CPU, where reading costs nothing; every
HOST_READ_EVERY steps on a GPU). On CUDA the networks run under bf16 autocast (`--precision`), in channels-last
memory, and batches come from pinned host memory with non-blocking copies.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import losses
from .augment import augment_views, make_augmentation, make_discriminator_augmentation
from .checkpoint import (atomic_write_bytes, latest_checkpoint, list_checkpoints, load_checkpoint, rng_state,
                         save_checkpoint, set_rng_state)
from .config import ConfigError, TrainConfig
from .data import load_data
from .distributed import DistContext, init_distributed
from .evaluate import evaluate
from .gan import Discriminator, Generator, discriminator_loss, generator_adversarial_loss, update_ema
from .guard import NonFiniteGuard
from .models import ContrastiveModel
from .plots import plot_curves, plot_sample_pairs

CHECKPOINT_FORMAT = 1
N_SAMPLE_PAIRS = 8
METRIC_KEYS = ("loss_contrastive", "loss_d", "loss_g_adv", "loss_pair", "pair_cosine", "pair_target")
# The mechanism (DESIGN.md section 1), accumulated on the device and read once per epoch (no per-step sync):
# the main model's PPCL loss averaged over the rows of real views and over the rows of synthetic views of the
# same forward (the method says G(z) rows are harder: higher loss); and the hardness compared like with like:
# NT-Xent over the real views and G(z)'s views together (one positive per row, the other view of its image; the
# same candidates for every row), averaged over real rows and over G(z) rows (G_ema(z)'s views left out).
DEVICE_METRIC_KEYS = ("loss_real_rows", "loss_synthetic_rows", "hardness_real", "hardness_synthetic")
# once per epoch for the methods with a generator: a pixel classifier (logistic regression on the labeled
# train split) applied to G(z) for fixed z: mean top-class probability, and exp(entropy) of the mean class
# distribution (how many classes the samples cover, 1..n_classes); the same classifier's confidence on real
# test images is the reference level of a generator that makes digits.
QUALITY_KEYS = ("sample_confidence", "sample_classes", "real_confidence")
# evaluate.py's primary metrics, at the evaluated epochs
EVAL_KEYS = ("probe_acc", "few_label_acc", "knn_acc")
CSV_COLUMNS = ("epoch", "step", "phase") + METRIC_KEYS + DEVICE_METRIC_KEYS + QUALITY_KEYS + EVAL_KEYS + ("seconds",)
N_QUALITY_SAMPLES = 256
# steps between the host's reads of the device (non-finite check, progress bar) on a GPU
HOST_READ_EVERY = 25
# partner_update "controlled": G_ema's EMA weight is (1 - ema_decay) * sigmoid((s* - cosine) / width): the full
# rate where the pair is harder than its target by a few widths, none where it is easier by as much
PARTNER_CONTROL_WIDTH = 0.02


class NonFiniteLossError(FloatingPointError):
    """A loss (or a weight) became NaN or Inf; training stopped before writing it anywhere."""


@dataclass
class RunResult:
    run_dir: Path
    history: list[dict]
    final: dict          # the last evaluated metrics: EVAL_KEYS
    seconds: float       # wall time of this process's training (not counting a resumed run's earlier part)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    elif device.type != "cpu":
        raise ConfigError(f"--device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got {name!r}")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Trains one run into `run_dir`. Use `Trainer.new(config, run_dir)` or `Trainer.resume(run_dir)`,
    then `fit()`."""

    def __init__(self, config: TrainConfig, run_dir: Path, *, progress: bool = True,
                 dist: DistContext | None = None, device: str | None = None):
        self.config, self.run_dir, self.progress = config, Path(run_dir), progress
        self.device = resolve_device(device or config.device, int(os.environ.get("LOCAL_RANK", "0")))
        self.dist = dist or init_distributed(self.device)
        self.data = load_data(config)
        world_batch = config.batch_size * self.dist.world_size
        # an epoch: one pass over the training images, or config.epoch_steps steps (the same for every fraction)
        self.steps_per_epoch = config.epoch_steps or self.data.pretrain_index.numel() // world_batch
        if self.steps_per_epoch == 0:
            raise ConfigError(f"--batch-size {config.batch_size} x {self.dist.world_size} processes is larger than "
                              f"the {self.data.pretrain_index.numel()} training images")
        self.warmup_epochs = config.warmup_epochs if config.uses_generator else 0
        self.n_epochs = self.warmup_epochs + config.epochs   # epochs of the loop, GAN warm-up included
        self.total_steps = self.n_epochs * self.steps_per_epoch
        self._build_models()
        if self.dist.rank > 0:  # identical initial weights, different augmentations and latent codes per process
            seed_everything(config.seed + 1_000_003 * self.dist.rank)
        # training position (self.epoch counts the loop's epochs from 0) and records; restored on resume
        self.epoch, self.batch, self.global_step = 0, 0, 0
        self.device_sums: dict[str, torch.Tensor] = {}  # METRIC_KEYS and DEVICE_METRIC_KEYS over this epoch's steps
        self.count = 0
        self._quality_probe = None  # (classifier, its confidence on real test images, fixed z), built on first use
        self.history: list[dict] = []
        self.snapshots: dict[int, torch.Tensor] = {}

    # --- construction ---------------------------------------------------------------------------
    def _build_models(self) -> None:
        cfg, channels, size = self.config, self.data.channels, self.config.resolved_image_size
        seed_everything(cfg.seed)
        self.model = ContrastiveModel(channels, cfg.width, cfg.projection_dim).to(self.device)
        # fused Adam: one kernel per step, and it reads the guard's flag on the device (found_inf)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                          fused=True)
        self.augment = make_augmentation(channels, size)
        # what D sees: the images themselves, or DiffAugment-style views of them (real and generated alike)
        self.d_view = make_discriminator_augmentation(channels) if cfg.d_augment else torch.nn.Identity()
        self.guard = NonFiniteGuard(self.device)
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16,
                                       enabled=cfg.resolved_precision(self.device.type) == "bf16")
        self.modules = {"model": self.model}
        self.optimizers = {"model": self.optimizer}
        if cfg.uses_generator:
            self.generator = Generator(cfg.latent_dim, channels, size, cfg.gan_width).to(self.device)
            self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False)
            self.discriminator = Discriminator(channels, size, cfg.gan_width).to(self.device)
            if self.device.type == "cuda":  # the encoder is channels-last everywhere (models.py)
                for module in (self.generator, self.generator_ema, self.discriminator):
                    module.to(memory_format=torch.channels_last)
            gan_adam = dict(lr=cfg.lr_gan, betas=(0.0, 0.9), fused=True)  # SN-GAN's Adam settings
            self.g_optimizer = torch.optim.Adam(self.generator.parameters(), **gan_adam)
            self.d_optimizer = torch.optim.Adam(self.discriminator.parameters(), **gan_adam)
            self.modules.update(generator=self.generator, generator_ema=self.generator_ema,
                                discriminator=self.discriminator)
            self.optimizers.update(generator=self.g_optimizer, discriminator=self.d_optimizer)
            warmup_steps = self.warmup_epochs * self.steps_per_epoch
            self.schedule = losses.SimilaritySchedule(cfg.pair_target_start, cfg.pair_target_end, self.total_steps,
                                                      warmup_steps, cfg.pair_schedule)
            # fixed latent codes for the G(z) | G_ema(z) picture (their own generator: no effect on training)
            self.sample_z = torch.randn(N_SAMPLE_PAIRS, cfg.latent_dim,
                                        generator=torch.Generator().manual_seed(cfg.seed + 12345)).to(self.device)
        self.guard.attach(*self.optimizers.values())
        for module in self.modules.values():
            self.dist.broadcast_parameters(module)

    @classmethod
    def new(cls, config: TrainConfig, run_dir: Path, **kwargs) -> "Trainer":
        run_dir = Path(run_dir)
        if (run_dir / "config.json").exists():
            raise FileExistsError(f"{run_dir} already holds a run; resume it with `synthcl-train resume {run_dir}` "
                                  f"or choose another --output-dir")
        trainer = cls(config, run_dir, **kwargs)
        if trainer.dist.is_main:
            config.save(run_dir / "config.json")
        return trainer

    @classmethod
    def resume(cls, run_dir: Path, checkpoint: Path | None = None, **kwargs) -> "Trainer":
        """Continue the run in `run_dir` from `checkpoint`, or from its newest intact checkpoint (a damaged
        newer one is reported and skipped), or from the start if none was written yet."""
        run_dir = Path(run_dir)
        if checkpoint is not None:
            state = load_checkpoint(checkpoint)
        elif list_checkpoints(run_dir / "checkpoints"):
            checkpoint, state = latest_checkpoint(run_dir / "checkpoints")
        else:
            if not (run_dir / "config.json").exists():
                raise FileNotFoundError(f"{run_dir} holds no run to resume (no config.json, no checkpoints)")
            return cls(TrainConfig.load(run_dir / "config.json"), run_dir, **kwargs)
        trainer = cls(TrainConfig.from_dict(state["config"]), run_dir, **kwargs)
        trainer.load_state(state)
        print(f"synthcl-train: resuming {run_dir} from {checkpoint} (epoch {trainer.epoch_number(trainer.epoch)}, "
              f"step {trainer.global_step})", file=sys.stderr)
        return trainer

    # --- checkpoint state -----------------------------------------------------------------------
    def _weights_fingerprint(self) -> float:
        return sum(float(t.double().sum()) for m in self.modules.values() for t in m.state_dict().values()
                   if t.is_floating_point())

    def state(self) -> dict:
        # every process's generators, for an exact resume; and a check that the processes still hold the
        # same weights (they must: identical start, averaged gradients, identical optimizer arithmetic)
        gathered = self.dist.gather_objects((rng_state(), self._weights_fingerprint()))
        rng, fingerprints = [g[0] for g in gathered], [g[1] for g in gathered]
        if len(set(fingerprints)) > 1:
            raise RuntimeError(f"the processes' weights diverged at step {self.global_step} (fingerprints "
                               f"{fingerprints}); data-parallel training is broken")
        return {
            "format": CHECKPOINT_FORMAT, "config": self.config.to_dict(), "world_size": self.dist.world_size,
            "epoch": self.epoch, "batch": self.batch, "global_step": self.global_step, "count": self.count,
            "device_sums": {k: v.double().cpu() for k, v in self.device_sums.items()}, "history": list(self.history),
            "snapshots": dict(self.snapshots),
            "modules": {name: module.state_dict() for name, module in self.modules.items()},
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "rng": rng,
        }

    def load_state(self, state: dict) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ConfigError(f"checkpoint format {state.get('format')} is not supported (expected "
                              f"{CHECKPOINT_FORMAT})")
        if state["world_size"] != self.dist.world_size:
            raise ConfigError(f"this run was trained with {state['world_size']} processes; resume it with as many "
                              f"(got {self.dist.world_size}) to reproduce it exactly")
        for name, module in self.modules.items():
            module.load_state_dict(state["modules"][name])
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        self.epoch, self.batch, self.global_step = state["epoch"], state["batch"], state["global_step"]
        self.count = state["count"]
        self.device_sums = {k: v.to(self.device) for k, v in state.get("device_sums", {}).items()}
        # checkpoints written before the per-step metrics were summed on the device kept them as floats
        self.device_sums |= {k: torch.tensor(v, dtype=torch.float64, device=self.device)
                             for k, v in state.get("sums", {}).items()}
        self.history, self.snapshots = list(state["history"]), dict(state["snapshots"])
        set_rng_state(state["rng"][self.dist.rank])

    def save_checkpoint(self) -> None:
        self._raise_if_nonfinite()
        self._check_weights_finite()
        state = self.state()
        if self.dist.is_main:
            save_checkpoint(self.run_dir / "checkpoints", state, self.global_step, self.config.keep_checkpoints)

    # --- the steps ------------------------------------------------------------------------------
    def epoch_number(self, epoch: int) -> int:
        """The displayed number of loop epoch `epoch`: 1.. for the main model's epochs, <= 0 for the warm-up."""
        return epoch - self.warmup_epochs + 1

    def phase(self, epoch: int) -> str:
        if not self.config.uses_generator:
            return "simclr"
        return "gan-warmup" if epoch < self.warmup_epochs else "joint"

    def _track(self, **values: torch.Tensor) -> dict[str, torch.Tensor]:
        """This step's losses, averaged over processes: checked for NaN/Inf on the device (NonFiniteGuard) and
        summed into the epoch's metrics, without a host read. Returns the averages (0-d device tensors)."""
        names = list(values)
        stacked = self.dist.mean(torch.stack([values[n].detach().float().reshape(()) for n in names]))
        self.guard.check(self.global_step + 1, tuple(names), stacked)
        averaged = dict(zip(names, stacked.unbind()))
        self._accumulate_on_device(**averaged)
        return averaged

    def _raise_if_nonfinite(self) -> None:
        """NonFiniteLossError naming the first step whose loss was NaN or Inf (a host read of the guard)."""
        found = self.guard.first_nonfinite()
        if found is None:
            return
        step, name, value = found
        epoch, batch = divmod(step - 1, self.steps_per_epoch)
        raise NonFiniteLossError(
            f"non-finite loss at step {step} (epoch {self.epoch_number(epoch)}, batch {batch + 1}): "
            f"{name} = {value}. Training stopped before any non-finite value reached the weights; the last "
            f"checkpoint in {self.run_dir / 'checkpoints'} holds the state before this step.")

    def _check_weights_finite(self) -> None:
        for name, module in self.modules.items():
            for param_name, tensor in module.state_dict().items():
                if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    raise NonFiniteLossError(f"non-finite weight {name}.{param_name} after step {self.global_step}; "
                                             f"not writing a checkpoint")

    def _backward(self, loss: torch.Tensor, module: torch.nn.Module, retain_graph: bool = False) -> None:
        """Gradients of `loss` for `module`'s parameters only (replacing old ones), averaged over processes."""
        params = [p for p in module.parameters() if p.requires_grad]
        for p in params:
            p.grad = None
        loss.backward(inputs=params, retain_graph=retain_graph)
        self.dist.average_gradients(params)

    def train_step(self, real: torch.Tensor) -> None:
        """One step on the batch `real` (N, C, S, S) of this process. Reads nothing on the host."""
        phase = self.phase(self.epoch)
        if phase == "simclr":
            with self.autocast:
                real_views, _ = augment_views(self.augment, real)
                real_emb = self.model(real_views.flatten(0, 1)).unflatten(0, (2, real.shape[0]))
                loss = losses.nt_xent(real_emb[0], real_emb[1], temperature=self.config.temperature)
            self._track(loss_contrastive=loss)
            self._backward(loss, self.model)
            self.optimizer.step()
            return
        cfg = self.config
        z = torch.randn(cfg.synthetic_batch_size, cfg.latent_dim, device=self.device)
        n_real, n_fake = real.shape[0], z.shape[0]
        with self.autocast:
            fake = self.generator(z)  # one forward for both players: the D step does not change G
            # 1. the discriminator: M real images vs the M samples G(z), in one forward (D has no batch statistics)
            scores = self.discriminator(self.d_view(torch.cat([real[:n_fake], fake.detach()])))
            loss_d = discriminator_loss(scores[:n_fake], scores[n_fake:])
        self._track(loss_d=loss_d)
        self._backward(loss_d, self.discriminator)
        self.d_optimizer.step()
        with self.autocast:
            loss_g_adv = generator_adversarial_loss(self.discriminator(self.d_view(fake)))
        if phase == "gan-warmup":  # the GAN alone
            self._track(loss_g_adv=loss_g_adv)
            self._backward(loss_g_adv, self.generator)
            self.g_optimizer.step()
            self._update_ema()
            return
        # 2. one forward of the main model over real and synthetic views
        if cfg.hard_pairs and self.global_step == self.warmup_epochs * self.steps_per_epoch:
            # the partner starts the joint phase as G after the warm-up (not as G's random initialization, where
            # a slow average would leave it); from here the gap between the two accumulates
            self.generator_ema.load_state_dict(self.generator.state_dict())
        with self.autocast:
            if cfg.hard_pairs:
                with torch.no_grad():
                    partner = self.generator_ema(z)
                real_views, synthetic_views = augment_views(self.augment, real, fake, partner)
            else:  # ablation: 4 independent views of G(z) (same batch size, no G_ema partner)
                real_views, synthetic_views = augment_views(self.augment, real, fake)
            emb = self.model(torch.cat([real_views.flatten(0, 1), synthetic_views.flatten(0, 1)]))
            real_emb = emb[:2 * n_real].unflatten(0, (2, n_real))
            synthetic_emb = emb[2 * n_real:].unflatten(0, (4, n_fake))
            # per-row losses (rows in ppcl_labels' order: 2N real views, then 4M synthetic views), whose mean is
            # ppcl's reduction="mean" (every row has a positive); the two group means are the hardness record
            row_loss = losses.ppcl(real_emb, synthetic_emb, temperature=cfg.temperature, reduction="none")
            loss = row_loss.mean()
        with torch.no_grad():
            first, second = torch.cat([real_emb[0], synthetic_emb[0]]), torch.cat([real_emb[1], synthetic_emb[1]])
            single = losses.nt_xent(first, second, temperature=cfg.temperature, reduction="none").unflatten(0, (2, -1))
            self._accumulate_on_device(loss_real_rows=row_loss[:2 * n_real].mean(),
                                       loss_synthetic_rows=row_loss[2 * n_real:].mean(),
                                       hardness_real=single[:, :n_real].mean(),
                                       hardness_synthetic=single[:, n_real:].mean())
        # 3. the generator's objective: realistic, hard for the main model, paired with G_ema at similarity s*
        loss_g = loss_g_adv - cfg.resolved_lambda_hard * loss
        tracked = {"loss_contrastive": loss, "loss_g_adv": loss_g_adv}
        if cfg.hard_pairs:
            target = torch.full((), self.schedule(self.global_step), device=self.device)
            if cfg.pair_target_mode == "relative":  # as hard as the main model now finds real positives, times s(t)
                with torch.no_grad():
                    target = target * F.cosine_similarity(real_emb[0].float(), real_emb[1].float(), dim=1).mean()
            a, b = synthetic_emb[:2].flatten(0, 1), synthetic_emb[2:].flatten(0, 1).detach()
            loss_pair = losses.positive_pair_loss(a, b, target, mode=cfg.pair_mode)
            loss_g = loss_g + cfg.resolved_mu_pair * loss_pair
            tracked.update(loss_pair=loss_pair,
                           pair_cosine=F.cosine_similarity(a.detach().float(), b.float(), dim=1).mean(),
                           pair_target=target)
        tracked = self._track(**tracked)
        self._backward(loss, self.model, retain_graph=True)  # both gradients before either update:
        self._backward(loss_g, self.generator)                # loss_g's graph runs through the main model
        self.optimizer.step()
        self.g_optimizer.step()
        # 4. the moving-average generator: at its rate, or (controlled) only as fast as the pair's hardness needs
        rate = None
        if cfg.hard_pairs and cfg.partner_update == "controlled":  # the same in every process (averaged values)
            rate = torch.sigmoid((tracked["pair_target"] - tracked["pair_cosine"]) / PARTNER_CONTROL_WIDTH)
        self._update_ema(rate)

    def _update_ema(self, rate: torch.Tensor | None = None) -> None:
        """G_ema <- EMA of G, its weight 1 - ema_decay times `rate` (in [0, 1], on the device); no move once the
        guard has tripped (G then no longer changes either)."""
        weight = (1.0 - self.config.ema_decay) * (1 - self.guard.tripped)
        update_ema(self.generator_ema, self.generator, weight if rate is None else weight * rate)

    def _accumulate_on_device(self, **values: torch.Tensor) -> None:
        for key, value in values.items():
            value = value.detach().double()
            self.device_sums[key] = self.device_sums[key] + value if key in self.device_sums else value

    def _device_means(self) -> dict[str, float | None]:
        """This epoch's means of METRIC_KEYS and DEVICE_METRIC_KEYS (None: not recorded by this method), averaged
        over processes: one host read. Called by every process (a collective)."""
        means = {key: None for key in METRIC_KEYS + DEVICE_METRIC_KEYS}
        if not self.device_sums or not self.count:
            return means
        sums = dict(self.device_sums)
        per_process = [k for k in sums if k in DEVICE_METRIC_KEYS]  # _track averaged the others every step
        if per_process:
            averaged = self.dist.mean(torch.stack([sums[k] for k in per_process]).float()).double()
            sums.update(zip(per_process, averaged.unbind()))
        return means | dict(zip(sums, (torch.stack(list(sums.values())) / self.count).tolist()))

    def _load_batch(self, indices: torch.Tensor) -> torch.Tensor:
        """The training images at `indices`, on the device: on CUDA gathered into pinned host memory (torch's caching
        host allocator keeps the block until the copy is done) and copied without blocking the host."""
        images = self.data.train_images[indices]
        if self.device.type == "cuda":
            return images.pin_memory().to(self.device, non_blocking=True)
        return images.to(self.device)

    def _sample_quality(self) -> dict[str, float | None]:
        """QUALITY_KEYS for the current G: a logistic regression on the pixels of the labeled train split
        (at most 5000 images), applied to G(z) for N_QUALITY_SAMPLES fixed latent codes. Noise scores a low
        confidence; a collapsed generator covers few classes; real test images give the reference."""
        if not self.config.uses_generator:
            return {key: None for key in QUALITY_KEYS}
        from sklearn.linear_model import LogisticRegression

        if self._quality_probe is None:
            images, labels = self.data.train_images, self.data.train_labels
            keep = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))[:5000]
            pixels = images[keep].flatten(1).double().numpy()
            classifier = LogisticRegression(max_iter=1000, C=0.1).fit(pixels, labels[keep].numpy())
            real = classifier.predict_proba(self.data.test_images.flatten(1).double().numpy())
            z = torch.randn(N_QUALITY_SAMPLES, self.config.latent_dim,
                            generator=torch.Generator().manual_seed(self.config.seed + 54321)).to(self.device)
            self._quality_probe = (classifier, float(real.max(1).mean()), z)
        classifier, real_confidence, z = self._quality_probe
        with torch.no_grad():
            fake = self.generator(z).flatten(1).double().cpu().numpy()
        proba = classifier.predict_proba(fake)
        marginal = proba.mean(0)
        entropy = -(marginal * np.log(np.clip(marginal, 1e-12, None))).sum()
        return {"sample_confidence": float(proba.max(1).mean()), "sample_classes": float(np.exp(entropy)),
                "real_confidence": real_confidence}

    # --- epochs ---------------------------------------------------------------------------------
    def _epoch_batches(self, epoch: int) -> torch.Tensor:
        """(steps_per_epoch, batch_size) indices of this process's images: a fixed function of the seed and the
        epoch's number, so that every method sees the same batches in its main-model epochs."""
        number = self.epoch_number(epoch)
        key = np.random.SeedSequence([self.config.seed, abs(number), int(number <= 0)]).generate_state(1)[0]
        generator = torch.Generator().manual_seed(int(key))
        world_batch = self.config.batch_size * self.dist.world_size
        n = self.data.pretrain_index.numel()
        passes = -(-self.steps_per_epoch * world_batch // n)  # more than one where --epoch-steps asks for it
        order = torch.cat([self.data.pretrain_index[torch.randperm(n, generator=generator)] for _ in range(passes)])
        order = order[:self.steps_per_epoch * world_batch].view(self.steps_per_epoch, self.dist.world_size, -1)
        return order[:, self.dist.rank]

    def fit(self) -> RunResult:
        cfg, start = self.config, time.perf_counter()
        while self.epoch < self.n_epochs:
            epoch_start = time.perf_counter()
            batches = self._epoch_batches(self.epoch)
            number = self.epoch_number(self.epoch)
            where = f"epoch {number}/{cfg.epochs}" if number > 0 else \
                f"GAN warm-up {number + self.warmup_epochs}/{self.warmup_epochs}"
            bar = tqdm(total=self.steps_per_epoch, initial=self.batch, leave=False, dynamic_ncols=True,
                       desc=f"{cfg.method} seed {cfg.seed} {where}", disable=not (self.progress and self.dist.is_main))
            while self.batch < self.steps_per_epoch:
                self.train_step(self._load_batch(batches[self.batch]))
                self.dist.average_buffers(self.model)
                self.count += 1
                self.batch += 1
                self.global_step += 1
                bar.update(1)
                if self.device.type == "cpu" or self.global_step % HOST_READ_EVERY == 0:
                    self._raise_if_nonfinite()
                    if not bar.disable:  # the losses' running means (already averaged over processes)
                        shown = [k for k in METRIC_KEYS if k in self.device_sums]
                        values = (torch.stack([self.device_sums[k] for k in shown]) / self.count).tolist()
                        bar.set_postfix({k.removeprefix("loss_"): f"{v:.3f}" for k, v in zip(shown, values)},
                                        refresh=False)
                if (cfg.checkpoint_every and self.global_step % cfg.checkpoint_every == 0
                        and self.batch < self.steps_per_epoch):
                    self.save_checkpoint()
            bar.close()
            self._end_epoch(time.perf_counter() - epoch_start)
        final = next((row for row in reversed(self.history) if row.get("probe_acc") is not None), {})
        result = RunResult(self.run_dir, self.history,
                           {k: final.get(k) for k in EVAL_KEYS}, time.perf_counter() - start)
        if self.dist.is_main:
            summary = {"method": cfg.method, "seed": cfg.seed, "train_fraction": cfg.train_fraction,
                       "epochs": cfg.epochs, **result.final, "train_seconds_this_process": result.seconds}
            atomic_write_bytes(self.run_dir / "result.json", (json.dumps(summary, indent=2) + "\n").encode())
        return result

    def _end_epoch(self, seconds: float) -> None:
        cfg, number = self.config, self.epoch_number(self.epoch)
        last = number == cfg.epochs
        self._raise_if_nonfinite()
        row = {"epoch": number, "step": self.global_step, "phase": self.phase(self.epoch)}
        row.update(self._device_means())
        if self.dist.is_main:
            row.update(self._sample_quality())
        else:
            row.update({key: None for key in QUALITY_KEYS})
        row.update(dict.fromkeys(EVAL_KEYS), seconds=seconds)
        if number > 0 and (number % cfg.eval_every == 0 or last):
            if self.dist.is_main:
                row.update(evaluate(self.model, self.data, self.device, cfg.knn_k))
            self.dist.barrier()
        if cfg.uses_generator and (number % cfg.sample_every == 0 or last):  # number 0: the end of the warm-up
            with torch.no_grad():
                pairs = torch.stack([self.generator(self.sample_z), self.generator_ema(self.sample_z)], dim=1)
            self.snapshots[number] = (pairs * 255).round().to(torch.uint8).cpu()
        self.history.append(row)
        self.epoch, self.batch, self.count, self.device_sums = self.epoch + 1, 0, 0, {}
        self.save_checkpoint()
        if self.dist.is_main:
            self._write_metrics()
            if row["probe_acc"] is not None or last:  # figures are slow to draw: only when there is news
                self._write_figures()

    def _write_metrics(self) -> None:
        """metrics.csv / metrics.json, rewritten from the history (so a resumed run's files hold exactly the
        uninterrupted run's rows)."""
        atomic_write_bytes(self.run_dir / "metrics.json", (json.dumps(self.history, indent=2) + "\n").encode())
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows({k: ("" if row[k] is None else row[k]) for k in CSV_COLUMNS} for row in self.history)
        atomic_write_bytes(self.run_dir / "metrics.csv", text.getvalue().encode())

    def _write_figures(self) -> None:
        cfg = self.config
        plot_curves(self.history, self.run_dir / "curves.png", f"{cfg.method}, seed {cfg.seed}, {cfg.dataset}")
        if self.snapshots:
            plot_sample_pairs({e: s.float() / 255 for e, s in self.snapshots.items()}, self.run_dir / "samples.png")


def train(config: TrainConfig, run_dir: Path, **kwargs) -> RunResult:
    """Train a new run of `config` into `run_dir` (which must not hold a run yet)."""
    return Trainer.new(config, run_dir, **kwargs).fit()
