"""Training learns: after a short run on digits, the linear probe and kNN on the learned encoder beat the
same evaluation of the same encoder at its random initialization by margins that a broken loss or a
detached gradient does not reach.

Digits at their native 8x8 pixels, 4 epochs, an 8-wide encoder. Measured gaps (trained - random, probe /
kNN accuracy) when this test was written, on the 2-core CPU machine:
    simclr 0.63 -> 0.84 / 0.54 -> 0.76: +0.20 / +0.22;   synthcl: +0.22 / +0.27
    encoder output detached from the loss (head and batch-norm statistics still learn): simclr +0.01 / +0.13,
        synthcl +0.02 / +0.12
    positives misaligned (the second real view rolled by one row): simclr +0.09 / +0.11, synthcl +0.03 / +0.09
The margins sit between the broken runs' largest gaps and the working runs' smallest."""

import pytest
import torch

pytest.importorskip("kornia")
pytest.importorskip("sklearn")

from synthcl_fast.trainer import TrainConfig, Trainer  # noqa: E402
from synthcl_fast.trainer.evaluate import evaluate  # noqa: E402

PROBE_MARGIN, KNN_MARGIN = 0.15, 0.18


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("method", ["simclr", "synthcl"])
def test_short_run_beats_the_random_encoder(tmp_path, method):
    # 8x8 digits, all 1347 training images in batches of 64 (21 steps per epoch), 4 epochs; synthcl with a
    # small GAN, no warm-up (the joint step, PPCL and both players' gradients from the first step)
    config = TrainConfig(method=method, epochs=4, batch_size=64, width=8, projection_dim=32, warmup_epochs=0,
                         image_size=8,
                         latent_dim=16, gan_width=4, synthetic_batch_size=8, eval_every=4, sample_every=4,
                         keep_checkpoints=1, seed=0, device="cpu")
    trainer = Trainer.new(config, tmp_path, progress=False)
    random_init = evaluate(trainer.model, trainer.data, trainer.device, config.knn_k)
    learned = trainer.fit().final
    assert learned["probe_acc"] >= random_init["probe_acc"] + PROBE_MARGIN, (learned, random_init)
    assert learned["knn_acc"] >= random_init["knn_acc"] + KNN_MARGIN, (learned, random_init)
