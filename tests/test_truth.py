"""Is the search's answer true? The embedded task, the fidelity statistics, the default budget."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nas import odd_one_out
from nas.bench.fidelity import FidelityConfig, bias_tables, stratified_archs, summarize
from nas.bench.ranking import rank_statistics
from nas.data import load_dataset
from nas.space_file import load_space

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
    from nas.budget import default_budget

    space = load_space("odd-one-out")

    class Table:  # predicted latency: a deterministic function of the arch, like a real table
        def predict(self, arch):
            return (
                sum(layer.heads * (2 if layer.kernel == "softmax" else 1) + layer.mlp_ratio for layer in arch.layers)
                * arch.embed_dim
                / 100
            )

    budget, line = default_budget(space, Table(), seed=0)
    assert "50% quantile" in line and "2000 random archs" in line
    rng = random.Random(12345)
    fresh = [Table().predict(space.sample(rng)) for _ in range(2000)]
    share = sum(x <= budget for x in fresh) / len(fresh)
    assert 0.45 <= share <= 0.55


# ---- the ground truth (nas bench truth) ----------------------------------------------------------


@pytest.mark.slow
def test_truth_archs_cover_every_kernel_alone_the_extremes_and_a_mixed_spread():
    from nas.bench.truth import truth_archs

    space = load_space("odd-one-out")
    archs = truth_archs(space, mixed=4, seed=0, pool=16)
    assert [a.digest for a in archs] == [a.digest for a in truth_archs(space, mixed=4, seed=0, pool=16)]
    assert len({a.digest for a in archs}) == len(archs) == 2 + len(space.kernel_choices()) + 4
    assert archs[0].digest == space.largest().digest and archs[1].digest == space.smallest().digest
    alone = {
        a.layers[0].kernel_spec.label
        for a in archs[2 : 2 + len(space.kernel_choices())]
        if len({layer.kernel_spec.label for layer in a.layers}) == 1
    }
    assert alone == {spec.label for spec in space.kernel_choices()}
    for arch in archs:
        space.validate(arch)


def test_truth_summary_on_known_rankings():
    from nas.bench.truth import summarize

    def record(digest, seed, curve):
        return {"digest": digest, "arch": {}, "seed": seed, "curve": curve}

    settled = [record(f"a{i}", 0, [0.1 * i, 0.1 * i, 0.2 * i, 0.2 * i]) for i in range(1, 6)]
    seeds = [record(f"a{i}", 1, [0.5, 0.5, 0.5, 0.2 * (6 - i)]) for i in range(1, 6)]
    summary = summarize(settled + seeds)
    assert summary["half_vs_full_tau"] == pytest.approx(1.0)  # epoch 2 of 4 ranks as epoch 4 does
    assert summary["seed_tau"] == pytest.approx(-1.0) and summary["seed_pairs"] == 5  # seed 1 reverses seed 0
    assert summary["archs"] == 5 and summary["runs"] == 10
    import statistics

    expected = statistics.fmean(statistics.stdev([0.2 * i, 0.2 * (6 - i)]) for i in range(1, 6))
    assert summary["seed_sd_points"] == pytest.approx(100 * expected)


def test_the_modelled_noise_ceiling_spans_every_arch_and_follows_the_seed_noise():
    """Two seeds per arch for a few archs; the ceiling over all archs is modelled from their deviations."""
    from nas.bench.truth import modelled_ceiling, summarize

    figures = [0.5 + 0.01 * i for i in range(30)]  # 30 archs, a point apart
    exact = modelled_ceiling(figures, [0.0, 0.0, 0.0], draws=200)
    assert exact["all_archs_seed_tau"] == exact["expected_vs_one_seed_tau"] == pytest.approx(1.0)  # no noise
    small, large = (
        modelled_ceiling(figures, [0.006, -0.004], draws=200),
        modelled_ceiling(figures, [0.2, -0.3, 0.1], draws=200),
    )
    assert 0.8 < small["all_archs_seed_tau"] < 1 and abs(large["all_archs_seed_tau"]) < 0.3  # noise vs the spread
    for c in (small, large):
        assert c["all_archs_seed_tau"] <= c["expected_vs_one_seed_tau"]  # knowing the expected figure beats a seed
        lo, hi = c["all_archs_seed_tau_90"]
        assert lo <= c["all_archs_seed_tau"] <= hi
    assert modelled_ceiling(figures, [0.2, -0.3, 0.1], draws=200) == large  # seeded

    def record(digest, seed, final):
        return {"digest": digest, "arch": {}, "seed": seed, "curve": [final / 2, final]}

    runs = [record(f"a{i}", 0, f) for i, f in enumerate(figures)]
    assert "all_archs_seed_tau" not in summarize(runs + [record("a0", 1, 0.52), record("a9", 1, 0.58)])  # 2 pairs
    pairs = [record(f"a{i}", 1, figures[i] + 0.002) for i in (0, 10, 20)]
    summary = summarize(runs + pairs)
    assert summary["seed_pairs"] == 3 and summary["archs"] == 30 and 0.8 < summary["all_archs_seed_tau"] <= 1


@pytest.fixture(scope="module")
def tiny_truth(tmp_path_factory):
    from nas.bench.truth import Recipe, TruthConfig, run

    space = load_space("digits-tiny")
    out = tmp_path_factory.mktemp("truth") / "truth.jsonl"
    config = TruthConfig(mixed=1, second_seeds=1, jobs=2, pool=8, recipe=Recipe(epochs=2))
    records = run(space, "digits", out, config, progress=lambda line: None)
    return space, out, config, records


@pytest.mark.slow
def test_a_stopped_truth_run_continues_and_retrains_only_its_cut_line(tiny_truth):
    from dataclasses import replace

    from nas.bench.truth import read, run

    space, out, config, records = tiny_truth
    assert len(records) == 2 + len(space.kernel_choices()) + 1 + 1  # every arch once, one arch twice
    assert all(len(r["curve"]) == 2 and 0 <= r["curve"][-1] <= 1 for r in records)
    lines = out.read_text().splitlines()
    resumed = out.with_name("resumed.jsonl")
    resumed.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])  # killed while appending
    said = []
    again = run(space, "digits", resumed, replace(config, jobs=1), progress=said.append)
    assert any("dropped 1 cut line" in line for line in said) and any("1 to train" in line for line in said)
    lost = json.loads(lines[-1])
    retrained = [r for r in again if (r["digest"], r["seed"]) == (lost["digest"], lost["seed"])]
    assert len(retrained) == 1 and retrained[0]["curve"] == lost["curve"]  # as an uninterrupted run trained it
    assert len(read(resumed)[0]) == len(records)
    said.clear()
    run(space, "digits", resumed, config, progress=said.append)
    assert any("0 to train" in line for line in said)  # nothing trains twice


@pytest.mark.slow  # the tiny truth fixture trains 12 archs in 2 processes (~25 s)
def test_a_truth_file_of_another_recipe_is_refused_before_training(tiny_truth):
    from dataclasses import replace

    from nas.bench.truth import run
    from nas.errors import NasError

    space, out, config, _ = tiny_truth
    with pytest.raises(NasError, match="another recipe"):
        run(space, "digits", out, replace(config, recipe=replace(config.recipe, epochs=3)), progress=lambda line: None)


@pytest.mark.slow  # the tiny truth fixture trains 12 archs in 2 processes (~25 s)
def test_a_truth_of_another_schedule_trains_the_archs_of_an_earlier_truth_file(tiny_truth, tmp_path):
    from dataclasses import replace

    from nas.bench.truth import archs_of, run
    from nas.errors import NasError

    space, out, config, records = tiny_truth
    archs = archs_of(out, space)
    assert [a.digest for a in archs] == [
        r["digest"] for r in sorted({r["index"]: r for r in records}.values(), key=lambda r: r["index"])
    ]
    # a file whose archs the current choice does not make (here: one record's arch replaced, as a change of the
    # space or of the MACs count would) is refused before any training, naming the flag that continues it
    stranger = next(
        a for a in (space.sample(random.Random(i)) for i in range(100)) if a.digest not in {b.digest for b in archs}
    )
    changed = tmp_path / "changed.jsonl"
    lines = out.read_text().splitlines()
    moved = json.loads(lines[-1])
    lines[-1] = json.dumps({**moved, "digest": stranger.digest, "arch": stranger.to_dict(), "seed": 0})
    changed.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        NasError, match=rf"holds runs of 1 arch\(s\) this truth does not choose .*--archs-from {changed}"
    ):
        run(space, "digits", changed, config, progress=lambda line: None)
    # one epoch instead of two on the first three of those archs: those archs, in that order, nothing else
    longer = tmp_path / "one-epoch.jsonl"
    again = run(
        space, "digits", longer, replace(config, recipe=replace(config.recipe, epochs=1)), lambda line: None, archs[:3]
    )
    assert list(dict.fromkeys(r["digest"] for r in again)) == [a.digest for a in archs[:3]]
    assert all(len(r["curve"]) == 1 for r in again)
    gap = tmp_path / "gap.jsonl"
    gap.write_text("".join(line + "\n" for line in out.read_text().splitlines() if json.loads(line)["index"] != 1))
    with pytest.raises(NasError, match="holds no run of arch #1"):
        archs_of(gap, space)


@pytest.mark.slow  # the tiny truth fixture trains 12 archs in 2 processes (~25 s)
def test_fidelity_scores_a_supernet_against_the_truth_without_training(tiny_truth, tmp_path):
    from runs import make_run

    from nas.bench.fidelity import FidelityConfig, score_against_truth
    from nas.errors import NasError

    space, out, _, records = tiny_truth
    run_dir = make_run(tmp_path / "run")
    rows, summary = score_against_truth(run_dir, out, FidelityConfig(bootstrap=100))
    digests = {r["digest"] for r in records}
    assert {r["digest"] for r in rows} == digests and all(0 <= r["inherited"] <= 1 for r in rows)
    twice = [r for r in rows if len(r["seeds"]) == 2]
    assert len(twice) == 1 and twice[0]["standalone"] == pytest.approx(sum(twice[0]["seeds"]) / 2)
    assert summary["archs"] == len(digests) and summary["truth"]["seed_pairs"] == 1
    other = tmp_path / "other.jsonl"
    other.write_text(
        "\n".join(json.dumps({**json.loads(line), "split": "0" * 16}) for line in out.read_text().splitlines()) + "\n"
    )
    with pytest.raises(NasError, match="split differs"):
        score_against_truth(run_dir, other, FidelityConfig(bootstrap=100))


@pytest.mark.slow  # the tiny truth fixture trains 12 archs in 2 processes (~25 s)
def test_recorded_inherited_accuracies_are_scored_again_against_another_truth_without_the_supernet(
    tiny_truth, tmp_path, capsys
):
    from runs import make_run

    from nas.cli import main

    _, out, _, records = tiny_truth
    run_dir = make_run(tmp_path / "run")
    fidelity = ["bench", "fidelity", "--truth"]
    assert main([*fidelity, str(out), "--run", str(run_dir), "--tag", "first", "--out", str(tmp_path)]) == 0
    scored = tmp_path / "fidelity_digits-tiny_first.json"
    first = json.loads(scored.read_text())
    # the same truth: the same rows and figures, without the run directory
    assert main([*fidelity, str(out), "--rescore", str(scored), "--tag", "again", "--out", str(tmp_path)]) == 0
    again = json.loads((tmp_path / "fidelity_digits-tiny_again.json").read_text())
    assert again["archs"] == first["archs"]
    assert again["summary"]["kendall_tau"] == pytest.approx(first["summary"]["kendall_tau"])
    # another truth of the same archs (here: every arch's final accuracy reversed in rank): its figures, the recorded
    # inherited accuracies
    longer = tmp_path / "longer.jsonl"
    longer.write_text("\n".join(json.dumps({**r, "curve": [*r["curve"], 1 - r["curve"][-1]]}) for r in records) + "\n")
    assert main([*fidelity, str(longer), "--rescore", str(scored), "--tag", "longer", "--out", str(tmp_path)]) == 0
    rescored = json.loads((tmp_path / "fidelity_digits-tiny_longer.json").read_text())
    by_digest = {r["digest"]: r for r in first["archs"]}
    for row in rescored["archs"]:
        assert row["inherited"] == by_digest[row["digest"]]["inherited"]
        assert row["standalone"] == pytest.approx(1 - by_digest[row["digest"]]["standalone"])
    assert rescored["summary"]["kendall_tau"] == pytest.approx(-first["summary"]["kendall_tau"])
    assert rescored["summary"]["inherited_from"] == str(scored)
    # a truth with an arch the recorded scoring lacks, and the flags that do not go together: one line each, exit 2
    stranger = json.loads(out.read_text().splitlines()[0])
    extra = tmp_path / "extra.jsonl"
    extra.write_text(out.read_text() + json.dumps({**stranger, "digest": "f" * 16}) + "\n")
    split = tmp_path / "split.jsonl"
    split.write_text("".join(json.dumps({**r, "split": "0" * 16}) + "\n" for r in records))
    capsys.readouterr()
    for args, said in [
        ([*fidelity, str(extra), "--rescore", str(scored)], r"lacks 1 of the archs of --truth .* \(e\.g\. f{16}\)"),
        ([*fidelity, str(split), "--rescore", str(scored)], "another split than .*; the accuracies are not comparable"),
        (["bench", "fidelity", "--rescore", str(scored)], "--rescore: also pass --truth"),
        ([*fidelity, str(out), "--rescore", str(scored), "--run", str(run_dir)], "--rescore and --run: pass one"),
        ([*fidelity, str(out)], "--run: required"),
    ]:
        assert main([*args, "--out", str(tmp_path / "refused")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(said, err[0]), err
    assert not (tmp_path / "refused").exists()


@pytest.mark.slow  # the tiny truth fixture trains 12 archs in 2 processes (~25 s)
def test_truth_summary_only_reads_the_file(tiny_truth, capsys):
    from nas.cli import main

    space, out, _, records = tiny_truth
    before = out.read_bytes()
    assert main(["bench", "truth", "--space", "digits-tiny", "--summary", "--out", str(out)]) == 0
    assert f"{len(records)} runs" in capsys.readouterr().out and out.read_bytes() == before
    path = out.with_name(out.stem + "_summary.json")
    written = json.loads(path.read_text())
    assert written["summary"]["runs"] == len(records) and written["summarised_by"]["machine"]["name"]
    assert written["command"] is None  # no training command recorded one: not made up
    trained = {
        "command": "nas bench truth --space digits-tiny",
        "machine": {"name": "the trainer"},
        "config": {"seed": 0},
    }
    path.write_text(json.dumps({**written, **trained}))
    assert main(["bench", "truth", "--space", "digits-tiny", "--summary", "--out", str(out)]) == 0
    again = json.loads(path.read_text())
    assert {key: again[key] for key in trained} == trained  # where the runs trained is kept, beside who summarised
    assert again["summarised_by"]["machine"]["name"] != "the trainer"


def _children_of(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "zombie" in status.read_text())


@pytest.mark.slow  # the tiny truth fixture, then `nas bench truth` with two workers (~10 s of imports)
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads a process's children from /proc (Linux)")
def test_sigterm_stops_bench_truth_and_its_workers_while_they_train(tiny_truth, tmp_path):
    """Long runs in both workers and more queued: the command ends with 143 within seconds, keeps nothing half-done."""
    out = tmp_path / "truth.jsonl"
    command = [sys.executable, "-m", "nas", "bench", "truth", "--space", "digits-tiny", "--epochs", "200"]
    proc = subprocess.Popen(
        [*command, "--jobs", "2", "--archs-from", str(tiny_truth[1]), "--out", str(out)],  # no choice of archs to make
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    workers: list[int] = []
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "to train in 2 process(es)" in line:
                break
        deadline = time.monotonic() + 60
        while len(_children_of(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = _children_of(proc.pid)
        assert len(workers) >= 2, "".join(lines)
        time.sleep(3)  # the workers load the data and start training
        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=60)[0]
    finally:
        proc.kill()
        for pid in workers:  # a failure leaves no worker training for minutes
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 143, rest
    assert time.monotonic() - stopped < 30
    assert "stopped by SIGTERM" in rest and "run the same command again" in rest
    deadline = time.monotonic() + 10
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(w) for w in workers)
    assert not out.exists() or out.read_text() == ""  # no run finished, none written half
