"""Search spaces and Arch: loading, validation, sampling, JSON round-trip, stable hash."""

from __future__ import annotations

import random

import pytest
import yaml

from nas import kernels
from nas.arch import Arch
from nas.errors import NasError
from nas.space_file import available, load_space

SPACES = ["digits-tiny", "deit-tiny", "hires"]


def test_shipped_spaces_load_by_name():
    assert set(SPACES) <= set(available())
    for name in SPACES:
        assert load_space(name).name == name


@pytest.mark.parametrize("name", SPACES)
def test_every_kernel_and_both_taylor_orders_appear(name):
    space = load_space(name)
    assert set(space.kernels) == set(kernels.names())
    labels = {spec.label for spec in space.kernel_choices()}
    assert {"taylor-o1", "taylor-o2-full", "taylor-o2-compact"} <= labels


def test_fixed_shapes_of_the_spaces():
    digits, deit, hires = (load_space(n) for n in SPACES)
    assert (digits.image_size, digits.in_chans, digits.num_classes) == (32, 1, 10)
    assert (deit.image_size, deit.patch_size, max(deit.embed_dim), max(deit.depth)) == (224, 16, 192, 12)
    assert hires.tokens >= 1024


def test_size_counts_every_architecture():
    space = load_space("digits-tiny")
    per_layer = len(space.kernel_choices()) * len(space.heads) * len(space.mlp_ratio)
    assert space.size() == len(space.embed_dim) * sum(per_layer**d for d in space.depth)
    # Brute force on a small space: every sampled arch is one of size() distinct archs.
    tiny = load_tiny_space()
    seen = {tiny.sample(random.Random(i)).digest for i in range(4000)}
    assert len(seen) == tiny.size()


def load_tiny_space():
    from nas.space_file import parse_space

    return parse_space(
        {
            "name": "tiny",
            "image_size": 8,
            "patch_size": 4,
            "in_chans": 1,
            "num_classes": 2,
            "head_dim": 4,
            "embed_dim": [8],
            "depth": [1, 2],
            "heads": [1, 2],
            "mlp_ratio": [1],
            "kernels": ["softmax", "taylor"],
            "taylor": {"order": [1, 2], "variant": ["compact"]},
        },
        "tiny.yaml",
    )


@pytest.mark.parametrize("name", SPACES)
def test_sampled_archs_are_valid_and_reproducible(name):
    space = load_space(name)
    first = [space.sample(random.Random(7)) for _ in range(3)]
    assert first[0] == first[1] == first[2]
    for seed in range(30):
        arch = space.validate(space.sample(random.Random(seed)))
        assert arch.depth == len(arch.layers)


def test_largest_is_softmax_everywhere_and_smallest_is_narrowest():
    space = load_space("digits-tiny")
    largest, smallest = space.largest(), space.smallest()
    assert all(layer.kernel == "softmax" and layer.heads == 4 and layer.mlp_ratio == 3 for layer in largest.layers)
    assert (largest.embed_dim, largest.depth) == (64, 4)
    assert (smallest.embed_dim, smallest.depth) == (32, 2)
    assert all(layer.kernel == "relu" and layer.heads == 1 for layer in smallest.layers)


def test_json_round_trip_and_stable_hash():
    space = load_space("digits-tiny")
    arch = space.sample(random.Random(3))
    again = space.arch_from_json(arch.to_json())
    assert again == arch and again.digest == arch.digest and hash(again) == hash(arch)
    # Key order and 2 vs 2.0 do not change the hash.
    data = arch.to_dict()
    data["layers"] = [{**layer, "mlp_ratio": float(layer["mlp_ratio"])} for layer in reversed(data["layers"])][::-1]
    assert Arch.from_dict(dict(reversed(list(data.items())))).digest == arch.digest
    # The canonical form is pinned: a change here silently invalidates every cache key.
    assert space.largest().digest == "6e94a8a6becb2447"


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(embed_dim=40), "field 'embed_dim' is 40; allowed: 32, 48, 64"),
        (lambda d: d.update(depth=3), "field 'layers' has 2 entries but depth is 3"),
        (lambda d: d["layers"][0].update(kernel="performer"), "layers[0].kernel is 'performer'; allowed: softmax"),
        (
            lambda d: d["layers"][0].update(kernel="taylor"),
            "layers[0]: kernel 'taylor' with options none is not a choice of this space; its choices: {'order': 1}",
        ),
        (
            lambda d: d["layers"][0].update(kernel="taylor", order=3),
            "layers[0]: field 'order' is 3; kernel 'taylor' takes 1, 2",
        ),
        (
            lambda d: d["layers"][0].update(kernel="taylor", order=1, variant="full"),
            "with options {'order': 1, 'variant': 'full'} is not a choice of this space",
        ),
        (lambda d: d["layers"][0].update(order=2), "layers[0]: unknown field(s) order"),
        (lambda d: d["layers"][1].update(heads=3), "layers[1].heads is 3; allowed: 1, 2, 4"),
        (lambda d: d.update(image_size=64), "field 'image_size' is 64, but the space fixes it to 32"),
        (lambda d: d.pop("head_dim"), "missing field(s) head_dim"),
    ],
)
def test_invalid_arch_names_the_field_and_allowed_values(change, message):
    space = load_space("digits-tiny")
    data = space.smallest().to_dict()
    change(data)
    with pytest.raises(NasError) as error:
        space.validate(Arch.from_dict(data))
    assert message in str(error.value)


def write_space(tmp_path, **changes):
    data = yaml.safe_load(_shipped("digits-tiny").read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _shipped(name):
    from importlib import resources

    return resources.files("search_spaces") / f"{name}.yaml"


@pytest.mark.parametrize(
    "changes, field, fix",
    [
        (
            {"kernels": ["softmax", "performer"]},
            "field 'kernels': unknown kernel 'performer'",
            "fix: use kernels from: softmax",
        ),
        ({"heads": []}, "field 'heads': empty choice list", "fix: list at least one value"),
        (
            {"heads": [1, 2, 8]},
            "field 'heads': the widest attention, heads × head_dim = 8 × 16 = 128, exceeds the widest embed_dim 64",
            "fix: lower heads",
        ),
        ({"head_dim": None}, "field 'head_dim': missing", "fix: add 'head_dim:'"),
        ({"depth": [2, -1]}, "field 'depth': -1 is not a positive integer", "fix: use positive values"),
        ({"patch_size": 5}, "field 'patch_size': 5 does not divide image_size 32", "fix: pick a divisor"),
        ({"taylor": {"order": [1, 3]}}, "field 'taylor.order'", "fix: use values from [1, 2]"),
        (
            {"kernel_options": {"window": {"window": 4}}},
            "field 'kernel_options.window'",
            "fix: use options from: window_size",
        ),
        ({"colour": "blue"}, "field 'colour': unknown field", "fix: remove it"),
    ],
)
def test_bad_yaml_is_refused_naming_file_field_and_fix(tmp_path, changes, field, fix):
    path = write_space(tmp_path, **changes)
    with pytest.raises(NasError) as error:
        load_space(path)
    message = str(error.value)
    assert str(path) in message and field in message and fix in message


def test_malformed_yaml_and_unknown_names(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nheads: [1, 2\n")
    with pytest.raises(NasError, match=rf"{path}: malformed YAML"):
        load_space(path)
    with pytest.raises(
        NasError, match="unknown search space 'digits-huge'; shipped spaces: deit-tiny, digits-tiny, hires, odd-one-out"
    ):
        load_space("digits-huge")
    with pytest.raises(NasError, match="does not exist"):
        load_space(tmp_path / "missing.yaml")
