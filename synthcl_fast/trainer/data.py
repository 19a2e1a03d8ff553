"""Datasets, held in memory as float images in [0, 1] of shape (N, C, S, S). Nothing is downloaded.

- digits: scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), resized to S x S.
- glyphs: RGB 32 x 32 digits drawn from the fonts matplotlib ships under random position, scale, rotation,
  stroke width, elastic deformation, colours, texture and clutter (glyphs.py): 10,000 training and 2,000 test
  images, 10 classes, the test split's fonts unseen in training. Made on first use and cached; its split is
  its own (fonts, not images, are split), drawn with `split_seed`. Its `train_fraction` subset keeps whole
  sources (all the images of a font's digit) rather than a random sample of images: see `pretrain_subset`.
- cifar10: a local copy of CIFAR-10 in its standard python format (the folder `cifar-10-batches-py` with
  data_batch_1..5 and test_batch, or its parent); its official train/test split is kept.
- folder: a folder of images in class subfolders, root/<class>/<image>.png|jpg|... (the labels are used
  for evaluation only), resized to S x S.

Labels never reach the contrastive training; they serve the linear probe and kNN evaluation. The
train/test split (digits, folder, glyphs) and the `train_fraction` subset are drawn from `split_seed`, so every
method and training seed sees the same images.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import ConfigError, TrainConfig

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"


@dataclass
class ImageData:
    """A labeled train/test split plus the indices of the training images used for unlabeled training."""

    name: str
    train_images: torch.Tensor      # (N, C, S, S) float32 in [0, 1]
    train_labels: torch.Tensor      # (N,) int64
    test_images: torch.Tensor
    test_labels: torch.Tensor
    pretrain_index: torch.Tensor    # (n,) indices into the train split: the `train_fraction` subset

    @property
    def channels(self) -> int:
        return self.train_images.shape[1]

    @property
    def pretrain_images(self) -> torch.Tensor:
        return self.train_images[self.pretrain_index]


def load_data(config: TrainConfig) -> ImageData:
    size = config.resolved_image_size
    train_sources = None    # each training image's source, where the data set has sources (glyphs: its font)
    if config.dataset == "digits":
        images, labels = _load_digits()
        train, test = _split(labels, config.test_fraction, config.split_seed)
        train_images, train_labels, test_images, test_labels = images[train], labels[train], images[test], labels[test]
    elif config.dataset == "glyphs":
        from .glyphs import load_glyphs

        glyphs = load_glyphs(config.split_seed)
        train_images, train_labels, test_images, test_labels = (
            torch.from_numpy(glyphs[key]) for key in ("train_images", "train_labels", "test_images", "test_labels"))
        train_sources = glyphs["train_sources"]
    elif config.dataset == "cifar10":
        train_images, train_labels, test_images, test_labels = _load_cifar10(Path(config.data_path))
    else:
        images, labels = _load_folder(Path(config.data_path), size)
        train, test = _split(labels, config.test_fraction, config.split_seed)
        train_images, train_labels, test_images, test_labels = images[train], labels[train], images[test], labels[test]

    n_train = train_images.shape[0]
    pretrain_index = pretrain_subset(train_labels.numpy(), config.train_fraction, config.split_seed,
                                     train_sources)
    if pretrain_index.numel() < config.batch_size:
        raise ConfigError(f"--batch-size ({config.batch_size}) is larger than the {pretrain_index.numel()} training "
                          f"images (--train-fraction {config.train_fraction} of {n_train}); lower --batch-size")
    return ImageData(config.dataset, _resize(train_images, size), train_labels, _resize(test_images, size),
                     test_labels, pretrain_index)


def pretrain_subset(labels: np.ndarray, fraction: float, seed: int, sources: np.ndarray | None = None) -> torch.Tensor:
    """Sorted indices of the `fraction` of the training images used for unlabeled training, drawn with `seed`.

    Without sources: a random sample of round(fraction * N) images. With sources (glyphs: each image's font; a
    source is one font's glyph of one class), whole sources: in each class the images are taken source by source
    in a random order of the class's sources, round(fraction * images of the class) of them, so a smaller
    fraction holds fewer sources (at most one of them partly), as a smaller collection holds fewer writers or
    fonts. Why: glyphs draws many images of each of its 160 training sources, and a random quarter of the images
    still holds every source many times over; it trained simclr as well as all of them
    (benchmarks/results/testbed/design_probes.md), so a fraction of images measured nothing about data.
    """
    rng = np.random.RandomState(seed)
    if sources is None:
        order = rng.permutation(labels.shape[0])
        return torch.from_numpy(np.sort(order[:round(fraction * labels.shape[0])]))
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        source_rank = {source: rank for rank, source in enumerate(rng.permutation(np.unique(sources[members])))}
        # by source in the drawn order, and in a random order within a source
        order = members[np.lexsort((rng.permutation(members.shape[0]), [source_rank[s] for s in sources[members]]))]
        chosen.append(order[:round(fraction * members.shape[0])])
    return torch.from_numpy(np.sort(np.concatenate(chosen)))


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 or float (N, C, H, W) -> float32 (N, C, size, size) in [0, 1]."""
    images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    if images.shape[-1] != size or images.shape[-2] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return images.clamp_(0.0, 1.0).contiguous()


def _split(labels: torch.Tensor, test_fraction: float, seed: int):
    """Stratified train/test indices, fixed by `seed`."""
    from sklearn.model_selection import train_test_split

    index = np.arange(labels.shape[0])
    train, test = train_test_split(index, test_size=test_fraction, stratify=labels.numpy(), random_state=seed)
    return torch.from_numpy(np.sort(train)), torch.from_numpy(np.sort(test))


def _load_digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images / 16.0).float().unsqueeze(1)  # values 0..16 -> [0, 1]
    return images, torch.from_numpy(digits.target).long()


def _load_cifar10(path: Path):
    if not path.is_dir():
        raise FileNotFoundError(f"--data-path {path} does not exist or is not a folder (expected a local copy of "
                                f"CIFAR-10's python version; nothing is downloaded)")
    root = path / "cifar-10-batches-py" if (path / "cifar-10-batches-py").is_dir() else path
    expected = CIFAR10_TRAIN_FILES + (CIFAR10_TEST_FILE,)
    missing = [name for name in expected if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"--data-path {path}: no CIFAR-10 python batches there (missing {', '.join(missing)}); expected the "
            f"folder 'cifar-10-batches-py' of the python version of CIFAR-10, or its parent (nothing is downloaded)")

    def read(name):
        # The standard CIFAR-10 format is a python pickle: read only a local copy you trust.
        with open(root / name, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        try:
            data, labels = batch[b"data"], batch[b"labels"]
        except (KeyError, TypeError):
            raise ConfigError(f"--data-path {path}: {root / name} is not a CIFAR-10 batch (no b'data'/b'labels')")
        images = torch.from_numpy(np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32))
        return images, torch.tensor(labels, dtype=torch.long)

    train = [read(name) for name in CIFAR10_TRAIN_FILES]
    test_images, test_labels = read(CIFAR10_TEST_FILE)
    return torch.cat([b[0] for b in train]), torch.cat([b[1] for b in train]), test_images, test_labels


def _load_folder(root: Path, size: int):
    from PIL import Image

    if not root.is_dir():
        raise FileNotFoundError(f"--data-path {root} does not exist or is not a folder")
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    files = [(f, label) for label, folder in enumerate(classes)
             for f in sorted(folder.rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES]
    if len(classes) < 2 or not files:
        raise FileNotFoundError(
            f"--data-path {root}: expected images in at least two class subfolders, root/<class>/<image>.png "
            f"(found {len(classes)} subfolders and {len(files)} images); the labels are used only for evaluation")
    images = []
    for file, _ in files:
        try:
            with Image.open(file) as image:
                image = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        except OSError as error:
            raise ConfigError(f"--data-path {root}: cannot read image {file}: {error}") from None
        images.append(torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1))
    labels = torch.tensor([label for _, label in files], dtype=torch.long)
    return torch.stack(images), labels
