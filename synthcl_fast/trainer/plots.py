"""PNG figures of a run (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .checkpoint import atomic_write_bytes  # noqa: E402


def _save(figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    atomic_write_bytes(Path(path), buffer.getvalue())


def _series(history: list[dict], key: str):
    points = [(row["epoch"], row[key]) for row in history if row.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def plot_curves(history: list[dict], path: Path, title: str) -> None:
    """Losses, the mechanism (hardness of the synthetic rows, positive-pair similarity against its target,
    sample quality) and evaluation accuracy per epoch (the GAN warm-up epochs are numbered <= 0)."""
    figure, axes = plt.subplots(3, 2, figsize=(10, 10), layout="constrained")
    panels = [
        (axes[0, 0], "contrastive loss", [("loss_contrastive", "PPCL / NT-Xent")]),
        (axes[0, 1], "GAN losses", [("loss_d", "D (hinge)"), ("loss_g_adv", "G adversarial"),
                                    ("loss_pair", "positive pair")]),
        (axes[1, 0], "hardness: main model's loss per row", [("loss_synthetic_rows", "PPCL, G(z) / G_ema(z) rows"),
                                                              ("loss_real_rows", "PPCL, real rows"),
                                                              ("hardness_synthetic", "1 positive, G(z) rows"),
                                                              ("hardness_real", "1 positive, real rows")]),
        (axes[1, 1], "positive pair cosine G(z) vs G_ema(z)", [("pair_cosine", "measured"),
                                                              ("pair_target", "target s*")]),
        (axes[2, 0], "sample quality: pixel classifier on G(z)", [("sample_confidence", "confidence on G(z)"),
                                                                  ("real_confidence", "confidence on real test")]),
        (axes[2, 1], "accuracy on the test split", [("probe_acc", "linear probe"), ("knn_acc", "kNN")]),
    ]
    for axis, name, curves in panels:
        drawn = False
        for key, label in curves:
            x, y = _series(history, key)
            if x:
                axis.plot(x, y, marker="o", markersize=3, label=label)
                drawn = True
        axis.set_title(name, fontsize=10)
        axis.set_xlabel("epoch")
        if drawn:
            axis.legend(fontsize=8)
        else:
            axis.text(0.5, 0.5, "not used by this method", ha="center", va="center", transform=axis.transAxes)
    x, y = _series(history, "sample_classes")
    if x:  # classes covered by the samples, 1..n_classes, on its own scale
        twin = axes[2, 0].twinx()
        twin.plot(x, y, color="tab:green", linestyle="--", label="classes covered (exp entropy)")
        twin.set_ylabel("classes covered", fontsize=8)
        twin.legend(fontsize=8, loc="lower right")
    figure.suptitle(title)
    _save(figure, path)


def plot_sample_pairs(snapshots: dict[int, torch.Tensor], path: Path) -> None:
    """One panel per snapshot epoch: rows of pairs G(z) | G_ema(z) for a fixed set of latent codes.

    snapshots: epoch -> (K, 2, C, S, S) images in [0, 1]."""
    epochs = sorted(snapshots)
    figure, axes = plt.subplots(1, len(epochs), figsize=(1.6 * len(epochs) + 0.5, 6), squeeze=False,
                                layout="constrained")
    for axis, epoch in zip(axes[0], epochs):
        pairs = snapshots[epoch].float()
        k, _, channels, size, _ = pairs.shape
        # K rows x 2 columns of S x S images with a 1-pixel white border
        canvas = torch.ones(channels, k * (size + 1) + 1, 2 * (size + 1) + 1)
        for row in range(k):
            for col in range(2):
                top, left = 1 + row * (size + 1), 1 + col * (size + 1)
                canvas[:, top:top + size, left:left + size] = pairs[row, col]
        image = canvas.permute(1, 2, 0).numpy()
        axis.imshow(image.squeeze(-1) if channels == 1 else image, cmap="gray" if channels == 1 else None,
                    vmin=0, vmax=1, interpolation="nearest")
        axis.set_title(f"{'end of warm-up' if epoch == 0 else f'epoch {epoch}'}\nG | G_ema", fontsize=9)
        axis.axis("off")
    _save(figure, path)

