"""Is the search's answer true? The embedded task, the fidelity statistics, the default budget."""

from __future__ import annotations

import random

import pytest
import torch

from nas import odd_one_out
from nas.bench.fidelity import bias_tables, rank_statistics, stratified_archs, summarize, FidelityConfig
from nas.data import load_dataset
from nas.space import load_space

SMALL = {"train": 300, "val": 200, "test": 200}


def test_odd_one_out_is_deterministic_balanced_and_disjoint():
    a_images, a_labels, a_split = odd_one_out.generate(sizes=SMALL)
    b_images, b_labels, b_split = odd_one_out.generate(sizes=SMALL)
    assert torch.equal(a_images, b_images) and torch.equal(a_labels, b_labels) and a_split == b_split
    assert a_images.shape == (700, 1, 64, 64) and a_images.dtype == torch.uint8
    parts = [set(a_split[k]) for k in ("train", "val", "test")]
    assert sum(map(len, parts)) == len(set().union(*parts)) == 700
    for indices in a_split.values():  # balanced classes
        counts = torch.bincount(a_labels[indices], minlength=10)
        assert counts.max() - counts.min() <= 1
    other, _, _ = odd_one_out.generate(seed=1, sizes=SMALL)
    assert not torch.equal(other, a_images)


def test_each_image_holds_three_digits_and_the_label_is_the_odd_one():
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = torch.tensor(digits.images * (255.0 / 16.0)).round().to(torch.uint8)
    lookup = {bytes(p.flatten().tolist()): int(t) for p, t in zip(pixels, digits.target)}
    images, labels, _ = odd_one_out.generate(sizes={"train": 40, "val": 10, "test": 10})
    for image, label in zip(images[:, 0], labels):
        cells = image.reshape(8, 8, 8, 8).permute(0, 2, 1, 3).reshape(64, 8, 8)
        filled = [c for c in cells if c.any()]
        assert len(filled) == 3
        classes = [lookup[bytes(c.flatten().tolist())] for c in filled]
        assert classes.count(int(label)) == 1 and len(set(classes)) == 2


def test_validation_and_test_use_handwriting_training_never_saw():
    # Source digits are split before composing: no 8x8 digit image of val/test appears in train.
    images, _, split = odd_one_out.generate(sizes=SMALL)

    def cells(indices):
        chosen = images[indices, 0].reshape(-1, 8, 8, 8, 8).permute(0, 1, 3, 2, 4).reshape(-1, 8, 8)
        return {bytes(c.flatten().tolist()) for c in chosen if c.any()}

    train = cells(split["train"])
    assert not train & cells(split["val"]) and not train & cells(split["test"])


def test_the_shipped_space_and_dataset_fit():
    space = load_space("odd-one-out")
    assert space.tokens >= 64 and space.data == "odd-one-out"
    data = load_dataset("odd-one-out", space.image_size, space.in_chans)
    assert data.size("val") >= 2000 and data.size("test") >= 2000 and data.num_classes == space.num_classes
    assert not data.translate  # digits sit on the patch grid: no random shifts


def test_rank_statistics_on_a_known_ranking():
    inherited = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    same = rank_statistics(inherited, [0.5, 0.55, 0.6, 0.7, 0.8, 0.9], bootstrap=200)
    assert same["kendall_tau"] == pytest.approx(1.0) and same["spearman_rho"] == pytest.approx(1.0)
    reverse = rank_statistics(inherited, list(reversed(inherited)), bootstrap=200)
    assert reverse["kendall_tau"] == pytest.approx(-1.0)
    lo, hi = rank_statistics(inherited, [0.2, 0.1, 0.4, 0.3, 0.6, 0.5], bootstrap=500)["kendall_tau_90"]
    assert -1.0 <= lo <= 0.6 <= hi <= 1.0


def test_bias_is_weighted_by_each_kernels_share_of_layers():
    space = load_space("digits-tiny")
    from nas.kernels import KernelSpec

    soft = space.largest()
    relu = space.largest(kernel=KernelSpec("relu"))
    rows = [
        {"arch": soft.to_json(), "inherited": 0.9, "standalone": 0.8, "seeds": [0.79, 0.81]},
        {"arch": relu.to_json(), "inherited": 0.7, "standalone": 0.75, "seeds": [0.75, 0.75]},
    ]
    bias = bias_tables(rows)
    assert bias["kernel"]["softmax"]["bias_points"] == pytest.approx(10.0)
    assert bias["kernel"]["relu"]["bias_points"] == pytest.approx(-5.0)
    summary = summarize(rows, FidelityConfig(bootstrap=50))
    assert summary["standalone_span_points"] == pytest.approx(5.0)
    assert summary["seed_sd_points"] == pytest.approx(100 * (0.0141421356 + 0.0) / 2, rel=1e-3)


def test_stratified_archs_cover_latency_kernels_and_the_extremes():
    space = load_space("odd-one-out")
    latency = lambda arch: arch.embed_dim * arch.depth  # noqa: E731 — a monotone stand-in for a table
    archs = stratified_archs(space, latency, 16, seed=0, pool=600)
    assert len(archs) == 16 == len({a.digest for a in archs})
    assert archs[0] == space.largest() and archs[1] == space.smallest()
    labels = {layer.kernel_spec.label for a in archs for layer in a.layers}
    assert labels == {spec.label for spec in space.kernel_choices()}


def test_default_budget_admits_about_the_share_it_states():
    from nas.pipeline import default_budget

    space = load_space("odd-one-out")

    class Table:  # predicted latency: a deterministic function of the arch, like a real table
        def predict(self, arch):
            return sum(layer.heads * (2 if layer.kernel == "softmax" else 1) + layer.mlp_ratio for layer in arch.layers) * arch.embed_dim / 100

    budget, line = default_budget(space, Table(), seed=0)
    assert "50% quantile" in line and "2000 random archs" in line
    rng = random.Random(12345)
    fresh = [Table().predict(space.sample(rng)) for _ in range(2000)]
    share = sum(x <= budget for x in fresh) / len(fresh)
    assert 0.45 <= share <= 0.55
