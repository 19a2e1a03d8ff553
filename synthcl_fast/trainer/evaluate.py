"""Evaluation of frozen encoder features: a linear probe and k-nearest neighbours (scikit-learn).

Both train on the encoder features of the whole labeled train split (un-augmented images) and report
accuracy on the test split. The split is fixed by the config's split_seed, so every method and seed is
measured on the same images.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


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


def knn_accuracy(train_x, train_y, test_x, test_y, k: int) -> float:
    """Majority vote of the k nearest training features by cosine similarity."""
    knn = KNeighborsClassifier(n_neighbors=min(k, len(train_y)), metric="cosine")
    knn.fit(train_x, train_y)
    return float(knn.score(test_x, test_y))


def evaluate(model, data, device: torch.device, knn_k: int) -> dict[str, float]:
    """{'probe_acc', 'knn_acc'} of `model`'s encoder features on `data` (an ImageData)."""
    train_x = extract_features(model, data.train_images, device)
    test_x = extract_features(model, data.test_images, device)
    train_y, test_y = data.train_labels.numpy(), data.test_labels.numpy()
    return {"probe_acc": linear_probe_accuracy(train_x, train_y, test_x, test_y),
            "knn_acc": knn_accuracy(train_x, train_y, test_x, test_y, knn_k)}
