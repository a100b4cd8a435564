"""The verified final choice: candidates spread over the front, successive halving that keeps the
right candidates, standalone training that resumes exactly, and `nas verify` end to end."""

from __future__ import annotations

import json
import random

import pytest
import torch
from runs import make_run
from test_export import write_trials

import nas
from nas.cli import main
from nas.data import load_dataset
from nas.errors import NasError
from nas.io import append_line
from nas.rundir import VERIFY, VERIFY_JSON, RunDir
from nas.selection import Candidate, load_candidates
from nas.space_file import load_space
from nas.standalone import Recipe
from nas.verify import VerifyConfig, measured_candidates, preference, successive_halving
from nas.verify_training import Trainer, read_state, state_path, train_to


def archs(count: int, seed: int = 0):
    space, rng, out = load_space("digits-tiny"), random.Random(seed), {}
    while len(out) < count:
        arch = space.sample(rng)
        out.setdefault(arch.digest, arch)
    return list(out.values())


def candidates(rows):
    """(trial, accuracy, latency) -> Candidates with distinct archs."""
    return [Candidate(t, acc, ms, 0, 0, arch) for (t, acc, ms), arch in zip(rows, archs(len(rows)))]


# ---- choosing ------------------------------------------------------------------------------------


def test_candidates_spread_over_the_front_most_accurate_first_then_the_rest_by_accuracy():
    pool = candidates(
        [
            (0, 0.50, 0.1),
            (1, 0.60, 0.2),
            (2, 0.70, 0.3),
            (3, 0.80, 0.4),
            (4, 0.90, 0.5),  # the front
            (5, 0.85, 0.6),
            (6, 0.65, 0.45),
            (7, 0.55, 0.35),
        ]
    )  # dominated
    order = [c.trial for c in preference(pool, 3)]
    assert order[:3] == [4, 2, 0]  # the most accurate, the middle and the fastest of the front
    assert order[3:] == [5, 3, 6, 1, 7]  # then by inherited accuracy
    assert [c.trial for c in preference(pool, 1)][:1] == [4]
    twin = Candidate(9, 0.95, 0.55, 0, 0, pool[0].arch)  # the same arch as trial 0, scored again: one entry per arch
    assert [c.trial for c in preference(pool + [twin], 8)].count(0) + [
        c.trial for c in preference(pool + [twin], 8)
    ].count(9) == 1


def test_a_candidate_measured_over_the_budget_is_replaced_by_the_next():
    pool = candidates([(0, 0.9, 0.9), (1, 0.8, 0.8), (2, 0.7, 0.7), (3, 0.6, 0.6)])
    now = {pool[0].arch.digest: 1.2, pool[1].arch.digest: 0.8, pool[2].arch.digest: 1.1, pool[3].arch.digest: 0.5}
    calls = []

    def measure(archs):
        calls.append(len(archs))
        return [now[a.digest] for a in archs]

    chosen, checked = measured_candidates(pool, measure, 1.0, 2, progress=lambda line: None)
    assert [(c.trial, ms) for c, ms in chosen] == [(1, 0.8), (3, 0.5)]
    assert [c["trial"] for c in checked] == [0, 1, 2, 3] and calls == [2, 1, 1]
    with pytest.raises(NasError, match="no candidate measured within the budget 0.1 ms"):
        measured_candidates(pool, measure, 0.1, 2, progress=lambda line: None)


# ---- successive halving ------------------------------------------------------------------------------


def test_successive_halving_keeps_the_best_at_every_rung_and_trains_only_the_survivors():
    quality = {f"a{i}": q for i, q in enumerate([0.3, 0.9, 0.5, 0.7, 0.1, 0.8, 0.6, 0.2])}
    trained = {name: 0 for name in quality}

    def train_to(names, epochs):  # a known order: every curve rises towards its arch's quality, never crossing
        for name in names:
            trained[name] = max(trained[name], epochs)
        return {name: [quality[name] * (1 - 0.5 ** (e + 1)) for e in range(epochs)] for name in names}

    winner, history = successive_halving(list(quality), train_to, [1, 3, 9], 0.5, progress=lambda line: None)
    assert winner == "a1"
    assert (
        history[0]["kept"] == ["a1", "a5", "a3", "a6"]
        and history[1]["kept"] == ["a1", "a5"]
        and history[2]["kept"] == ["a1"]
    )
    assert sorted(trained.values()) == [1, 1, 1, 1, 3, 3, 9, 9]  # eliminated candidates are not trained further


def test_ties_go_to_the_faster_candidate():
    winner, _ = successive_halving(
        ["slow", "fast"],
        lambda names, e: {n: [0.5] * e for n in names},
        [1, 2],
        0.5,
        tie={"slow": 2.0, "fast": 1.0}.get,
        progress=lambda line: None,
    )
    assert winner == "fast"


def test_rungs_double_the_epochs_as_they_halve_the_candidates_and_end_with_the_whole_recipe():
    assert VerifyConfig(candidates=8, recipe=Recipe(epochs=12)).epochs() == [2, 3, 6, 12]
    assert VerifyConfig(candidates=4, recipe=Recipe(epochs=12)).epochs() == [3, 6, 12]
    assert VerifyConfig(candidates=3, recipe=Recipe(epochs=12)).epochs() == [3, 6, 12]
    assert VerifyConfig(candidates=1, recipe=Recipe(epochs=12)).epochs() == [12]
    assert VerifyConfig(candidates=8, recipe=Recipe(epochs=3)).epochs() == [1, 2, 3]  # no rung repeated
    assert VerifyConfig(recipe=Recipe(epochs=2), rungs=(1 / 3, 1.0)).epochs() == [1, 2]
    assert VerifyConfig(recipe=Recipe(epochs=1), rungs=(1 / 3, 0.5)).epochs() == [1]


# ---- standalone training, resumable ----------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    space = load_space("digits-tiny")
    dataset = load_dataset(None, space.image_size, space.in_chans)
    dataset.split = {**dataset.split, "train": dataset.split["train"][:320]}
    return space, dataset


def test_a_stopped_standalone_run_goes_on_exactly_as_an_uninterrupted_one(digits, tmp_path):
    space, dataset = digits
    arch = next(
        a for a in archs(20, 1) if any(layer.kernel == "angular" for layer in a.layers)
    )  # the auxiliary branch's schedule too
    recipe = Recipe(epochs=3, batch_size=32)
    whole = train_to(arch.to_json(indent=None), 0, recipe, 3, str(tmp_path / "whole.pt"), dataset=dataset)
    assert (
        len(train_to(arch.to_json(indent=None), 0, recipe, 1, str(tmp_path / "part.pt"), dataset=dataset)["curve"]) == 1
    )
    part = train_to(arch.to_json(indent=None), 0, recipe, 3, str(tmp_path / "part.pt"), dataset=dataset)
    assert part["curve"] == whole["curve"]
    a, b = read_state(tmp_path / "whole.pt"), read_state(tmp_path / "part.pt")
    assert a["step"] == b["step"] and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    (tmp_path / "cut.pt").write_bytes((tmp_path / "part.pt").read_bytes()[:100])  # a cut state file is trained again
    assert (
        train_to(arch.to_json(indent=None), 0, recipe, 3, str(tmp_path / "cut.pt"), dataset=dataset)["curve"]
        == whole["curve"]
    )


@pytest.mark.slow
def test_a_killed_verification_retrains_no_finished_rung(digits, tmp_path):
    space, dataset = digits
    named = {f"trial {i}": a for i, a in enumerate(archs(4, 2))}
    config = VerifyConfig(recipe=Recipe(epochs=3, batch_size=32), jobs=2, rungs=(1 / 3, 1.0))
    rungs = config.epochs()
    assert rungs == [1, 3]

    class Killed(Exception):
        pass

    first = Trainer(tmp_path, named, config, space.data, dataset, progress=lambda line: None)

    def killed_after_rung_one(names, epochs):
        if epochs > rungs[0]:
            raise Killed
        return first(names, epochs)

    with pytest.raises(Killed):
        successive_halving(list(named), killed_after_rung_one, rungs, 0.5, progress=lambda line: None)
    first.close()
    before = {name: read_state(state_path(tmp_path, arch, 0))["curve"] for name, arch in named.items()}
    assert all(len(curve) == 1 for curve in before.values())

    lines = []
    second = Trainer(tmp_path, named, config, space.data, dataset, progress=lines.append)
    winner, history = successive_halving(list(named), second, rungs, 0.5, progress=lambda line: None)
    second.close()
    assert len(lines) == 2 and all("3 epochs" in line for line in lines)  # only the two survivors train, rung 2 only
    assert history[0]["scores"] == {name: curve[0] for name, curve in before.items()}
    assert winner in history[0]["kept"] and len(history[0]["kept"]) == 2
    for name, arch in named.items():
        curve = read_state(state_path(tmp_path, arch, 0))["curve"]
        assert curve[:1] == before[name] and len(curve) == (3 if name in history[0]["kept"] else 1)


def test_standalone_training_steps_run_on_the_meta_device(digits):
    """The GPU path without a GPU: model, loss and optimizer step on the meta device."""
    from nas.standalone import Standalone

    space, dataset = digits
    run = Standalone(archs(1, 3)[0], 0, Recipe(epochs=1), dataset, device="meta")
    x, y = dataset.batch("train", torch.arange(8))
    loss = run.update(x, y)
    assert loss.device.type == "meta" and run.step == 1
    assert all(p.device.type == "meta" for p in run.model.parameters())


# ---- nas verify, end to end -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    run_dir = make_run(tmp_path_factory.mktemp("verify") / "run")
    space, _ = RunDir(run_dir).space_and_data()
    rng = random.Random(5)
    pool = {}
    while len(pool) < 5:
        arch = space.sample(rng)
        pool.setdefault(arch.digest, arch)
    a = list(pool.values())
    write_trials(
        run_dir,
        [
            (0, "COMPLETE", 0.50, 0.10, a[0]),
            (1, "COMPLETE", 0.70, 0.20, a[1]),
            (2, "COMPLETE", 0.90, 0.30, a[2]),
            (3, "COMPLETE", 0.60, 0.25, a[3]),
            (4, "FAIL", "", 0.10, a[4]),
        ],
    )
    return run_dir


@pytest.mark.slow
def test_nas_verify_trains_the_candidates_and_exports_the_verified_pick(searched, capsys):
    assert main(["verify", "--run", str(searched), "--budget-ms", "1000", "--candidates", "3", "--epochs", "12"]) == 0
    record = json.loads((searched / VERIFY_JSON).read_text())
    assert sorted(r["trial"] for r in record["candidates"]) == [0, 1, 2]  # the front; the failed trial is no candidate
    finalists = record["history"][-1]["scores"]
    assert str(record["pick"]["trial"]) == max(finalists, key=finalists.get)
    assert record["inherited_pick"]["trial"] == 2 and record["rungs"] == [3, 6, 12]
    trained = {str(r["trial"]): r["verified_epochs"] for r in record["candidates"]}
    assert sorted(trained.values()) == [3, 6, 12] and trained[str(record["pick"]["trial"])] == 12
    meta = json.loads((searched / "exports" / "best" / "metadata.json").read_text())
    assert meta["source"]["trial"] == record["pick"]["trial"] and meta["accuracy"]["exported_weights"] == "verified"
    assert meta["accuracy"]["verified"]["val"] == pytest.approx(record["pick"]["verified_accuracy"], abs=1e-6)
    assert meta["accuracy"]["inherited"]["val"] != meta["accuracy"]["verified"]["val"]
    model = nas.load(searched / "exports" / "best")  # the exported weights are the verified ones
    dataset = RunDir(searched).dataset(*RunDir(searched).space_and_data())
    assert dataset.top1(model.eval(), "val") == pytest.approx(record["pick"]["verified_accuracy"], abs=1e-6)
    import csv

    rows = {int(r["number"]): r for r in csv.DictReader((searched / "trials.csv").open())}
    assert {n for n, r in rows.items() if r["verified_accuracy"]} == {0, 1, 2}
    assert float(rows[record["pick"]["trial"]]["verified_accuracy"]) == pytest.approx(
        record["pick"]["verified_accuracy"]
    )
    assert len(load_candidates(searched)) == 4  # trials.csv is still a run's trials file

    capsys.readouterr()
    assert (
        main(["verify", "--run", str(searched), "--budget-ms", "1000", "--candidates", "3", "--epochs", "12"]) == 0
    )  # again: nothing retrained
    out = capsys.readouterr().out
    assert "chosen and measured before" in out and " epochs, val top-1 " not in out
    assert json.loads((searched / VERIFY_JSON).read_text())["pick"] == record["pick"]
    states = [state_path(searched / VERIFY, c.arch, 0).name for c in load_candidates(searched) if c.trial in (0, 1, 2)]
    assert sorted(p.name for p in (searched / VERIFY).iterdir()) == sorted(["candidates.json", "verify.json", *states])


def test_nas_verify_refuses_a_run_without_a_budget_and_a_budget_below_every_trial(searched, capsys):
    assert main(["verify", "--run", str(searched)]) == 2
    assert "records no budget" in capsys.readouterr().err
    assert main(["verify", "--run", str(searched), "--budget-ms", "0.01"]) == 2
    assert "no trial met the budget 0.01 ms" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_pick_sets_the_verified_pick_beside_the_best_ground_truth_arch_under_the_budget(
    searched, tmp_path, capsys
):
    from nas.bench import truth
    from nas.bench.pick import run as pick_run

    assert (
        main(["verify", "--run", str(searched), "--budget-ms", "1000", "--candidates", "3", "--epochs", "12"]) == 0
    )  # nothing retrained if done
    record = json.loads((searched / VERIFY_JSON).read_text())
    space, data = RunDir(searched).space_and_data()
    dataset = RunDir(searched).dataset(space, data)
    key = {
        "format": truth.FORMAT,
        "space": space.name,
        "data": data,
        "split": truth.split_digest(dataset.split),
        "recipe": record["recipe"],
    }
    path = tmp_path / "truth.jsonl"
    three = archs(3, 9)
    for arch, seed, final in [
        (three[0], 0, 0.61),
        (three[1], 0, 0.83),
        (three[1], 1, 0.79),
        (three[2], 0, 0.72),
        (three[2], 1, 0.76),
    ]:
        append_line(
            path, {**key, "digest": arch.digest, "arch": arch.to_dict(), "seed": seed, "curve": [final / 2, final]}
        )
    result = pick_run(searched, path, progress=lambda line: None)
    assert result["truth_archs"] == 3 and result["truth_archs_within_budget"] == 3
    assert (
        result["best_truth_within_budget"]["digest"] == three[1].digest
        and result["best_truth_within_budget"]["standalone_accuracy"] == 0.83
    )
    assert result["seed_sd"] == pytest.approx(
        (0.02828427 + 0.02828427) / 2, abs=1e-6
    )  # sd of (0.83, 0.79) and of (0.72, 0.76)
    assert result["verified_pick"]["standalone_accuracy"] == record["pick"]["verified_accuracy"]
    assert result["inherited_pick"]["trial"] == 2 and result["met"] == (
        record["pick"]["verified_accuracy"] >= 0.83 - result["seed_sd"]
    )
    other = tmp_path / "other.jsonl"
    append_line(
        other,
        {
            **key,
            "recipe": {**record["recipe"], "epochs": 3},
            "digest": three[0].digest,
            "arch": three[0].to_dict(),
            "seed": 0,
            "curve": [0.5],
        },
    )
    with pytest.raises(NasError, match="another recipe"):
        pick_run(searched, other, progress=lambda line: None)
