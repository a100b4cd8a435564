"""Sandwich-rule training: the loss falls, and a resumed run equals an uninterrupted one."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from nas.cli import main
from nas.data import load_dataset
from nas.errors import NasError
from nas.rundir import RunDir
from nas.sampling import sandwich, step_rng
from nas.space_file import load_space
from nas.training import TrainConfig, train_supernet

SPACE = load_space("digits-tiny")
DATA = load_dataset(None, SPACE.image_size, SPACE.in_chans)
TINY = TrainConfig(epochs=2, batch_size=128, random_subnets=1, warmup_epochs=1)
# A few batches of DATA (same images, same normalisation): enough steps for resumption's properties
# (fp16 on the CPU runs about 6x slower than fp32)
FEW = dataclasses.replace(DATA, split={name: positions[:256] for name, positions in DATA.split.items()})


class Stop(Exception):
    pass


@pytest.mark.slow
def test_training_lowers_the_loss(tmp_path):
    x, y = DATA.batch("train", list(range(256)))
    torch.manual_seed(TINY.seed)
    from nas.supernet import SuperNet

    with torch.no_grad():
        before = F.cross_entropy(SuperNet(SPACE)(x, SPACE.largest()), y).item()
    train_supernet(SPACE, DATA, TrainConfig(epochs=3, batch_size=64, random_subnets=1, warmup_epochs=1), tmp_path)
    with torch.no_grad():
        after = F.cross_entropy(RunDir(tmp_path).supernet(SPACE)(x, SPACE.largest()), y).item()
    assert after < before - 0.05, (before, after)
    state = json.loads((tmp_path / "train_state.json").read_text())
    assert state["epochs_done"] == 3 and 0 <= state["final"]["test_largest"] <= 1


@pytest.mark.parametrize(  # fp16 autocast is emulated on CPUs (slow) and varies across torch versions
    "precision, sampling",
    [
        ("fp32", "random"),
        pytest.param("fp16", "random", marks=[pytest.mark.slow, pytest.mark.compat]),
        ("fp32", "fair"),
    ],
)
def test_resume_continues_at_the_saved_step_with_the_same_result(tmp_path, precision, sampling):
    from dataclasses import replace

    from nas.compute import cpu_fp16_autocast

    if precision == "fp16" and not cpu_fp16_autocast():
        pytest.skip("this torch has no fp16 autocast on the CPU")
    config = replace(TINY, precision=precision, kernel_sampling=sampling)
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    train_supernet(SPACE, FEW, config, straight)

    def stop_after_first_epoch(record):
        if record["epoch"] == 1:
            raise Stop

    with pytest.raises(Stop):
        train_supernet(SPACE, FEW, config, interrupted, progress=stop_after_first_epoch)
    assert json.loads((interrupted / "train_state.json").read_text())["epochs_done"] == 1
    scaler_state = lambda run: torch.load(run / "train_state.pt", weights_only=True)["scaler"]  # noqa: E731
    # fp16: the loss scale is part of the checkpoint
    assert (scaler_state(interrupted) is None) == (precision != "fp16")
    epochs_seen = []
    train_supernet(SPACE, FEW, config, interrupted, resume=True, progress=lambda r: epochs_seen.append(r["epoch"]))
    assert epochs_seen == [2]
    a, b = load_file(str(straight / "supernet.safetensors")), load_file(str(interrupted / "supernet.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert scaler_state(straight) == scaler_state(interrupted)


def test_every_rank_samples_the_same_subnets():
    for step in (0, 17, 400):
        assert sandwich(SPACE, step_rng(3, step), 2) == sandwich(SPACE, step_rng(3, step), 2)
    assert sandwich(SPACE, step_rng(3, 1), 2) != sandwich(SPACE, step_rng(3, 2), 2)


def test_refuses_to_overwrite_or_resume_the_wrong_run(tmp_path):
    train_supernet(SPACE, DATA, TrainConfig(epochs=1, batch_size=256, random_subnets=0), tmp_path)
    with pytest.raises(NasError, match="already holds a trained supernet; pass --resume"):
        train_supernet(SPACE, DATA, TrainConfig(epochs=1, batch_size=256, random_subnets=0), tmp_path)
    with pytest.raises(NasError, match=r"changed: batch_size \(256 -> 128\)"):
        train_supernet(SPACE, DATA, TrainConfig(epochs=1, batch_size=128, random_subnets=0), tmp_path, resume=True)
    with pytest.raises(NasError, match="holds no supernet checkpoint"):
        train_supernet(SPACE, DATA, TINY, tmp_path / "fresh", resume=True)


def test_cli_train_bad_input_is_one_line(tmp_path, capsys):
    assert main(["train", "--space", "nope", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nas: error: unknown search space 'nope'") and err.count("\n") == 1
    assert not (tmp_path / "r").exists()
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
    assert "no such directory" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.compat  # timm's transforms and DataLoader workers
def test_an_image_folder_run_stopped_mid_epoch_restarts_that_epoch_and_ends_as_an_uninterrupted_one(
    tmp_path, monkeypatch
):
    """Streamed data, two loader processes: a run interrupted in the middle of epoch 2 resumes
    from the epoch-1 checkpoint, replays epoch 2 from its start and ends with the same weights."""
    from test_data import make_image_folder

    from nas import training as train

    space = load_space("digits-tiny")
    root = make_image_folder(tmp_path / "imgs", mode="L", size=(32, 32), classes=("a", "b", "c"), per_class=16)
    data = load_dataset(str(root), space.image_size, space.in_chans, workers=2)
    space = space.with_num_classes(data.num_classes)
    config = TrainConfig(epochs=2, batch_size=8, random_subnets=1, warmup_epochs=1)
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    train_supernet(space, data, config, straight)

    real, calls = train.sandwich_step, []

    def stop_in_epoch_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:  # 4 steps per epoch: the second step of epoch 2
            raise Stop
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "sandwich_step", stop_in_epoch_two)
    with pytest.raises(Stop):
        train_supernet(space, data, config, interrupted)
    monkeypatch.setattr(train, "sandwich_step", real)
    assert json.loads((interrupted / "train_state.json").read_text())["epochs_done"] == 1
    again = load_dataset(str(root), space.image_size, space.in_chans, workers=2)  # a new process would load it anew
    train_supernet(space, again, config, interrupted, resume=True)
    a, b = load_file(str(straight / "supernet.safetensors")), load_file(str(interrupted / "supernet.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_mixup_and_cutmix_train_on_soft_targets_and_need_an_even_batch(tmp_path):
    from nas.train_step import make_mixup, mixed
    from nas.training import check_mixup

    config = TrainConfig(epochs=1, batch_size=64, random_subnets=0, mixup=0.8, cutmix=1.0)
    mixup = make_mixup(config, 10)
    x, y = DATA.batch("train", list(range(8)))
    a, targets = mixed(mixup, x, y, seed=3)
    b, again = mixed(mixup, x, y, seed=3)
    assert (
        targets.shape == (8, 10)
        and torch.allclose(targets.sum(-1), torch.ones(8))
        and torch.equal(a, b)
        and torch.equal(targets, again)
    )
    summary = train_supernet(SPACE, DATA, config, tmp_path)
    state = json.loads((tmp_path / "train_state.json").read_text())
    assert state["history"][0]["skipped_steps"] == 0 and 0 <= summary["test_largest"] <= 1
    with pytest.raises(NasError, match="even batch on every worker"):
        check_mixup(0.8, 0.0, batch_size=64, workers=3)


def test_angular_auxiliary_branch_is_annealed_to_zero_and_then_costs_nothing(tmp_path, monkeypatch):
    """Castling-ViT's recipe: weight `angular_aux` at step 0, linearly to 0 at `angular_aux_until` of the steps;
    from there on no angular layer computes its softmax, in training as in evaluation."""
    import nas.training as train
    from nas.kernels.angular import AngularAttention
    from nas.train_step import angular_aux_at

    config = TrainConfig(
        epochs=2, batch_size=128, random_subnets=1, warmup_epochs=1, angular_aux=0.8, angular_aux_until=0.5
    )
    total = (DATA.size("train") // config.batch_size) * config.epochs
    assert [angular_aux_at(s, total, config) for s in (0, total // 4, total // 2, total - 1)] == pytest.approx(
        [0.8, 0.8 * (1 - (total // 4) / (total / 2)), 0.0, 0.0]
    )
    assert angular_aux_at(0, total, TrainConfig(angular_aux_until=0.0)) == 0.0
    seen, softmax_calls, real_step, real_softmax = [], [], train.sandwich_step, torch.softmax

    def recording_step(net, *args, **kwargs):
        weights = {m.aux_weight for m in net.modules() if isinstance(m, AngularAttention)}
        assert len(weights) == 1, "every angular layer has the same weight"
        seen.append(weights.pop())
        softmax_calls.append(0)
        return real_step(net, *args, **kwargs)

    def counting_softmax(*args, **kwargs):
        if softmax_calls:
            softmax_calls[-1] += 1
        return real_softmax(*args, **kwargs)

    monkeypatch.setattr(train, "sandwich_step", recording_step)
    monkeypatch.setattr(torch, "softmax", counting_softmax)
    train_supernet(SPACE, DATA, config, tmp_path)
    assert seen == pytest.approx([angular_aux_at(s, total, config) for s in range(total)])
    assert any(calls > 0 for calls, weight in zip(softmax_calls, seen) if weight > 0), "the branch ran while weighted"
    assert all(calls == 0 for calls, weight in zip(softmax_calls, seen) if weight == 0), (
        "a zero weight computed the softmax"
    )


def test_angular_aux_until_above_one_is_refused(tmp_path, capsys):
    assert main(["train", "--angular-aux-until", "1.5", "--epochs", "1", "--out", str(tmp_path / "run")]) == 2
    assert "--angular-aux-until is a share of the training steps, at most 1" in capsys.readouterr().err


def test_fair_sampling_trains_each_kernel_of_each_layer_once_per_k_steps_and_shares_it_in_the_sandwich():
    import random
    from collections import Counter

    from nas.sampling import fair_kernels, fair_sandwich

    choices = SPACE.kernel_choices()
    k = len(choices)
    for block in range(3):
        drawn = [fair_kernels(SPACE, 7, step) for step in range(block * k, (block + 1) * k)]
        for layer in range(max(SPACE.depth)):
            assert Counter(spec.label for spec in (d[layer] for d in drawn)) == Counter(spec.label for spec in choices)
    assert [fair_kernels(SPACE, 7, s) for s in range(2 * k)] == [
        fair_kernels(SPACE, 7, s) for s in range(2 * k)
    ]  # (seed, step) alone
    assert [fair_kernels(SPACE, 7, s) for s in range(k)] != [fair_kernels(SPACE, 8, s) for s in range(k)]
    kernels = fair_kernels(SPACE, 7, 5)
    archs = fair_sandwich(SPACE, random.Random(0), 3, kernels)
    assert archs[0].embed_dim == max(SPACE.embed_dim) and archs[0].depth == max(SPACE.depth)
    assert archs[1].embed_dim == min(SPACE.embed_dim) and archs[1].depth == min(SPACE.depth)
    for arch in archs:  # one kernel vector per step: the teacher differs from its students in width only
        SPACE.validate(arch)
        assert [layer.kernel_spec for layer in arch.layers] == kernels[: arch.depth]


def test_fair_sampling_with_a_softmax_teacher_is_refused(tmp_path, capsys):
    assert (
        main(
            [
                "train",
                "--space",
                "digits-tiny",
                "--kernel-sampling",
                "fair",
                "--teacher",
                "softmax",
                "--out",
                str(tmp_path / "r"),
            ]
        )
        == 2
    )
    assert "--teacher fair" in capsys.readouterr().err and not (tmp_path / "r").exists()
