"""The test bed of issue 23: the glyphs data set (deterministic, balanced, fonts never in both splits, cached)
and the evaluation every method and baseline shares (batch-norm statistics re-estimated on a copy, the few-label
probe, the raw-pixel and random-encoder baselines)."""

import copy

import numpy as np
import pytest
import torch

pytest.importorskip("kornia")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from synthcl_fast.trainer import glyphs  # noqa: E402
from synthcl_fast.trainer.config import ConfigError, TrainConfig  # noqa: E402
from synthcl_fast.trainer.data import load_data, pretrain_subset  # noqa: E402
from synthcl_fast.trainer import evaluate as ev  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def generated():
    """The data set of seed 0, generated twice without the cache (once with 1 torch thread, once with 2), and
    that of seed 1."""
    threads = torch.get_num_threads()
    first = glyphs.generate_glyphs(0)
    torch.set_num_threads(2)
    try:
        second = glyphs.generate_glyphs(0)
    finally:
        torch.set_num_threads(threads)
    return first, second, glyphs.generate_glyphs(1)


def test_same_bytes_for_the_same_seed_and_thread_count_independent_other_images_for_another(generated):
    first, second, other = generated
    assert first.keys() == second.keys() == other.keys()
    for key in first:
        assert first[key].tobytes() == second[key].tobytes(), key
    assert first["train_images"].tobytes() != other["train_images"].tobytes()


def test_shapes_dtypes_class_balance_and_value_range(generated):
    data = generated[0]
    n_classes = len(glyphs.CLASSES)
    for split, per_class in (("train", glyphs.TRAIN_PER_CLASS), ("test", glyphs.TEST_PER_CLASS)):
        images, labels = data[f"{split}_images"], data[f"{split}_labels"]
        assert images.shape == (n_classes * per_class, 3, 32, 32) and images.dtype == np.uint8
        assert labels.dtype == np.int64 and np.bincount(labels, minlength=n_classes).tolist() == [per_class] * n_classes
        # the images use the range, and are not blank: every image has both dark-ish and light-ish pixels
        assert images.min() == 0 and images.max() == 255
        spread = images.reshape(images.shape[0], -1).max(1).astype(int) - images.reshape(images.shape[0], -1).min(1)
        assert spread.min() >= 64
    assert n_classes >= 10


def test_no_font_in_both_splits_every_family_tested_every_class_from_every_font(generated):
    data = generated[0]
    train, test = set(data["train_sources"].tolist()), set(data["test_sources"].tolist())
    assert not train & test and train | test == set(range(len(glyphs.FONTS)))
    assert sorted(test) == sorted(glyphs.held_out_fonts(0))
    families = {family for _, family in glyphs.FONTS}
    assert {glyphs.FONTS[i][1] for i in test} == families  # one test font per family
    for split in ("train", "test"):
        sources, labels = data[f"{split}_sources"], data[f"{split}_labels"]
        fonts = np.unique(sources)
        counts = np.array([[np.sum((sources == f) & (labels == c)) for f in fonts] for c in range(10)])
        assert counts.min() >= 1 and counts.max() - counts.min() <= 1  # each class spread evenly over the fonts


def test_cache_is_written_once_and_reused(tmp_path, monkeypatch, generated):
    monkeypatch.setenv("SYNTHCL_FAST_CACHE", str(tmp_path))
    calls = []
    real = glyphs.generate_glyphs
    monkeypatch.setattr(glyphs, "generate_glyphs", lambda seed: calls.append(seed) or real(seed))
    first = glyphs.load_glyphs(0)
    assert calls == [0] and glyphs.cache_path(0).parent == tmp_path / "datasets" and glyphs.cache_path(0).is_file()
    again = glyphs.load_glyphs(0)
    assert calls == [0]  # read back, not generated again
    for key in first:
        assert np.array_equal(first[key], again[key]) and np.array_equal(first[key], generated[0][key])
    # another seed or another style is another data set: another cache file
    path = glyphs.cache_path(0)
    assert glyphs.cache_path(1) != path
    monkeypatch.setitem(glyphs.STYLE, "clutter", glyphs.STYLE["clutter"] + 1)
    assert glyphs.cache_path(0) != path


def test_glyphs_is_a_dataset_choice_without_data_path(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTHCL_FAST_CACHE", str(tmp_path))
    config = TrainConfig(method="simclr", dataset="glyphs", train_fraction=0.25, device="cpu")
    assert config.resolved_image_size == 32
    data = load_data(config)
    assert data.train_images.shape == (10000, 3, 32, 32) and data.test_images.shape == (2000, 3, 32, 32)
    assert data.train_images.dtype == torch.float32 and 0 <= data.train_images.min() and data.train_images.max() <= 1
    assert data.pretrain_index.numel() == 2500
    # a fraction of glyphs keeps whole sources: 250 images of each class from 4 or 5 of its 16 training fonts (62
    # or 63 images each), all of them whole but one
    all_sources = glyphs.load_glyphs(0)["train_sources"]
    sources = all_sources[data.pretrain_index.numpy()]
    labels = data.train_labels[data.pretrain_index].numpy()
    assert np.bincount(labels).tolist() == [250] * 10
    for c in range(10):
        taken, counts = np.unique(sources[labels == c], return_counts=True)
        whole = [(all_sources[data.train_labels.numpy() == c] == s).sum() for s in taken]
        assert len(taken) in (4, 5) and sum(np.array(counts) < np.array(whole)) <= 1
    with pytest.raises(ConfigError, match="--data-path is not used by --dataset glyphs"):
        TrainConfig(dataset="glyphs", data_path=str(tmp_path))


def test_pretrain_subset_takes_whole_sources_nested_and_balanced():
    rng = np.random.RandomState(5)
    labels = np.repeat(np.arange(3), 40)                        # 3 classes of 40 images
    sources = np.tile(np.repeat(np.arange(5), 8), 3)            # 5 sources per class, 8 images each
    rng.shuffle(order := np.arange(120))
    labels, sources = labels[order], sources[order]
    subsets = {f: pretrain_subset(labels, f, seed=3, sources=sources).numpy() for f in (0.1, 0.25, 0.5, 1.0)}
    for fraction, index in subsets.items():
        assert np.all(np.diff(index) > 0) and np.bincount(labels[index], minlength=3).tolist() == [round(40 * fraction)] * 3
        for c in range(3):
            taken = sources[index][labels[index] == c]
            whole = [s for s in set(taken) if (taken == s).sum() == 8]
            assert len(set(taken)) - len(whole) <= 1              # at most one source taken in part
            assert len(set(taken)) == -(-round(40 * fraction) // 8)  # as few sources as the count allows
    assert set(subsets[0.1]) <= set(subsets[0.25]) <= set(subsets[0.5]) <= set(subsets[1.0]) == set(range(120))
    assert np.array_equal(pretrain_subset(labels, 0.25, seed=3, sources=sources), subsets[0.25])
    assert not np.array_equal(pretrain_subset(labels, 0.25, seed=4, sources=sources), subsets[0.25])
    # without sources: a random sample of images, as before (digits, folder, CIFAR-10)
    plain = pretrain_subset(labels, 0.25, seed=3).numpy()
    assert plain.shape == (30,) and np.array_equal(plain, np.sort(np.random.RandomState(3).permutation(120)[:30]))


# --- the evaluation ------------------------------------------------------------------------------------------

def _digits(**changes):
    values = dict(method="simclr", image_size=8, width=4, projection_dim=8, knn_k=3, batch_size=16, device="cpu")
    return TrainConfig(**(values | changes))


def test_batch_norm_reestimation_works_on_a_copy_and_matches_the_data():
    config = _digits()
    data = load_data(config)
    model = ev.random_encoder(config, data.channels)
    before = copy.deepcopy(model.state_dict())
    copy_model = ev.reestimate_batch_norm(model, data.train_images, torch.device("cpu"), batch_size=128)
    # the model and its saved state (weights and running statistics) are untouched
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the copy's first batch norm holds the equal-weight average over the batches of the stem convolution's
    # per-channel batch means (and unbiased variances) on the training images, not the initial 0 / 1
    stem_conv, stem_bn = model.encoder.stem[0], copy_model.encoder.stem[1]
    with torch.no_grad():
        batches = [stem_conv(data.train_images[i:i + 128] * 2 - 1) for i in range(0, len(data.train_images), 128)]
    mean = torch.stack([b.mean((0, 2, 3)) for b in batches]).mean(0)
    var = torch.stack([b.var((0, 2, 3)) for b in batches]).mean(0)
    assert torch.allclose(stem_bn.running_mean, mean, atol=1e-5) and torch.allclose(stem_bn.running_var, var, rtol=1e-4)
    assert not torch.allclose(model.encoder.stem[1].running_mean, stem_bn.running_mean)
    assert not copy_model.training
    # the copy's weights are the model's
    copied = copy_model.state_dict()
    assert all(torch.equal(before[k], copied[k]) for k in before if "running" not in k and "num_batches" not in k)


def test_evaluate_does_not_change_the_model_and_uses_reestimated_statistics():
    config = _digits()
    data = load_data(config)
    model = ev.random_encoder(config, data.channels)
    before = copy.deepcopy(model.state_dict())
    with_bn = ev.evaluate(model, data, torch.device("cpu"), config.knn_k)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert set(with_bn) == {"probe_acc", "few_label_acc", "knn_acc"}
    assert all(0 <= v <= 1 for v in with_bn.values())
    # the same numbers as evaluating the re-estimated copy without re-estimating again
    copy_model = ev.reestimate_batch_norm(model, data.train_images, torch.device("cpu"))
    assert ev.evaluate(copy_model, data, torch.device("cpu"), config.knn_k, reestimate_bn=False) == with_bn


def test_few_label_draws_are_fixed_and_hold_the_label_count():
    labels = np.repeat(np.arange(12), 30)
    np.random.RandomState(0).shuffle(labels)
    draws = ev.few_label_draws(labels, per_class=10, draws=5, seed=3)
    again = ev.few_label_draws(labels, per_class=10, draws=5, seed=3)
    assert len(draws) == 5 and all(np.array_equal(a, b) for a, b in zip(draws, again))
    for index in draws:
        assert len(np.unique(index)) == 120 and np.bincount(labels[index]).tolist() == [10] * 12
    assert not all(np.array_equal(a, b) for a, b in zip(draws, ev.few_label_draws(labels, 10, 5, seed=4)))
    with pytest.raises(ValueError, match="needs 31 training images per class"):
        ev.few_label_draws(labels, per_class=31)


def test_few_label_accuracy_is_deterministic_and_between_chance_and_the_full_probe():
    rng = np.random.RandomState(0)
    centers = rng.normal(size=(10, 16)) * 1.5
    train_y, test_y = np.repeat(np.arange(10), 100), np.repeat(np.arange(10), 50)
    train_x, test_x = centers[train_y] + rng.normal(size=(1000, 16)), centers[test_y] + rng.normal(size=(500, 16))
    few = ev.few_label_accuracy(train_x, train_y, test_x, test_y)
    assert few == ev.few_label_accuracy(train_x, train_y, test_x, test_y)
    full = ev.linear_probe_accuracy(train_x, train_y, test_x, test_y)
    assert 0.2 < few < full
    five = np.concatenate([np.flatnonzero(train_y == c)[:5] for c in range(10)])
    assert ev.few_label_accuracy(train_x[five], train_y[five], test_x, test_y) is None  # < 10 images per class


def test_random_encoder_is_the_encoder_a_run_of_that_seed_starts_from(tmp_path):
    from synthcl_fast.trainer import Trainer

    config = _digits(seed=3)
    trainer = Trainer.new(config, tmp_path, progress=False)
    state = torch.random.get_rng_state()
    model = ev.random_encoder(config, trainer.data.channels)
    assert torch.equal(state, torch.random.get_rng_state())  # the global random state is left as it was
    reference = trainer.model.state_dict()
    assert all(torch.equal(reference[k], v) for k, v in model.state_dict().items())
    other = ev.random_encoder(_digits(seed=4), trainer.data.channels).state_dict()
    assert not torch.equal(other["encoder.stem.0.weight"], reference["encoder.stem.0.weight"])


def test_baselines_come_from_the_same_evaluation(monkeypatch):
    config = _digits()
    data = load_data(config)
    results = ev.baseline_results(config, data)
    assert list(results) == list(ev.BASELINES)
    pixels = ev.feature_metrics(data.train_images.flatten(1).double().numpy(), data.train_labels.numpy(),
                                data.test_images.flatten(1).double().numpy(), data.test_labels.numpy(), config.knn_k)
    assert results["raw-pixels"] == pixels
    model = ev.random_encoder(config, data.channels)
    assert results["random-encoder"] == ev.evaluate(model, data, torch.device("cpu"), config.knn_k)
