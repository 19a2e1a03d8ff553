"""The trainer on tiny inputs (CPU, seconds each): every method runs and writes its outputs, the joint
step sends each gradient where it belongs, runs resume exactly (also after a SIGKILL mid-epoch), damaged
checkpoints are detected, NaN losses stop training, and bad options or data paths fail clearly."""

import copy
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("kornia")
pytest.importorskip("sklearn")

from synthcl_fast.trainer import (METHODS, CheckpointError, ConfigError, NonFiniteLossError, TrainConfig,  # noqa: E402
                                  Trainer, load_checkpoint, train)
from synthcl_fast.trainer import loop  # noqa: E402
from synthcl_fast.trainer.checkpoint import list_checkpoints  # noqa: E402
from synthcl_fast.trainer.augment import augment_views, make_augmentation  # noqa: E402
from synthcl_fast.trainer.cli import main  # noqa: E402
from synthcl_fast.trainer.data import load_data  # noqa: E402
from conftest import FailOnHostSync  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(method="synthcl", **changes) -> TrainConfig:
    """8x8 digits, 135 training images in batches of 16 (8 steps per epoch), tiny networks."""
    values = dict(method=method, image_size=8, train_fraction=0.1, batch_size=16, epochs=2, warmup_epochs=1,
                  width=4, projection_dim=8, latent_dim=8, gan_width=4, synthetic_batch_size=4, eval_every=1,
                  sample_every=1, knn_k=3, device="cpu")
    return TrainConfig(**(values | changes))


def metrics_without_time(run_dir: Path) -> list[dict]:
    rows = json.loads((run_dir / "metrics.json").read_text())
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def final_modules(run_dir: Path) -> dict:
    return load_checkpoint(list_checkpoints(run_dir / "checkpoints")[-1])["modules"]


def assert_same_modules(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), f"{name}.{key} differs"


# --- every method -----------------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_and_writes_its_outputs(tmp_path, method):
    config = tiny(method)
    result = train(config, tmp_path, progress=False)

    assert TrainConfig.load(tmp_path / "config.json") == config
    rows = json.loads((tmp_path / "metrics.json").read_text())
    csv_lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("epoch,step,phase,loss_contrastive") and len(csv_lines) == len(rows) + 1
    assert "loss_synthetic_rows" in csv_lines[0] and "sample_confidence" in csv_lines[0]
    warmup, rows = rows[:-2], rows[-2:]  # the GAN warm-up epochs are numbered <= 0, the main model's from 1
    assert [r["epoch"] for r in rows] == [1, 2] and [r["step"] for r in rows] == [8 * len(warmup) + 8,
                                                                                   8 * len(warmup) + 16]
    for row in rows:
        assert np.isfinite(row["loss_contrastive"]) and 0 <= row["probe_acc"] <= 1 and 0 <= row["knn_acc"] <= 1
    assert result.final == {k: rows[-1][k] for k in ("probe_acc", "few_label_acc", "knn_acc")}
    assert "few_label_acc" in csv_lines[0] and result.final["few_label_acc"] is not None
    assert json.loads((tmp_path / "result.json").read_text())["probe_acc"] == rows[-1]["probe_acc"]
    assert (tmp_path / "curves.png").read_bytes().startswith(PNG_MAGIC)
    assert len(list_checkpoints(tmp_path / "checkpoints")) == config.keep_checkpoints

    if method == "simclr":
        assert not warmup and [r["phase"] for r in rows] == ["simclr", "simclr"] and rows[-1]["loss_d"] is None
        assert all(r[k] is None for r in rows for k in loop.DEVICE_METRIC_KEYS + loop.QUALITY_KEYS)
        assert not (tmp_path / "samples.png").exists()
        return
    assert [r["epoch"] for r in warmup] == [0] and warmup[0]["phase"] == "gan-warmup"
    assert warmup[0]["loss_contrastive"] is None and warmup[0]["probe_acc"] is None  # the encoder waits
    assert np.isfinite(warmup[0]["loss_d"]) and np.isfinite(warmup[0]["loss_g_adv"])
    assert [r["phase"] for r in rows] == ["joint", "joint"]
    assert np.isfinite(rows[1]["loss_d"]) and np.isfinite(rows[1]["loss_g_adv"])
    assert (tmp_path / "samples.png").read_bytes().startswith(PNG_MAGIC)
    # the mechanism: PPCL per row group of the same forward (the epoch means recombine into the loss: 2N real
    # rows and 4M synthetic rows), and the pixel classifier on G(z) in every epoch, warm-up included
    n_real, n_fake = 2 * config.batch_size, 4 * config.synthetic_batch_size
    assert all(warmup[0][key] is None for key in loop.DEVICE_METRIC_KEYS)
    for row in rows:
        combined = (n_real * row["loss_real_rows"] + n_fake * row["loss_synthetic_rows"]) / (n_real + n_fake)
        assert combined == pytest.approx(row["loss_contrastive"], rel=1e-5)
        # like with like: one positive per row, the same candidates (2N + 2M rows): each loss >= 0 and
        # <= log(2N + 2M - 1), the uniform softmax's loss, plus the widest logit range 2 / t
        ceiling = np.log(n_real + n_fake // 2 - 1) + 2 / config.temperature
        assert 0 < row["hardness_real"] < ceiling and 0 < row["hardness_synthetic"] < ceiling
    for row in warmup + rows:
        assert 0.1 <= row["sample_confidence"] <= 1 and 1 <= row["sample_classes"] <= 10
        assert row["real_confidence"] == warmup[0]["real_confidence"] and 0.1 < row["real_confidence"] <= 1
    if config.hard_pairs:  # positive-pair similarity and its scheduled target, in the joint epochs only
        assert warmup[0]["pair_cosine"] is None
        assert -1 <= rows[1]["pair_cosine"] <= 1
        assert config.pair_target_end <= rows[1]["pair_target"] < rows[0]["pair_target"] <= config.pair_target_start
    else:
        assert rows[1]["pair_cosine"] is None and rows[1]["loss_pair"] is None


def test_joint_step_sends_each_gradient_to_its_player(tmp_path):
    """The encoder minimizes PPCL only: its gradient does not depend on lambda or mu. G maximizes PPCL
    (lambda) and follows the pair loss (mu): its gradient does. D gets no gradient from G's objective."""
    trainer = Trainer.new(tiny(), tmp_path, progress=False)
    real = trainer.data.train_images[:16]
    for _ in range(3):  # GAN warm-up steps, so that G and G_ema differ (identical pairs have a zero pair gradient)
        trainer.train_step(real)
    trainer.epoch = trainer.warmup_epochs  # the joint phase
    start_state, rng = copy.deepcopy(trainer.state()), torch.get_rng_state()

    def gradients_with(lambda_hard, mu_pair):
        trainer.load_state(copy.deepcopy(start_state))
        torch.set_rng_state(rng)
        trainer.config.lambda_hard, trainer.config.mu_pair = lambda_hard, mu_pair
        trainer.train_step(real)
        return {name: {k: p.grad.clone() for k, p in module.named_parameters()}
                for name, module in (("model", trainer.model), ("generator", trainer.generator),
                                     ("discriminator", trainer.discriminator))}

    base, no_hard, no_pair = gradients_with(0.1, 1.0), gradients_with(0.0, 1.0), gradients_with(0.1, 0.0)
    for other in (no_hard, no_pair):
        assert_same_modules({"model": base["model"]}, {"model": other["model"]})
        assert_same_modules({"d": base["discriminator"]}, {"d": other["discriminator"]})
        assert any(not torch.equal(base["generator"][k], other["generator"][k]) for k in base["generator"])
    assert all(g.abs().sum() > 0 for g in base["model"].values() if g.dim() > 1)


@pytest.mark.parametrize("channels", [1, 3])
def test_the_views_of_a_step_each_with_its_own_parameters(channels):
    """Two views per real image, four per synthetic pair, no two alike (the partner's views included: a pair of
    identical images still gets four different views); gradients reach the synthetic images through their views,
    and only those views record a backward."""
    augment = make_augmentation(channels, 8)
    real, fake = torch.rand(6, channels, 8, 8), torch.rand(3, channels, 8, 8, requires_grad=True)
    real_views, synthetic_views = augment_views(augment, real, fake, fake.detach().clone())
    assert real_views.shape == (2, 6, channels, 8, 8) and synthetic_views.shape == (4, 3, channels, 8, 8)
    assert not torch.allclose(real_views[0], real_views[1])
    assert all(not torch.allclose(synthetic_views[i], synthetic_views[j]) for i in range(4) for j in range(i + 1, 4))
    assert not real_views.requires_grad  # augmented without recording a backward
    partner_grad, = torch.autograd.grad(synthetic_views[2:].sum(), fake, retain_graph=True)
    assert not partner_grad.any()
    synthetic_views[:2].sum().backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    _, four = augment_views(augment, real, fake.detach())  # no partner (the ablation): four views of G(z)
    assert four.shape == (4, 3, channels, 8, 8)
    assert all(not torch.allclose(four[i], four[j]) for i in range(4) for j in range(i + 1, 4))


@pytest.mark.parametrize("method, phase, changes", [
    ("simclr", "simclr", {}), ("synthcl", "gan-warmup", {"d_augment": True}), ("synthcl-no-hard-pairs", "joint", {}),
    ("synthcl", "joint", {}), ("synthcl", "joint", {"pair_target_mode": "relative", "partner_update": "controlled"})])
def test_a_training_step_reads_nothing_on_the_host(tmp_path, method, phase, changes):
    """The same dispatch check as the ops' (tests/conftest.py FailOnHostSync): no .item(), float(), bool() of a
    tensor, no copy to the CPU, in any phase of a step; on a GPU nothing in the step waits for the device."""
    trainer = Trainer.new(tiny(method, **changes), tmp_path, progress=False)
    trainer.epoch = 0 if phase != "joint" else trainer.warmup_epochs
    assert trainer.phase(trainer.epoch) == phase
    real = trainer.data.train_images[:16]
    trainer.train_step(real)  # first-use work (the guard's name table) happens once, outside the check
    before = copy.deepcopy(trainer.model.state_dict())
    # what lives on the GPU in a GPU run: weights, optimizer states, the batch, the guard, the metric sums
    on_device = [real, *trainer.device_sums.values(), *vars(trainer.guard).values(),
                 *trainer.guard._name_index.values()]
    on_device += [t for module in trainer.modules.values() for t in module.state_dict(keep_vars=True).values()]
    on_device += [t for opt in trainer.optimizers.values() for state in opt.state.values() for t in state.values()]
    with FailOnHostSync([t for t in on_device if isinstance(t, torch.Tensor)]):
        trainer.train_step(real)
        trainer.train_step(real)
    assert trainer.guard.first_nonfinite() is None
    if phase != "gan-warmup":
        assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


def test_a_nonfinite_loss_freezes_every_weight_on_the_device(tmp_path, monkeypatch):
    """From the first non-finite loss on, no optimizer and no moving average changes a weight, before the host
    has looked: the steps between the host's reads (on a GPU) cannot spoil what was trained."""
    trainer = Trainer.new(tiny(), tmp_path, progress=False)
    real = trainer.data.train_images[:16]
    for _ in range(2):
        trainer.train_step(real)
    trainer.epoch = trainer.warmup_epochs  # the joint phase, from its first step (where G_ema starts as G)
    trainer.global_step = trainer.warmup_epochs * trainer.steps_per_epoch
    trainer.train_step(real)
    trainer.global_step += 1
    real_ppcl = loop.losses.ppcl
    monkeypatch.setattr(loop.losses, "ppcl", lambda *a, **k: real_ppcl(*a, **k) * float("nan"))
    def weights(name):  # parameters (batch-norm running statistics are no weights: every forward moves them)
        return {k: p.detach().clone() for k, p in trainer.modules[name].named_parameters()}

    frozen = {name: weights(name) for name in ("model", "generator", "generator_ema")}
    discriminator = weights("discriminator")
    trainer.train_step(real)  # step 10: D still learns (its loss is finite), then everything stops
    monkeypatch.setattr(loop.losses, "ppcl", real_ppcl)
    after_d_step = weights("discriminator")
    assert any(not torch.equal(discriminator[k], v) for k, v in after_d_step.items())
    trainer.global_step += 1
    trainer.train_step(real)  # finite again, but the guard has tripped: nothing moves
    assert_same_modules(frozen, {name: weights(name) for name in frozen})
    assert_same_modules({"discriminator": after_d_step}, {"discriminator": weights("discriminator")})
    step, name, value = trainer.guard.first_nonfinite()
    assert (step, name) == (10, "loss_contrastive") and np.isnan(value)


def test_step_budgets_are_the_same_for_every_fraction_and_d_sees_augmented_images(tmp_path):
    """--epoch-steps: every --train-fraction gets the same steps (passes over the smaller subset repeat, in a
    seeded order); --d-augment: D's inputs go through DiffAugment and G still gets D's gradient through it."""
    runs = {}
    for fraction in (0.1, 0.25):
        config = tiny(train_fraction=fraction, epoch_steps=12, d_augment=True)
        trainer = Trainer.new(config, tmp_path / f"f{fraction}", progress=False)
        batches = trainer._epoch_batches(0)
        assert batches.shape == (12, config.batch_size) and trainer.steps_per_epoch == 12
        assert set(batches.flatten().tolist()) <= set(trainer.data.pretrain_index.tolist())
        assert torch.equal(batches, trainer._epoch_batches(0)) and not torch.equal(batches, trainer._epoch_batches(1))
        runs[fraction] = trainer.fit()
    for result in runs.values():
        assert [row["step"] for row in result.history] == [12, 24, 36]
    assert runs[0.1].history[-1]["probe_acc"] is not None

    trainer = Trainer.new(tiny(d_augment=True), tmp_path / "grad", progress=False)
    fake = torch.rand(4, 1, 8, 8, requires_grad=True)
    views = trainer.d_view(fake)
    assert views.shape == fake.shape and not torch.allclose(views, fake)
    trainer.discriminator(views).sum().backward()
    assert fake.grad.abs().sum() > 0


@pytest.mark.parametrize("target, moves", [(-1.0, False), (1.0, True)])
def test_the_controlled_partner_waits_while_the_pair_is_easier_than_its_target(tmp_path, target, moves):
    """partner_update "controlled": G_ema follows G only while the pair (G(z), G_ema(z)) is harder than its target;
    and G_ema starts the joint phase as G after the warm-up."""
    config = tiny(partner_update="controlled", pair_target_start=target, pair_target_end=target)
    trainer = Trainer.new(config, tmp_path, progress=False)
    real = trainer.data.train_images[:16]
    for _ in range(trainer.warmup_epochs * trainer.steps_per_epoch):  # the GAN warm-up: G moves, G_ema lags
        trainer.train_step(real)
        trainer.global_step += 1
    trainer.epoch = trainer.warmup_epochs
    assert any(not torch.equal(p, q) for p, q in zip(trainer.generator.parameters(),
                                                      trainer.generator_ema.parameters()))
    generator_before = [p.detach().clone() for p in trainer.generator.parameters()]
    trainer.train_step(real)  # the first joint step: G_ema <- G (before G's update), then the controlled EMA
    partner = [p.detach().clone() for p in trainer.generator_ema.parameters()]
    moved = any(not torch.equal(p, q) for p, q in zip(partner, generator_before))
    assert moved == moves
    if not moves:
        trainer.global_step += 1
        trainer.train_step(real)
        assert all(torch.equal(p, q) for p, q in zip(partner, trainer.generator_ema.parameters()))


# --- resuming -----------------------------------------------------------------------------------------

KILL_SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    import torch
    torch.set_num_threads(int(sys.argv[1]))
    from synthcl_fast.trainer import TrainConfig, loop

    kill_at = int(sys.argv[3])
    original_step = loop.Trainer.train_step

    def train_step_then_die(self, real):
        if self.global_step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no final checkpoint: a real crash
        return original_step(self, real)

    loop.Trainer.train_step = train_step_then_die
    loop.train(TrainConfig.from_dict(json.loads(sys.argv[2])), sys.argv[4], progress=False)
""")


def test_resume_after_sigkill_mid_epoch_reproduces_the_uninterrupted_run(tmp_path):
    config = tiny(checkpoint_every=3)  # checkpoints at steps 3, 6, 8 (end of the GAN warm-up), 9, 12, ...
    train(config, tmp_path / "uninterrupted", progress=False)

    killed = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    process = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(torch.get_num_threads()), json.dumps(config.to_dict()), "11",
         str(killed)], env=env, capture_output=True, text=True, timeout=300)
    assert process.returncode == -signal.SIGKILL, process.stderr
    assert load_checkpoint(list_checkpoints(killed / "checkpoints")[-1])["global_step"] == 9  # mid epoch 1

    trainer = Trainer.resume(killed, progress=False)
    assert (trainer.epoch, trainer.batch, trainer.global_step) == (1, 1, 9)
    trainer.fit()
    assert metrics_without_time(killed) == metrics_without_time(tmp_path / "uninterrupted")
    assert_same_modules(final_modules(killed), final_modules(tmp_path / "uninterrupted"))


def test_damaged_checkpoints_are_detected_and_the_previous_one_resumes(tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny("synthcl-no-hard-samples"), run, progress=False)  # checkpoints after steps 16 and 24 are kept
    uninterrupted = metrics_without_time(run)
    previous, newest = list_checkpoints(run / "checkpoints")
    intact = newest.read_bytes()

    newest.write_bytes(intact[: len(intact) // 2])  # a crash of the storage, a full disk
    with pytest.raises(CheckpointError, match="ckpt-00000024.pt is truncated: its header announces"):
        load_checkpoint(newest)
    flipped = bytearray(intact)
    flipped[len(flipped) // 2] ^= 0x01  # one bit of rot
    newest.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="is corrupted: its SHA-256 checksum does not match"):
        load_checkpoint(newest)
    newest.write_bytes(b"PK\x03\x04 some other file")
    with pytest.raises(CheckpointError, match="is not a synthcl_fast checkpoint"):
        load_checkpoint(newest)
    newest.write_bytes(intact[:-1])
    # an explicitly named damaged checkpoint is an error, not a silent fallback
    with pytest.raises(CheckpointError, match="truncated"):
        Trainer.resume(run, newest, progress=False)

    # resuming the run folder reports the damaged checkpoint and continues from the previous one, exactly
    trainer = Trainer.resume(run, progress=False)
    assert "ckpt-00000024.pt is truncated" in capsys.readouterr().err
    assert (trainer.epoch, trainer.global_step) == (2, 16)
    trainer.fit()
    assert metrics_without_time(run) == uninterrupted
    assert load_checkpoint(newest)["global_step"] == 24 and previous.exists()


def test_nan_loss_stops_training_naming_the_step_and_never_writes_nan_weights(tmp_path, monkeypatch, capsys):
    real_nt_xent = loop.losses.nt_xent
    calls = []

    def nt_xent_nan_on_step_5(*args, **kwargs):
        calls.append(1)
        loss = real_nt_xent(*args, **kwargs)
        return loss * float("nan") if len(calls) == 5 else loss

    monkeypatch.setattr(loop.losses, "nt_xent", nt_xent_nan_on_step_5)
    with pytest.raises(NonFiniteLossError, match=r"step 5 \(epoch 1, batch 5\): loss_contrastive = nan"):
        train(tiny("simclr", checkpoint_every=2), tmp_path, progress=False)
    checkpoints = list_checkpoints(tmp_path / "checkpoints")
    assert [load_checkpoint(p)["global_step"] for p in checkpoints] == [2, 4]
    for path in checkpoints:
        for tensor in load_checkpoint(path)["modules"]["model"].values():
            assert torch.isfinite(tensor.float()).all()

    # a weight that went NaN is caught at the first loss it produces, after resuming from step 4
    monkeypatch.setattr(loop.losses, "nt_xent", real_nt_xent)
    trainer = Trainer.resume(tmp_path, progress=False)
    with torch.no_grad():
        next(trainer.model.head.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"step 5 .*loss_contrastive = nan"):
        trainer.fit()
    assert len(list_checkpoints(tmp_path / "checkpoints")) == 2

    # the command line reports it as one error line, exit status 1
    monkeypatch.setattr(loop.losses, "nt_xent", lambda *a, **k: real_nt_xent(*a, **k) * float("nan"))
    assert main(["resume", str(tmp_path), "--no-progress"]) == 1
    assert "error: non-finite loss at step 5" in capsys.readouterr().err


# --- bad input ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("changes, option", [
    (dict(batch_size=0), "--batch-size"),
    (dict(batch_size=1), "--batch-size"),
    (dict(method="moco"), "--method"),
    (dict(lambda_hard=-1.0), "--lambda-hard"),
    (dict(temperature=0.0), "--temperature"),
    (dict(lr=float("nan")), "--lr"),
    (dict(warmup_epochs=-1), "--warmup-epochs"),
    (dict(image_size=10), "--image-size"),
    (dict(train_fraction=1.5), "--train-fraction"),
    (dict(dataset="cifar10"), "--data-path"),
    (dict(method="simclr", mu_pair=1.0), "--mu-pair"),
    (dict(method="synthcl-no-hard-samples", lambda_hard=0.5), "--lambda-hard"),
    (dict(pair_target_start=1.5), "--pair-target-start"),
    (dict(epoch_steps=0), "--epoch-steps"),
    (dict(d_augment="yes"), "--d-augment"),
    (dict(precision="fp16"), "--precision"),
])
def test_bad_config_is_a_clear_error_naming_the_option(changes, option):
    with pytest.raises(ConfigError, match=option):
        tiny(**changes)


def test_bad_config_on_the_command_line(tmp_path, capsys):
    assert main(["train", "--batch-size", "0", "--output-dir", str(tmp_path / "a")]) == 2
    assert "--batch-size must be an integer >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: unknown choice
        main(["train", "--method", "moco"])
    assert "invalid choice: 'moco'" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text(json.dumps({"method": "simclr", "learning_rate": 1}))
    assert main(["train", "--config", str(tmp_path / "bad.json")]) == 2
    assert "unknown config option(s): --learning-rate" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--batch-size \\(512\\) is larger than the 135 training images"):
        load_data(tiny(batch_size=512))
    assert not (tmp_path / "a").exists()


def test_bad_dataset_path_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="--data-path .*nowhere does not exist"):
        load_data(tiny(dataset="cifar10", data_path=str(missing)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no CIFAR-10 python batches there .*data_batch_1"):
        load_data(tiny(dataset="cifar10", data_path=str(tmp_path / "empty")))
    with pytest.raises(FileNotFoundError, match="at least two class subfolders"):
        load_data(tiny(dataset="folder", data_path=str(tmp_path / "empty")))
    assert main(["train", "--dataset", "folder", "--data-path", str(missing), "--output-dir",
                 str(tmp_path / "run")]) == 1
    assert "--data-path" in capsys.readouterr().err


def test_cifar10_python_format_and_image_folder_load(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    cifar = tmp_path / "cifar-10-batches-py"
    cifar.mkdir()
    for name, n in [(f"data_batch_{i}", 12) for i in range(1, 6)] + [("test_batch", 10)]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(range(n))}
        with open(cifar / name, "wb") as f:
            pickle.dump(batch, f)
    data = load_data(tiny(dataset="cifar10", data_path=str(tmp_path), batch_size=4, image_size=16))
    assert data.train_images.shape == (60, 3, 16, 16) and data.test_images.shape == (10, 3, 16, 16)
    assert data.test_labels.tolist() == list(range(10)) and data.pretrain_index.numel() == 6
    assert 0 <= data.train_images.min() and data.train_images.max() <= 1

    for label in ("cat", "dog"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(
                tmp_path / "images" / label / f"{i}.png")
    data = load_data(tiny(dataset="folder", data_path=str(tmp_path / "images"), batch_size=2, train_fraction=1.0))
    assert data.train_images.shape == (12, 3, 8, 8) and data.test_images.shape == (4, 3, 8, 8)
    assert sorted(data.test_labels.tolist()) == [0, 0, 1, 1]


# --- the command line ---------------------------------------------------------------------------------

TINY_OPTIONS = ["--image-size", "8", "--train-fraction", "0.1", "--batch-size", "16", "--epochs", "2",
                "--warmup-epochs", "1", "--width", "4", "--projection-dim", "8", "--latent-dim", "8",
                "--gan-width", "4", "--synthetic-batch-size", "4", "--eval-every", "2", "--no-progress"]


def test_compare_trains_each_method_per_seed_and_tabulates(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", *TINY_OPTIONS, "--warmup-epochs", "0", "--seeds", "0", "1", "--output-dir", str(out)]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "| simclr | 100% | 2 |" in table and "| synthcl | 100% | 2 |" in table
    rows = json.loads((out / "compare.json").read_text())
    # the trained rows, then the baselines of the same evaluation code (no training): raw pixels, random encoder
    assert [(r["method"], r["train_fraction"], r["seeds"], r["baseline"]) for r in rows] == [
        ("simclr", 1.0, [0, 1], False), ("synthcl", 1.0, [0, 1], False),
        ("raw-pixels", 1.0, [0, 1], True), ("random-encoder", 1.0, [0, 1], True)]
    assert "| raw-pixels | none (vs simclr at 100%) | 2 |" in table and "| random-encoder | none" in table
    run = json.loads((out / "synthcl-frac1-seed1" / "result.json").read_text())
    assert rows[1]["probe_acc"][1] == run["probe_acc"] and run["seed"] == 1
    history = json.loads((out / "synthcl-frac1-seed1" / "metrics.json").read_text())
    assert rows[1]["few_label_acc"][1] == history[-1]["few_label_acc"] is not None
    assert rows[2]["probe_acc"][0] == rows[2]["probe_acc"][1]  # raw pixels: nothing depends on the seed
    baseline_files = sorted(p.name for p in (out / "baselines").glob("*.json"))
    assert baseline_files == ["random-encoder-seed0.json", "random-encoder-seed1.json", "raw-pixels.json"]
    mean = (rows[1]["probe_acc"][0] + rows[1]["probe_acc"][1]) / 2
    assert f"| synthcl | 100% | 2 | {100 * mean:.2f} [" in table
    # the probe, few-label and kNN differences of synthcl and of the two baselines to simclr
    assert table.count("includes 0") + table.count("excludes 0") == 9
    # a second call reuses the finished runs: same accuracies, no training (each run's checkpoint untouched), and
    # the table reports each run's recorded training time, not the ~0 s of reading its result
    (out / "compare.json").unlink()
    checkpoints = {p: p.stat().st_mtime_ns for p in out.glob("*/checkpoints/*")}
    baselines = {p: p.stat().st_mtime_ns for p in out.glob("baselines/*.json")}
    assert checkpoints
    assert main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("baselines/*.json")} == baselines  # read back, not redone
    again = json.loads((out / "compare.json").read_text())
    assert [r["probe_acc"] for r in again] == [r["probe_acc"] for r in rows]
    assert [r["few_label_acc"] for r in again] == [r["few_label_acc"] for r in rows]
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/checkpoints/*")} == checkpoints
    assert [r["seconds"] for r in again] == [r["seconds"] for r in rows]
    assert rows[1]["seconds"][1] == run["train_seconds_this_process"] > 0


def test_two_process_data_parallel_run_with_gloo(tmp_path):
    """torchrun, 2 CPU processes: each takes half of every global batch; the weights stay identical
    across processes (checked at every checkpoint, else the run fails) and rank 0 writes the outputs."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "synthcl_fast.trainer", "train", *TINY_OPTIONS, "--checkpoint-every", "1",
               "--output-dir", str(tmp_path)]
    process = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    rows = json.loads((tmp_path / "metrics.json").read_text())
    # 135 images // (16 per process x 2 processes) = 4 steps per epoch; one GAN warm-up epoch, then two
    assert [(r["epoch"], r["step"]) for r in rows] == [(0, 4), (1, 8), (2, 12)]
    assert 0 <= rows[-1]["probe_acc"] <= 1
    assert load_checkpoint(list_checkpoints(tmp_path / "checkpoints")[-1])["world_size"] == 2


def test_methods_with_one_seed_share_the_initial_encoder_and_the_data_order(tmp_path):
    simclr = Trainer(tiny("simclr"), tmp_path / "a", progress=False)
    synthcl = Trainer(tiny("synthcl"), tmp_path / "b", progress=False)
    assert_same_modules({"model": simclr.model.state_dict()}, {"model": synthcl.model.state_dict()})
    # the main model's first epoch: after the GAN warm-up for synthcl
    assert torch.equal(simclr._epoch_batches(0), synthcl._epoch_batches(synthcl.warmup_epochs))
    assert not torch.equal(simclr._epoch_batches(0), synthcl._epoch_batches(0))  # a warm-up epoch
    other_seed = Trainer(tiny("simclr", seed=1), tmp_path / "c", progress=False)
    assert not torch.equal(simclr._epoch_batches(0), other_seed._epoch_batches(0))
