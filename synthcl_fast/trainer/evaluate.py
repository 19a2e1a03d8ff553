"""Evaluation of frozen encoder features, the same for every method and for the baselines (scikit-learn).

Protocol (`evaluate`):
1. Batch-norm statistics re-estimated on the real training images. A copy of the encoder gets its running
   means and variances recomputed (an equal-weight average over one pass of the un-augmented labeled train
   split, torch's swa_utils.update_bn) before its features are taken; the trained model, its weights and the
   running statistics saved in its checkpoints are untouched. Without this a method's evaluation would use
   statistics of whatever its training batches held (half synthetic views for synthcl, augmented views for
   every method, the initial mean 0 / variance 1 for an untrained encoder). Un-augmented images, because the
   features are taken on un-augmented images: the statistics then describe exactly the inputs they normalize.
2. Features of the un-augmented train and test splits, in eval mode.
3. Primary metrics, all on the test split:
     probe_acc        a linear probe (logistic regression on standardized features) trained on every label
     few_label_acc    the same probe trained on FEW_LABELS labels per class, the mean over FEW_LABEL_DRAWS draws
                      of the labeled images (the draws are fixed by a seed of their own, so every method and
                      training seed is probed on the same draws)
     knn_acc          k-nearest-neighbour vote (cosine) over every labeled training image

Baselines measured by the same code (`baseline_results`): the raw pixels (the flattened images stand in for
the features: no training can make a representation that is *worse* than this and still call it learned), and
the randomly initialized encoder (the encoder a run of that seed starts from, batch-norm statistics re-estimated
like everyone's).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

FEW_LABELS = 10           # labels per class of the few-label probe
FEW_LABEL_DRAWS = 20      # draws of those labels; the accuracy is their mean
FEW_LABEL_SEED = 1234     # the draws' seed: the same labeled images for every method, seed and baseline
BASELINES = ("raw-pixels", "random-encoder")


class _Features(torch.nn.Module):
    """`model.features` as a module's forward, for update_bn."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        return self.model.features(images)


@torch.no_grad()
def reestimate_batch_norm(model, images: torch.Tensor, device: torch.device, batch_size: int = 256):
    """A copy of `model` whose batch-norm running statistics are recomputed on `images` (un-augmented), as the
    equal-weight average of the batch statistics of one pass (`model` itself is not changed)."""
    from torch.optim.swa_utils import update_bn

    model_copy = copy.deepcopy(model)
    batches = (images[i:i + batch_size] for i in range(0, images.shape[0], batch_size))
    update_bn(batches, _Features(model_copy), device=device)
    return model_copy.eval()


@torch.no_grad()
def extract_features(model, images: torch.Tensor, device: torch.device, batch_size: int = 512) -> np.ndarray:
    """Encoder features (N, F) in eval mode (batch-norm running statistics), as float64 numpy."""
    was_training = model.training
    model.eval()
    try:
        chunks = [model.features(images[i:i + batch_size].to(device)).double().cpu()
                  for i in range(0, images.shape[0], batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(chunks).numpy()


def linear_probe_accuracy(train_x, train_y, test_x, test_y, seed: int = 0) -> float:
    """Multinomial logistic regression on standardized features (the linear evaluation protocol)."""
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    probe.fit(train_x, train_y)
    return float(probe.score(test_x, test_y))


def few_label_draws(train_y, per_class: int = FEW_LABELS, draws: int = FEW_LABEL_DRAWS,
                    seed: int = FEW_LABEL_SEED) -> list[np.ndarray]:
    """`draws` index arrays into the training labels, each with `per_class` images of every class (drawn
    without replacement within a draw; a fixed function of the labels and the seed)."""
    train_y = np.asarray(train_y)
    rng = np.random.RandomState(seed)
    classes = np.unique(train_y)
    counts = {c: int((train_y == c).sum()) for c in classes}
    short = {int(c): n for c, n in counts.items() if n < per_class}
    if short:
        raise ValueError(f"the few-label probe needs {per_class} training images per class; classes {short} "
                         f"have fewer")
    return [np.sort(np.concatenate([rng.choice(np.flatnonzero(train_y == c), per_class, replace=False)
                                    for c in classes])) for _ in range(draws)]


def few_label_accuracy(train_x, train_y, test_x, test_y, per_class: int = FEW_LABELS,
                       draws: int = FEW_LABEL_DRAWS, seed: int = FEW_LABEL_SEED) -> float | None:
    """The linear probe trained on `per_class` labeled images per class, mean test accuracy over `draws`
    draws of those images; None where a class has fewer than `per_class` training images (a small folder)."""
    train_y = np.asarray(train_y)
    if np.unique(train_y, return_counts=True)[1].min() < per_class:
        return None
    scores = [linear_probe_accuracy(train_x[index], train_y[index], test_x, test_y)
              for index in few_label_draws(train_y, per_class, draws, seed)]
    return float(np.mean(scores))


def knn_accuracy(train_x, train_y, test_x, test_y, k: int) -> float:
    """Majority vote of the k nearest training features by cosine similarity."""
    knn = KNeighborsClassifier(n_neighbors=min(k, len(train_y)), metric="cosine")
    knn.fit(train_x, train_y)
    return float(knn.score(test_x, test_y))


def feature_metrics(train_x, train_y, test_x, test_y, knn_k: int) -> dict[str, float]:
    """The primary metrics of one set of features: probe_acc, few_label_acc, knn_acc."""
    return {"probe_acc": linear_probe_accuracy(train_x, train_y, test_x, test_y),
            "few_label_acc": few_label_accuracy(train_x, train_y, test_x, test_y),
            "knn_acc": knn_accuracy(train_x, train_y, test_x, test_y, knn_k)}


def evaluate(model, data, device: torch.device, knn_k: int, reestimate_bn: bool = True) -> dict[str, float]:
    """{'probe_acc', 'few_label_acc', 'knn_acc'} of `model`'s encoder features on `data` (an ImageData),
    with batch-norm statistics re-estimated on the real training images (on a copy of the model)."""
    if reestimate_bn:
        model = reestimate_batch_norm(model, data.train_images, device)
    train_x = extract_features(model, data.train_images, device)
    test_x = extract_features(model, data.test_images, device)
    return feature_metrics(train_x, data.train_labels.numpy(), test_x, data.test_labels.numpy(), knn_k)


def raw_pixel_metrics(data, knn_k: int) -> dict[str, float]:
    """The primary metrics with the flattened pixels as the features."""
    return feature_metrics(data.train_images.flatten(1).double().numpy(), data.train_labels.numpy(),
                           data.test_images.flatten(1).double().numpy(), data.test_labels.numpy(), knn_k)


def random_encoder(config, channels: int):
    """The main model a run of `config` starts from: built right after torch.manual_seed(config.seed), as the
    trainer builds it (the global random state is restored afterwards)."""
    from .models import ContrastiveModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return ContrastiveModel(channels, config.width, config.projection_dim)


def baseline_results(config, data=None, device: torch.device | str = "cpu") -> dict[str, dict[str, float]]:
    """{'raw-pixels': metrics, 'random-encoder': metrics} for `config`'s data and seed, by `evaluate`'s code."""
    from .data import load_data

    data = data if data is not None else load_data(config)
    device = torch.device(device)
    model = random_encoder(config, data.channels).to(device)
    return {"raw-pixels": raw_pixel_metrics(data, config.knn_k),
            "random-encoder": evaluate(model, data, device, config.knn_k)}
